//! Matrix products: matmul (batched) and linear.

mod cpu_kernel;

/// Kernels of this family.
pub trait MatmulBackend {}
