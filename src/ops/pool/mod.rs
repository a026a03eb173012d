//! Pooling: max with indices, max-unpool, average, adaptive average.

mod cpu_kernel;

/// Kernels of this family.
pub trait PoolBackend {}
