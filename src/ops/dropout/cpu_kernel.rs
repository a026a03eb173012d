//! CPU kernels of this family.

use super::DropoutBackend;
use crate::backend::cpu::CpuBackend;

impl DropoutBackend for CpuBackend {}
