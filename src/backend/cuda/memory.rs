//! Device memory: [`CudaBuffer`], an `Arc`'d f32 allocation that goes back to its device's
//! [`CachingAllocator`] when the last tensor using it is gone.
//!
//! The allocator is a size-class free list (like PyTorch's caching allocator, much simpler):
//! a request of `len` floats is rounded up to its class (a power of two up to 1 Mi floats, then
//! a multiple of 1 Mi floats) and served from that class's free list when it has a buffer, else
//! by the driver. Everything runs on the device's one stream, so a buffer freed on the host
//! and handed to the next kernel is reused in stream order: no event, no synchronisation.
//! The emulated device uses the same allocator over host mappings ([`DeviceSlice::Emulated`]).

use super::device::CudaDevice;
use super::emu::HostAllocation;
use cudarc::driver::CudaSlice;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Floats per class step above the power-of-two range (1 Mi floats = 4 MiB).
const LARGE_STEP: usize = 1 << 20;

/// The capacity (in floats) that a request of `len` floats is rounded up to.
pub fn size_class(len: usize) -> usize {
    let len = len.max(1);
    if len <= LARGE_STEP {
        len.next_power_of_two().max(64)
    } else {
        len.div_ceil(LARGE_STEP) * LARGE_STEP
    }
}

/// One device allocation of a size class: GPU memory, or an emulated device's host mapping.
pub enum DeviceSlice {
    Driver(CudaSlice<f32>),
    Emulated(HostAllocation),
}

impl DeviceSlice {
    /// Capacity in floats.
    pub fn capacity(&self) -> usize {
        match self {
            DeviceSlice::Driver(slice) => slice.len(),
            DeviceSlice::Emulated(allocation) => allocation.capacity(),
        }
    }
}

/// A size-class free list of device buffers of one device.
#[derive(Default)]
pub struct CachingAllocator {
    free: Mutex<HashMap<usize, Vec<DeviceSlice>>>,
}

impl CachingAllocator {
    /// A cached buffer of capacity `size_class(len)`, if one is free.
    pub fn take(&self, len: usize) -> Option<DeviceSlice> {
        let mut free = crate::autograd::lock(&self.free);
        free.get_mut(&size_class(len)).and_then(Vec::pop)
    }

    /// Puts a buffer back on its class's free list.
    pub fn give_back(&self, slice: DeviceSlice) {
        let class = slice.capacity();
        crate::autograd::lock(&self.free)
            .entry(class)
            .or_default()
            .push(slice);
    }

    /// Frees every cached buffer to the driver (used when an allocation runs out of memory).
    pub fn release_all(&self) {
        crate::autograd::lock(&self.free).clear();
    }

    /// Bytes held in free lists.
    pub fn cached_bytes(&self) -> usize {
        crate::autograd::lock(&self.free)
            .iter()
            .map(|(class, list)| class * list.len() * std::mem::size_of::<f32>())
            .sum()
    }
}

/// The allocation behind a [`CudaBuffer`]; returns its slice to the allocator on drop.
struct Allocation {
    /// `Some` until drop hands it back.
    slice: Option<DeviceSlice>,
    /// Elements in use (the slice's capacity is the size class).
    len: usize,
    device: CudaDevice,
    allocator: &'static CachingAllocator,
}

impl Drop for Allocation {
    fn drop(&mut self) {
        if let Some(slice) = self.slice.take() {
            self.allocator.give_back(slice);
        }
    }
}

/// `len` f32 elements on a CUDA device; cheap to clone (the allocation is shared).
#[derive(Clone)]
pub struct CudaBuffer(Arc<Allocation>);

impl CudaBuffer {
    /// Wraps a slice of capacity ≥ `len` obtained from `allocator`.
    pub(crate) fn new(
        slice: DeviceSlice,
        len: usize,
        device: CudaDevice,
        allocator: &'static CachingAllocator,
    ) -> Self {
        CudaBuffer(Arc::new(Allocation {
            slice: Some(slice),
            len,
            device,
            allocator,
        }))
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.0.len
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// The CUDA device it lives on.
    pub fn device(&self) -> CudaDevice {
        self.0.device
    }

    /// The slice (capacity ≥ `len`), `None` only during drop.
    pub(crate) fn slice(&self) -> Option<&DeviceSlice> {
        self.0.slice.as_ref()
    }

    /// True when both buffers are the same allocation.
    pub fn ptr_eq(&self, other: &CudaBuffer) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for CudaBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CudaBuffer({}, {} f32)", self.0.device, self.0.len)
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_round_up() {
        assert_eq!(size_class(0), 64);
        assert_eq!(size_class(65), 128);
        assert_eq!(size_class(1 << 20), 1 << 20);
        assert_eq!(size_class((1 << 20) + 1), 2 << 20);
        assert_eq!(size_class((5 << 20) + 7), 6 << 20);
    }
}
