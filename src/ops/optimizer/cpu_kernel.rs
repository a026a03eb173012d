//! CPU kernels of this family.

use super::OptimizerBackend;
use crate::backend::cpu::CpuBackend;

impl OptimizerBackend for CpuBackend {}
