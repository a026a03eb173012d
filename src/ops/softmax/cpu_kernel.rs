//! CPU kernels of this family.

use super::SoftmaxBackend;
use crate::backend::cpu::CpuBackend;

impl SoftmaxBackend for CpuBackend {}
