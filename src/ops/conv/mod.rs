//! Convolution: conv2d and conv_transpose2d, forward and both gradients.

mod cpu_kernel;

/// Kernels of this family.
pub trait ConvBackend {}
