//! CPU kernels of this family.

use super::ConvBackend;
use crate::backend::cpu::CpuBackend;

impl ConvBackend for CpuBackend {}
