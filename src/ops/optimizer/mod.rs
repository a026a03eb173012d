//! Fused optimizer updates (SGD with momentum / nesterov / weight decay, Adam / AdamW), one
//! kernel call per parameter.

mod cpu_kernel;

/// Kernels of this family.
pub trait OptimizerBackend {}
