//! Device storage behind a tensor: one small enum, cheap to clone (the buffer is shared).

use crate::backend::Device;
use crate::error::{Error, Result};
use std::sync::Arc;

/// The elements of a tensor, on the device that owns them. Always f32 and contiguous; integer
/// tensors (labels, indices) hold exact integers, which f32 represents up to 2^24.
#[derive(Clone)]
pub enum Storage {
    /// Host memory.
    Cpu(Arc<Vec<f32>>),
}

impl Storage {
    /// Wraps a host vector.
    pub fn cpu(data: Vec<f32>) -> Self {
        Storage::Cpu(Arc::new(data))
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(data) => data.len(),
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
        }
    }

    /// The host slice, or an error naming `op` if the storage is not on the CPU.
    pub fn as_cpu(&self, op: &'static str) -> Result<&[f32]> {
        match self {
            Storage::Cpu(data) => Ok(data.as_slice()),
            #[allow(unreachable_patterns)]
            _ => Err(Error::Unsupported(format!(
                "{op}: expected a CPU tensor, got one on {}",
                self.device()
            ))),
        }
    }

    /// Copies the elements to a host vector (a device-to-host copy for GPU storage).
    pub fn to_vec(&self) -> Vec<f32> {
        match self {
            Storage::Cpu(data) => data.as_ref().clone(),
        }
    }
}
