//! Backends: where tensor elements live and the kernels that compute on them.
//!
//! Each op family in [`crate::ops`] declares a trait with its forward *and* gradient kernels
//! (e.g. [`crate::ops::conv::ConvBackend`] names `conv2d_input_backward` and
//! `conv2d_weight_backward`), so every backend can make each of them fast. [`Backend`] is the sum
//! of those traits; the CPU reference implements them in `ops/<family>/cpu_kernel.rs`, the CUDA
//! backend ([`cuda::CudaBackend`]) in `ops/<family>/cuda_kernel.rs`.

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
    /// CUDA device `N` (`cuda:N`); opened on first use, see [`cuda::CudaBackend`].
    Cuda(usize),
    /// The emulated CUDA device `N` (`cuda-emu:N`): the CUDA kernels run on the CPU, with
    /// checks a GPU does not make ([`cuda::emu`]).
    CudaEmu(usize),
}

impl Device {
    /// The backend that computes on this device.
    pub fn backend(&self) -> &(dyn Backend + 'static) {
        match self {
            Device::Cpu => &CpuBackend,
            Device::Cuda(ordinal) => cuda::backend_for(cuda::CudaDevice::gpu(*ordinal)),
            Device::CudaEmu(ordinal) => cuda::backend_for(cuda::CudaDevice::emulated(*ordinal)),
        }
    }

    /// The CUDA device (GPU or emulated), `None` for the CPU.
    pub fn cuda(&self) -> Option<cuda::CudaDevice> {
        match self {
            Device::Cpu => None,
            Device::Cuda(ordinal) => Some(cuda::CudaDevice::gpu(*ordinal)),
            Device::CudaEmu(ordinal) => Some(cuda::CudaDevice::emulated(*ordinal)),
        }
    }

    /// The device of a CUDA buffer.
    pub fn from_cuda(device: cuda::CudaDevice) -> Device {
        match device.emulated {
            false => Device::Cuda(device.ordinal),
            true => Device::CudaEmu(device.ordinal),
        }
    }

    /// The device a [`cuda::Selected`] names.
    pub fn from_selected(selected: &cuda::Selected) -> Device {
        match selected {
            cuda::Selected::Cpu { .. } => Device::Cpu,
            cuda::Selected::Cuda { ordinal } => Device::Cuda(*ordinal),
            cuda::Selected::Emulated { ordinal } => Device::CudaEmu(*ordinal),
        }
    }

    /// Resolves a `--device` string (`auto`, `cpu`, `cuda`, `cuda:N`, `cuda-emu`, `cuda-emu:N`)
    /// without panicking:
    /// the device, plus the one-line reason when `auto` fell back to the CPU.
    pub fn select(request: &str) -> Result<(Device, Option<String>)> {
        let request: cuda::DeviceRequest = request.parse().map_err(crate::Error::cuda)?;
        let selected = cuda::select(request).map_err(crate::Error::cuda)?;
        let reason = match &selected {
            cuda::Selected::Cpu { reason } => reason.clone(),
            cuda::Selected::Cuda { .. } | cuda::Selected::Emulated { .. } => None,
        };
        Ok((Device::from_selected(&selected), reason))
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
            Device::CudaEmu(ordinal) => write!(f, "cuda-emu:{ordinal}"),
        }
    }
}
