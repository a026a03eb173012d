//! The CPU reference backend: plain slices, rayon for parallelism, [`gemm`] (per kernel path)
//! for the matrix products. Each op family implements its trait for [`CpuBackend`] in
//! `ops/<family>/cpu_kernel.rs`; this module holds what they share.

pub mod buffer_cache;
pub mod gemm;
mod kernel_path;

use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::Storage;
use rayon::prelude::*;

/// The CPU backend. Stateless: the thread pool is rayon's global one.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn upload(&self, data: Vec<f32>) -> Result<Storage> {
        Ok(Storage::cpu(data))
    }

    fn full(&self, len: usize, value: f32) -> Result<Storage> {
        let mut data = buffer_cache::uninit(len);
        data.fill(value);
        Ok(Storage::cpu(data))
    }
}

pub use kernel_path::{
    global_path, kernel_path, required_paths, simd_paths_to_test, with_kernel_path, KernelPath,
};

/// The family the GEMM kernel follows: process-wide (not per thread), since GEMMs run inside
/// other ops' parallel loops where a thread's forced family does not reach.
pub(crate) fn gemm_path() -> KernelPath {
    global_path()
}

/// Whether the calling thread runs the plain reference forms ([`KernelPath::Portable`]):
/// im2col + GEMM convolutions and the slot-output form of the routed convolution instead of
/// weight mixing.
pub fn portable_forced() -> bool {
    kernel_path() == KernelPath::Portable
}

/// Runs `f` with the portable kernels forced on this thread (see [`with_kernel_path`]).
pub fn with_portable_kernels<R>(f: impl FnOnce() -> R) -> R {
    with_kernel_path(KernelPath::Portable, f)
}

/// A short description of the CPU kernels in use, for benchmark headers.
pub fn kernels_description() -> String {
    let gemm = match gemm_path() {
        KernelPath::Avx2 => "gemm-crate AVX2+FMA GEMM",
        KernelPath::Avx512 => "matrixmultiply AVX-512F GEMM",
        KernelPath::Portable => "matrixmultiply GEMM",
    };
    match kernel_path() {
        KernelPath::Portable => {
            format!("portable: im2col + {gemm} convs, routed conv by slot outputs")
        }
        KernelPath::Avx2 => format!(
            "avx2: im2col + {gemm} convs, 8-lane depthwise convs, routed conv by weight mixing"
        ),
        KernelPath::Avx512 => format!(
            "avx512: 16-lane direct stride-1/depthwise convs, {gemm}, routed conv by weight mixing"
        ),
    }
}

/// Elements per rayon task in the elementwise helpers: large enough that scheduling is noise.
pub const PAR_CHUNK: usize = 1 << 14;

/// `out[i] = f(x[i])`, in parallel chunks.
pub fn map_unary(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = buffer_cache::uninit(x.len());
    out.par_chunks_mut(PAR_CHUNK)
        .zip(x.par_chunks(PAR_CHUNK))
        .for_each(|(o, x)| {
            for (o, &x) in o.iter_mut().zip(x) {
                *o = f(x);
            }
        });
    out
}

/// `out[i] = f(a[i], b[i])` for equally long slices, in parallel chunks.
pub fn map_binary(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    debug_assert_eq!(a.len(), b.len());
    let mut out = buffer_cache::uninit(a.len());
    out.par_chunks_mut(PAR_CHUNK)
        .zip(a.par_chunks(PAR_CHUNK).zip(b.par_chunks(PAR_CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = f(a, b);
            }
        });
    out
}

/// `out[i] = f(a[i], b[i], c[i])` for equally long slices, in parallel chunks.
pub fn map_ternary(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    f: impl Fn(f32, f32, f32) -> f32 + Sync,
) -> Vec<f32> {
    debug_assert!(a.len() == b.len() && b.len() == c.len());
    let mut out = buffer_cache::uninit(a.len());
    out.par_chunks_mut(PAR_CHUNK)
        .zip(a.par_chunks(PAR_CHUNK))
        .zip(b.par_chunks(PAR_CHUNK).zip(c.par_chunks(PAR_CHUNK)))
        .for_each(|((o, a), (b, c))| {
            for (((o, &a), &b), &c) in o.iter_mut().zip(a).zip(b).zip(c) {
                *o = f(a, b, c);
            }
        });
    out
}

/// A raw output pointer handed to rayon tasks that each write a disjoint set of elements
/// (strided blocks that `par_chunks_mut` cannot express).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: users guarantee that no two tasks write the same element and that the buffer
// outlives the parallel loop.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
