//! CPU kernels of this family.

use super::IndexBackend;
use crate::backend::cpu::CpuBackend;

impl IndexBackend for CpuBackend {}
