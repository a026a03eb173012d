//! CPU kernels of this family.

use super::ShapeBackend;
use crate::backend::cpu::CpuBackend;

impl ShapeBackend for CpuBackend {}
