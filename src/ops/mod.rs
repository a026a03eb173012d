//! Every op of the engine, one folder per family: `mod.rs` holds the user-facing `Tensor`
//! methods, the family's backend trait (forward and gradient kernels) and the backward
//! closures; `cpu_kernel.rs` the CPU reference kernels.

pub mod activation;
pub mod conv;
pub mod dropout;
pub mod elementwise;
pub mod index;
pub mod interpolate;
pub mod loss;
pub mod macs;
pub mod matmul;
pub mod norm;
pub mod optimizer;
pub mod patch_grid;
pub mod pool;
pub mod reduce;
pub mod routed_conv;
pub mod shape;
pub mod softmax;
pub mod topk_gate;
