//! Batch normalisation (train: batch statistics and running-stat update; eval: running stats).

mod cpu_kernel;

/// Kernels of this family.
pub trait NormBackend {}
