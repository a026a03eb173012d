//! Device storage behind a tensor: one small enum, cheap to clone (the buffer is shared).

use crate::backend::cpu::buffer_cache;
use crate::backend::cuda::{backend_for, CudaBuffer};
use crate::backend::Device;
use crate::error::{Error, Result};
use std::sync::Arc;

/// The elements of a tensor, on the device that owns them. Always f32 and contiguous; integer
/// tensors (labels, indices) hold exact integers, which f32 represents up to 2^24.
#[derive(Clone)]
pub enum Storage {
    /// Host memory.
    Cpu(Arc<CpuBuffer>),
    /// Memory of CUDA device `buffer.device()`, a GPU or the emulated device (shared; back to
    /// the caching allocator on drop).
    Cuda(CudaBuffer),
}

/// A host buffer that goes back to the CPU backend's buffer pool when its last tensor is gone.
pub struct CpuBuffer(Vec<f32>);

impl std::ops::Deref for CpuBuffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl Drop for CpuBuffer {
    fn drop(&mut self) {
        buffer_cache::recycle(std::mem::take(&mut self.0));
    }
}

impl Storage {
    /// Wraps a host vector.
    pub fn cpu(data: Vec<f32>) -> Self {
        Storage::Cpu(Arc::new(CpuBuffer(data)))
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(data) => data.len(),
            Storage::Cuda(buffer) => buffer.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device the elements live on.
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(buffer) => Device::from_cuda(buffer.device()),
        }
    }

    /// The host slice, or an error naming `op` if the storage is not on the CPU.
    pub fn as_cpu(&self, op: &'static str) -> Result<&[f32]> {
        match self {
            Storage::Cpu(data) => Ok(data),
            Storage::Cuda(_) => Err(Error::Unsupported(format!(
                "{op}: expected a CPU tensor, got one on {}",
                self.device()
            ))),
        }
    }

    /// Copies the elements to a host vector (a device-to-host copy for GPU storage); a failed
    /// copy is an error, never made-up data.
    pub fn try_to_vec(&self) -> Result<Vec<f32>> {
        match self {
            Storage::Cpu(data) => Ok(data.to_vec()),
            Storage::Cuda(buffer) => backend_for(buffer.device()).download(buffer),
        }
    }
}
