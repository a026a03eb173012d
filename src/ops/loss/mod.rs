//! Losses: cross-entropy over [B,C,H,W] logits with ignore index and class weights.

mod cpu_kernel;

/// Kernels of this family.
pub trait LossBackend {}
