//! CPU kernels of this family.

use super::PoolBackend;
use crate::backend::cpu::CpuBackend;

impl PoolBackend for CpuBackend {}
