//! CPU kernels of this family.

use super::PatchGridBackend;
use crate::backend::cpu::CpuBackend;

impl PatchGridBackend for CpuBackend {}
