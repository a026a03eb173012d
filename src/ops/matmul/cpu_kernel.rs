//! CPU kernels of this family.

use super::MatmulBackend;
use crate::backend::cpu::CpuBackend;

impl MatmulBackend for CpuBackend {}
