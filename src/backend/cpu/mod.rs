//! The CPU reference backend: plain slices, rayon for parallelism, ndarray's GEMM for the
//! matrix products. Each op family implements its trait for [`CpuBackend`] in
//! `ops/<family>/cpu_kernel.rs`; this module holds what they share.

pub mod buffer_cache;
pub mod gemm;

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

/// Whether the hand-written AVX-512F kernels run (e.g. [`crate::ops::conv::cpu::direct`]): the CPU
/// has AVX-512F, `MOESEG_CPU_KERNELS` is not `portable`, and the calling thread is not inside
/// [`with_portable_kernels`]. Where it is false every product runs on the portable im2col + GEMM
/// paths. The choice is made on the thread that launches an op, before its parallel part.
pub fn avx512_kernels() -> bool {
    static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let detected = *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let available = std::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let available = false;
        available
    });
    detected && !portable_forced()
}

/// Whether the calling thread is inside [`with_portable_kernels`] (or `MOESEG_CPU_KERNELS` is
/// `portable`): then every op takes its plain reference form — im2col + GEMM convolutions and
/// the slot-output form of the routed convolution instead of weight mixing.
pub fn portable_forced() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let env =
        *ENV.get_or_init(|| std::env::var("MOESEG_CPU_KERNELS").is_ok_and(|v| v == "portable"));
    env || FORCE_PORTABLE.with(|f| f.get())
}

thread_local! {
    static FORCE_PORTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the AVX-512F kernels and the routed convolution's weight mixing off on this
/// thread, so that ops launched by `f` take their plain reference forms (to compare, in tests
/// and benchmarks).
pub fn with_portable_kernels<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCE_PORTABLE.with(|flag| flag.set(self.0));
        }
    }
    let _restore = Restore(FORCE_PORTABLE.with(|flag| flag.replace(true)));
    f()
}

/// A short description of the CPU kernels in use, for benchmark headers.
pub fn kernels_description() -> &'static str {
    match (avx512_kernels(), portable_forced()) {
        (true, _) => "AVX-512F direct stride-1 convs, routed conv by weight mixing",
        (false, false) => "im2col + ndarray GEMM convs, routed conv by weight mixing",
        (false, true) => "portable: im2col + ndarray GEMM convs, routed conv by slot outputs",
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
