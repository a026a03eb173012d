//! The small SIMD-vector interface the direct convolution kernels are written against once:
//! [`Avx2`] (8 lanes, AVX2+FMA) and [`Avx512`] (16 lanes, AVX-512F). Every method is
//! `#[inline(always)]` and is only called from kernels instantiated inside a function compiled
//! with the matching `#[target_feature]` (see `forward::block` and `grad::grad`), so the
//! intrinsics inline into the kernel loops.

use std::arch::x86_64::*;

/// A vector of `LANES` f32 with lane masks.
pub(super) trait Simd: Copy {
    /// Lanes per vector.
    const LANES: usize;
    /// Most vectors per row of a forward register tile (`MR × TILE_VECTORS` accumulators, plus
    /// the loads and the broadcast, fit the register file).
    const TILE_VECTORS: usize;
    /// Output channels per forward register tile: `MR` or `MR / 2`.
    const TILE_CHANNELS: usize;
    /// Input channels per pass of the forward tiles over a band: few enough that the chunk's
    /// input rows (one plane apart, so in the same L1 sets) stay in L1.
    const CHANNEL_CHUNK: usize;
    type V: Copy;
    type M: Copy;

    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(ptr: *const f32) -> Self::V;
    unsafe fn store(ptr: *mut f32, v: Self::V);
    /// `a · b + c`, fused.
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// The lanes `l` whose column `start + l` lies in `0..len`.
    unsafe fn mask(start: isize, len: usize) -> Self::M;
    /// No lane.
    unsafe fn none() -> Self::M;
    unsafe fn and(a: Self::M, b: Self::M) -> Self::M;
    /// Whether every lane is set.
    unsafe fn is_full(m: Self::M) -> bool;
    /// The masked lanes from `ptr`, zero elsewhere; masked-out lanes are never read.
    unsafe fn load_masked(m: Self::M, ptr: *const f32) -> Self::V;
    /// The masked lanes from `ptr`, `src` elsewhere.
    unsafe fn load_merge(src: Self::V, m: Self::M, ptr: *const f32) -> Self::V;
    /// Stores the masked lanes only.
    unsafe fn store_masked(ptr: *mut f32, m: Self::M, v: Self::V);
}

/// The lane range `lo..hi` of a vector whose column `start + l` lies in `0..len`.
#[inline(always)]
fn lane_range(start: isize, len: usize, lanes: usize) -> (usize, usize) {
    let lo = (-start).clamp(0, lanes as isize) as usize;
    let hi = (len as isize - start).clamp(0, lanes as isize) as usize;
    (lo, hi.max(lo))
}

/// 8 lanes on AVX2+FMA.
#[derive(Clone, Copy)]
pub(super) struct Avx2;

impl Simd for Avx2 {
    const LANES: usize = 8;
    // 16 registers: 4 channels × 3 vectors of accumulators, three input vectors, a broadcast.
    const TILE_VECTORS: usize = 2;
    const TILE_CHANNELS: usize = 4;
    const CHANNEL_CHUNK: usize = 8;
    type V = __m256;
    type M = __m256i;

    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(ptr: *const f32) -> __m256 {
        _mm256_loadu_ps(ptr)
    }
    #[inline(always)]
    unsafe fn store(ptr: *mut f32, v: __m256) {
        _mm256_storeu_ps(ptr, v)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn mask(start: isize, len: usize) -> __m256i {
        let (lo, hi) = lane_range(start, len, 8);
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let below_hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(hi as i32), lane);
        let below_lo = _mm256_cmpgt_epi32(_mm256_set1_epi32(lo as i32), lane);
        _mm256_andnot_si256(below_lo, below_hi)
    }
    #[inline(always)]
    unsafe fn none() -> __m256i {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn and(a: __m256i, b: __m256i) -> __m256i {
        _mm256_and_si256(a, b)
    }
    #[inline(always)]
    unsafe fn is_full(m: __m256i) -> bool {
        _mm256_movemask_ps(_mm256_castsi256_ps(m)) == 0xFF
    }
    #[inline(always)]
    unsafe fn load_masked(m: __m256i, ptr: *const f32) -> __m256 {
        _mm256_maskload_ps(ptr, m)
    }
    #[inline(always)]
    unsafe fn load_merge(src: __m256, m: __m256i, ptr: *const f32) -> __m256 {
        _mm256_blendv_ps(src, _mm256_maskload_ps(ptr, m), _mm256_castsi256_ps(m))
    }
    #[inline(always)]
    unsafe fn store_masked(ptr: *mut f32, m: __m256i, v: __m256) {
        _mm256_maskstore_ps(ptr, m, v)
    }
}

/// 16 lanes on AVX-512F.
#[derive(Clone, Copy)]
pub(super) struct Avx512;

impl Simd for Avx512 {
    const LANES: usize = 16;
    // 32 registers: 8 channels × 3 vectors of accumulators, three input vectors, a broadcast.
    const TILE_VECTORS: usize = 3;
    const TILE_CHANNELS: usize = 8;
    const CHANNEL_CHUNK: usize = 32;
    type V = __m512;
    type M = __mmask16;

    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(ptr: *const f32) -> __m512 {
        _mm512_loadu_ps(ptr)
    }
    #[inline(always)]
    unsafe fn store(ptr: *mut f32, v: __m512) {
        _mm512_storeu_ps(ptr, v)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn mask(start: isize, len: usize) -> __mmask16 {
        let (lo, hi) = lane_range(start, len, 16);
        (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as __mmask16
    }
    #[inline(always)]
    unsafe fn none() -> __mmask16 {
        0
    }
    #[inline(always)]
    unsafe fn and(a: __mmask16, b: __mmask16) -> __mmask16 {
        a & b
    }
    #[inline(always)]
    unsafe fn is_full(m: __mmask16) -> bool {
        m == 0xFFFF
    }
    #[inline(always)]
    unsafe fn load_masked(m: __mmask16, ptr: *const f32) -> __m512 {
        _mm512_maskz_loadu_ps(m, ptr)
    }
    #[inline(always)]
    unsafe fn load_merge(src: __m512, m: __mmask16, ptr: *const f32) -> __m512 {
        _mm512_mask_loadu_ps(src, m, ptr)
    }
    #[inline(always)]
    unsafe fn store_masked(ptr: *mut f32, m: __mmask16, v: __m512) {
        _mm512_mask_storeu_ps(ptr, m, v)
    }
}

/// `[f(0), …, f(N − 1)]`, built by a loop that inlines into the calling kernel (unlike
/// `std::array::from_fn`, whose out-of-line body would compile the SIMD closure without the
/// kernel's target features and call every intrinsic).
#[inline(always)]
pub(super) fn array<T: Copy, const N: usize>(mut f: impl FnMut(usize) -> T) -> [T; N] {
    let mut out = [const { std::mem::MaybeUninit::<T>::uninit() }; N];
    for (i, slot) in out.iter_mut().enumerate() {
        slot.write(f(i));
    }
    // SAFETY: every element was written; `T: Copy`, so nothing is dropped twice.
    unsafe { std::mem::transmute_copy(&out) }
}
