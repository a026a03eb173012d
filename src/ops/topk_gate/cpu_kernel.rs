//! CPU kernels of this family.

use super::TopkGateBackend;
use crate::backend::cpu::CpuBackend;

impl TopkGateBackend for CpuBackend {}
