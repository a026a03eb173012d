//! CPU kernels of this family.

use super::InterpolateBackend;
use crate::backend::cpu::CpuBackend;

impl InterpolateBackend for CpuBackend {}
