//! Activations: relu, leaky relu, prelu, sigmoid, tanh, hardswish, hardsigmoid.

mod cpu_kernel;

/// Kernels of this family.
pub trait ActivationBackend {}
