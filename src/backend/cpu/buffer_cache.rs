//! A caching allocator for CPU tensor buffers.
//!
//! Large buffers freed by dropped tensors are kept, keyed by length, and handed to the next
//! kernel that asks for the same length. Training repeats the same shapes every step, so most
//! outputs reuse memory that is already mapped: without this, every large output pays the
//! operating system's first-touch page faults, which cost more than a 1×1 convolution itself.
//!
//! Buffers under [`MIN_POOLED_LEN`] elements go straight to the system allocator. The cache is
//! capped (default 1 GiB, `MOESEG_CPU_POOL_MB` to change, 0 to disable); past the cap freed
//! buffers are released.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Smallest buffer (in f32 elements, 256 KiB) worth caching.
pub const MIN_POOLED_LEN: usize = 1 << 16;

struct Pool {
    free: HashMap<usize, Vec<Vec<f32>>>,
    cached_bytes: usize,
    capacity_bytes: usize,
}

fn pool() -> &'static Mutex<Pool> {
    static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let megabytes = std::env::var("MOESEG_CPU_POOL_MB")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(1024);
        Mutex::new(Pool {
            free: HashMap::new(),
            cached_bytes: 0,
            capacity_bytes: megabytes << 20,
        })
    })
}

fn with_pool<R>(f: impl FnOnce(&mut Pool) -> R) -> R {
    f(&mut crate::autograd::lock(pool()))
}

fn reuse(len: usize) -> Option<Vec<f32>> {
    if len < MIN_POOLED_LEN {
        return None;
    }
    with_pool(|p| {
        let buffer = p.free.get_mut(&len)?.pop()?;
        p.cached_bytes -= len * 4;
        Some(buffer)
    })
}

/// A buffer of `len` elements whose contents are unspecified (stale values of an earlier
/// tensor, or zeros): for kernels that write every element.
pub fn uninit(len: usize) -> Vec<f32> {
    reuse(len).unwrap_or_else(|| vec![0.0; len])
}

/// A buffer of `len` zeros.
pub fn zeroed(len: usize) -> Vec<f32> {
    match reuse(len) {
        Some(mut buffer) => {
            buffer.fill(0.0);
            buffer
        }
        None => vec![0.0; len],
    }
}

/// Takes back a buffer whose tensor is gone (called by the storage's `Drop`).
pub fn recycle(buffer: Vec<f32>) {
    let len = buffer.len();
    if len < MIN_POOLED_LEN || buffer.capacity() != len {
        return;
    }
    with_pool(|p| {
        if p.cached_bytes + len * 4 <= p.capacity_bytes {
            p.cached_bytes += len * 4;
            p.free.entry(len).or_default().push(buffer);
        }
    });
}

/// Bytes currently cached (for diagnostics).
pub fn cached_bytes() -> usize {
    with_pool(|p| p.cached_bytes)
}

/// Releases every cached buffer to the system.
pub fn release_all() {
    with_pool(|p| {
        p.free.clear();
        p.cached_bytes = 0;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_buffers_are_reused_and_zeroed_on_request() {
        let len = MIN_POOLED_LEN + 12345;
        let mut a = uninit(len);
        a.fill(7.0);
        let ptr = a.as_ptr();
        recycle(a);
        let b = zeroed(len);
        assert_eq!(b.as_ptr(), ptr, "the freed buffer is handed out again");
        assert!(b.iter().all(|&v| v == 0.0));
        // Small buffers are not cached.
        recycle(vec![1.0; 10]);
        assert_eq!(zeroed(10), vec![0.0; 10]);
    }
}
