//! Backends: where tensor elements live and the kernels that compute on them.
//!
//! Each op family in [`crate::ops`] declares a trait with its forward *and* gradient kernels
//! (e.g. [`crate::ops::conv::ConvBackend`] names `conv2d_input_backward` and
//! `conv2d_weight_backward`), so every backend can make each of them fast. [`Backend`] is the sum
//! of those traits; the CPU reference implements them in `ops/<family>/cpu_kernel.rs`, the CUDA
//! backend will in `ops/<family>/cuda_kernel.rs`.

pub mod cpu;
pub mod cuda;

use crate::error::Result;
use crate::ops::{
    activation::ActivationBackend, conv::ConvBackend, dropout::DropoutBackend,
    elementwise::ElementwiseBackend, index::IndexBackend, interpolate::InterpolateBackend,
    loss::LossBackend, matmul::MatmulBackend, norm::NormBackend, optimizer::OptimizerBackend,
    patch_grid::PatchGridBackend, pool::PoolBackend, reduce::ReduceBackend,
    routed_conv::RoutedConvBackend, shape::ShapeBackend, softmax::SoftmaxBackend,
    topk_gate::TopkGateBackend,
};
use crate::tensor::Storage;
use std::fmt;

pub use cpu::CpuBackend;

/// A compute backend: storage management plus every op family's kernels.
pub trait Backend:
    ElementwiseBackend
    + ReduceBackend
    + ActivationBackend
    + SoftmaxBackend
    + LossBackend
    + NormBackend
    + OptimizerBackend
    + DropoutBackend
    + MatmulBackend
    + ConvBackend
    + PoolBackend
    + InterpolateBackend
    + ShapeBackend
    + IndexBackend
    + PatchGridBackend
    + TopkGateBackend
    + RoutedConvBackend
    + Send
    + Sync
{
    /// Moves host data onto this backend's device.
    fn upload(&self, data: Vec<f32>) -> Result<Storage>;

    /// `len` elements all equal to `value`.
    fn full(&self, len: usize, value: f32) -> Result<Storage>;
}

/// Where a tensor lives. PyTorch's `torch.device`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Device {
    /// The CPU reference backend (rayon-parallel).
    #[default]
    Cpu,
}

impl Device {
    /// The backend that computes on this device.
    pub fn backend(&self) -> &(dyn Backend + 'static) {
        match self {
            Device::Cpu => &CpuBackend,
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
        }
    }
}
