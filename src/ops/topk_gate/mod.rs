//! Fused top-k gating: softmax, top-k selection (ties to the lower index), optional capacity re-assignment, renormalised routing weights and per-expert counts; and its backward.

mod cpu_kernel;

/// Kernels of this family.
pub trait TopkGateBackend {}
