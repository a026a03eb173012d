//! CPU kernels of this family.

use super::RoutedConvBackend;
use crate::backend::cpu::CpuBackend;

impl RoutedConvBackend for CpuBackend {}
