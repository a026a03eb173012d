//! CPU kernels of this family.

use super::NormBackend;
use crate::backend::cpu::CpuBackend;

impl NormBackend for CpuBackend {}
