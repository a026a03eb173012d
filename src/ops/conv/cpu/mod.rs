//! The CPU side of the conv family: the [`ConvBackend`](super::ConvBackend) methods of the CPU
//! backend ([`backend`]) and the kernels they choose between:
//!
//! - [`direct`]: direct stride-1 convolutions (forward, input and weight gradients) with
//!   hand-written AVX-512F register tiles;
//! - [`depthwise`]: depthwise convolutions;
//! - [`gemm_paths`]: 1×1 convolutions as one GEMM, the rest as im2col ([`im2col`]) + GEMM.

mod backend;
pub(crate) mod depthwise;
pub(crate) mod direct;
pub(crate) mod gemm_paths;
pub(crate) mod im2col;
