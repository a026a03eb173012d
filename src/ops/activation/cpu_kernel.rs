//! CPU kernels of this family.

use super::ActivationBackend;
use crate::backend::cpu::CpuBackend;

impl ActivationBackend for CpuBackend {}
