//! Layout ops: permute, transpose, concat, narrow/split, pad.

mod cpu_kernel;

/// Kernels of this family.
pub trait ShapeBackend {}
