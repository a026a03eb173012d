//! Patch-grid split and reassemble (PatchConvMoE tokens with halo), forward and backward.

mod cpu_kernel;

/// Kernels of this family.
pub trait PatchGridBackend {}
