//! moeseg: a tensor engine with reverse-mode autograd, a CPU reference backend and (next) a
//! CUDA backend, built to train and study sparse Mixture-of-Experts layers in CNN semantic
//! segmentation.
//!
//! - [`tensor`]: the [`Tensor`] type, shapes, storage, dtypes for weight I/O, seeded RNG.
//! - [`autograd`]: the dynamic graph and `backward`.
//! - [`backend`]: the [`backend::Backend`] trait and the CPU backend.
//! - [`verify`]: every CUDA kernel against the CPU backend (the harness of `moeseg verify`).
//! - [`ops`]: every op, one folder per family (forward, backward, kernels).
//! - [`io`]: safetensors reading and atomic writing.
//! - [`nn`], [`moe`], [`models`]: layers, PatchConvMoE, the six segmentation networks.
//! - [`data`], [`train`], [`cli`]: datasets, training and evaluation, the `moeseg` binary.

pub mod autograd;
pub mod backend;
pub mod cli;
pub mod data;
pub mod ensemble;
pub mod error;
pub mod io;
pub mod models;
pub mod moe;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod tensor;
pub mod testing;
pub mod train;
pub mod verify;

pub use autograd::{no_grad, NoGradGuard};
pub use backend::Device;
pub use error::{Error, Result};
pub use tensor::{DType, Rng, Shape, Tensor};
