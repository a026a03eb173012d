//! Dropout and dropout2d (training only).

mod cpu_kernel;

/// Kernels of this family.
pub trait DropoutBackend {}
