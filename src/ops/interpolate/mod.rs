//! Resizing: bilinear (both align_corners modes) and nearest.

mod cpu_kernel;

/// Kernels of this family.
pub trait InterpolateBackend {}
