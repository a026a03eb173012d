//! CPU kernels of this family.

use super::LossBackend;
use crate::backend::cpu::CpuBackend;

impl LossBackend for CpuBackend {}
