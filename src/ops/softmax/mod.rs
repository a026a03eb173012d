//! Softmax and log-softmax over an axis.

mod cpu_kernel;

/// Kernels of this family.
pub trait SoftmaxBackend {}
