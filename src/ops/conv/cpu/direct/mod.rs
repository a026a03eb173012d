//! Direct stride-1 convolution on SIMD registers: output rows computed straight from the input
//! planes, with no im2col matrix and no packing of the input. The kernels
//! ([`forward`](self::forward)
//! tiles, [`grad`](self::grad) tiles) are written once over a small vector interface ([`simd`])
//! and run at 8 lanes on AVX2+FMA or 16 lanes on AVX-512F, as [`kernel_path`] says.
//!
//! For stride 1 the input under one kernel tap, for a run of output columns, is a contiguous run
//! of an input row, so a register tile of [`MR`] output channels × up to three vectors of output
//! columns (fewer for a row's tail; on AVX2, whose 16 registers hold 12 accumulators, the tile is
//! half the channels) is
//! accumulated as `Σ_{tap, ci} w[co, ci, tap] · x[ci, row(tap), cols(tap)]`:
//! up to three (masked) vector loads of the input and `MR` broadcast weights per step. Padding
//! is handled by skipping input rows outside the map and by load masks for columns outside it,
//! so padded and VALID convolutions (and the full-padded flipped-kernel convolution that is a
//! stride-1 input gradient) run the same kernel.
//!
//! Used on the SIMD kernel paths; elsewhere the im2col + GEMM paths run. Every output
//! element is written by one task with a fixed summation order (chunks of input channels in
//! order; within a chunk, taps, then channels), so results do not depend on the thread count.

use crate::backend::cpu::{buffer_cache, kernel_path, KernelPath, SendPtr};
use crate::ops::conv::Conv2dGeometry;
use rayon::prelude::*;
use std::ops::Range;

/// Output channels per register tile.
pub(crate) const MR: usize = 8;
/// Largest `Cin/groups · taps` the direct kernel takes: past it the im2col + GEMM path keeps
/// the weights and input rows of a tile in cache better.
const MAX_DEPTH: usize = 512 * 9;

/// Most kernel taps the direct kernel takes (7×7).
const MAX_TAPS: usize = 49;

/// Whether the direct kernels run by default on the AVX2 path. Measured on an AMD Zen 5 (2
/// cores, `moeseg bench ops`, `MOESEG_CPU_KERNELS=avx2`): the 8-lane direct kernels reach
/// 50 GFLOP/s on a 3×3 64→64 conv forward and 55 on its weight gradient, im2col + the `gemm`
/// crate's AVX2 GEMM 98 and 80, so the AVX2 path runs the GEMM forms; the 8-lane kernels stay
/// tested (`direct_matches_naive_f64`) and are taken only where a caller forces them
/// ([`fits`] + [`forward`] / [`weight_backward`] under [`crate::backend::cpu::with_kernel_path`]).
const DIRECT_ON_AVX2: bool = false;

/// Whether `geometry` runs on the direct kernel on the calling thread's kernel path: it
/// [`fits`], and the path is AVX-512 (or AVX2 where [`DIRECT_ON_AVX2`]).
pub(crate) fn usable(geometry: &Conv2dGeometry) -> bool {
    fits(geometry)
        && match kernel_path() {
            KernelPath::Avx512 => true,
            KernelPath::Avx2 => DIRECT_ON_AVX2,
            KernelPath::Portable => false,
        }
}

/// Whether the direct kernels can run `geometry` on a SIMD path: stride 1, not depthwise, a
/// moderate depth, output rows at least 16 wide, at most 7×7 taps.
pub(crate) fn fits(geometry: &Conv2dGeometry) -> bool {
    geometry.params.stride == [1, 1]
        && !geometry.is_depthwise()
        && geometry.col_rows() <= MAX_DEPTH
        && geometry.out_size[1] >= 16
        && geometry.taps() <= MAX_TAPS
}

/// Channel blocks of [`MR`] per group.
pub(crate) fn blocks_per_group(geometry: &Conv2dGeometry) -> usize {
    geometry.out_channels_per_group().div_ceil(MR)
}

/// Length of one packed weight (see [`pack_weight`]).
pub(crate) fn packed_len(geometry: &Conv2dGeometry) -> usize {
    geometry.params.groups * blocks_per_group(geometry) * MR * geometry.col_rows()
}

/// `weight` (`[Cout, Cin/g, kh, kw]`) packed as `[group][block][ci][tap][MR]`, zero for the
/// channels past the end of a group.
pub(crate) fn pack_weight(geometry: &Conv2dGeometry, weight: &[f32]) -> Vec<f32> {
    let mut packed = buffer_cache::uninit(packed_len(geometry));
    pack_weight_into(geometry, weight, &mut packed);
    packed
}

/// [`pack_weight`] into `packed` (`packed_len` floats, every one written).
pub(crate) fn pack_weight_into(geometry: &Conv2dGeometry, weight: &[f32], packed: &mut [f32]) {
    let (out_group, depth) = (geometry.out_channels_per_group(), geometry.col_rows());
    let blocks = blocks_per_group(geometry);
    for group in 0..geometry.params.groups {
        for block in 0..blocks {
            let dst = &mut packed[(group * blocks + block) * MR * depth..][..MR * depth];
            let first = (group * out_group + block * MR) * depth;
            let rows: Vec<&[f32]> = weight[first..]
                .chunks(depth)
                .take(MR.min(out_group - block * MR))
                .collect();
            // Written in order, the block's rows read side by side; missing channels are zero.
            for (step, lanes) in dst.chunks_exact_mut(MR).enumerate() {
                for (i, lane) in lanes.iter_mut().enumerate() {
                    *lane = rows.get(i).map_or(0.0, |row| row[step]);
                }
            }
        }
    }
}

/// One task's output: output rows `rows` of channel block `block` of group `group` for one
/// image (`x`: `[Cin, in_h, in_w]`), written into `out` (`[Cout, out_h, out_w]` of that image)
/// as `bias + conv`.
pub(crate) struct BlockTask<'a> {
    /// The SIMD path, read on the launching thread ([`kernel_path`]).
    pub path: KernelPath,
    pub group: usize,
    pub block: usize,
    pub rows: Range<usize>,
    pub x: &'a [f32],
    /// The packed weight of the convolution (one expert's, for a routed convolution).
    pub packed: &'a [f32],
    pub bias: Option<&'a [f32]>,
}

impl BlockTask<'_> {
    /// Runs the task.
    ///
    /// # Safety
    /// `out` must point to the image's `Cout · out_h · out_w` output floats; this task writes
    /// only its block's channels in `rows`, which no other thread may touch during the call.
    /// [`fits`] must hold for `geometry` and `self.path` must be an available SIMD path.
    pub(crate) unsafe fn run(&self, geometry: &Conv2dGeometry, out: *mut f32) {
        assert!(self.x.len() >= geometry.in_channels * geometry.in_pixels());
        assert!(self.packed.len() >= packed_len(geometry));
        #[cfg(target_arch = "x86_64")]
        match self.path {
            KernelPath::Avx2 => forward::block_avx2(geometry, self, out),
            KernelPath::Avx512 => forward::block_avx512(geometry, self, out),
            KernelPath::Portable => unreachable!("the direct convolution needs a SIMD path"),
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the direct convolution needs x86-64 AVX2 or AVX-512F");
    }
}

/// A whole (batched) stride-1 convolution on the direct kernel: tasks (image, group, channel
/// block, row band), at least four per thread where the map allows, on the calling thread's
/// [`kernel_path`], which must be an available SIMD path. [`fits`] must hold.
pub(crate) fn forward(
    geometry: &Conv2dGeometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert!(fits(geometry) && kernel_path().is_simd());
    let packed = pack_weight(geometry, weight);
    let (in_len, out_len) = (
        geometry.input_len() / geometry.batch.max(1),
        geometry.output_len() / geometry.batch.max(1),
    );
    let per_group = blocks_per_group(geometry);
    let blocks = geometry.params.groups * per_group;
    let items = geometry.batch * blocks;
    let bands = task_bands(geometry.out_size[0], items);
    // Band-major: the threads sweep the map band by band with every block, so the input rows
    // in use stay in cache however deep the convolution is.
    let tasks: Vec<(usize, usize, Range<usize>)> = (0..geometry.batch)
        .flat_map(|image| bands.iter().map(move |rows| (image, rows.clone())))
        .flat_map(|(image, rows)| (0..blocks).map(move |block| (image, block, rows.clone())))
        .collect();
    let mut out = buffer_cache::uninit(geometry.output_len());
    let out_ptr = SendPtr(out.as_mut_ptr());
    let path = kernel_path();
    tasks.par_iter().for_each(|(image, block, rows)| {
        let ptr = out_ptr; // the whole `SendPtr`, not its raw field
        let task = BlockTask {
            path,
            group: block / per_group,
            block: block % per_group,
            rows: rows.clone(),
            x: &x[image * in_len..][..in_len],
            packed: &packed,
            bias,
        };
        // SAFETY: `fits` holds on a SIMD path; each (image, block, band) is one task writing only
        // its part
        // of image `image`'s output, and `out` outlives the loop.
        unsafe { task.run(geometry, ptr.0.add(image * out_len)) };
    });
    buffer_cache::recycle(packed);
    out
}

/// Fewest output rows per pass of the weight-gradient tiles.
const GRAD_BAND_ROWS: usize = 8;
/// Largest pack of one band's `∂y` (`MR` channels, 1 MiB); the bands are as tall as fit.
/// Unit tests use 16 KiB, so their small maps run in several bands as large maps do.
const GRAD_PACK_FLOATS: usize = if cfg!(test) { 1 << 12 } else { 1 << 18 };

/// A task of the weight gradient: the entries of `∂W` for channel block `block` of group
/// `group` (rows) and `(ci, tap)` tiles `tiles` (columns), accumulated over whole images.
pub(crate) struct GradTask {
    /// The SIMD path, read on the launching thread ([`kernel_path`]).
    pub path: KernelPath,
    pub group: usize,
    pub block: usize,
    pub tiles: Range<usize>,
}

/// Columns of the weight gradient (`(ci, tap)` pairs) per register tile on `path`.
fn grad_nr(path: KernelPath) -> usize {
    #[cfg(target_arch = "x86_64")]
    if path == KernelPath::Avx2 {
        return grad::GRAD_NR_AVX2;
    } else if path == KernelPath::Avx512 {
        return grad::GRAD_NR_AVX512;
    }
    let _ = path;
    1
}

/// Number of `(ci, tap)` tiles of the weight gradient on `path`.
pub(crate) fn grad_tiles(geometry: &Conv2dGeometry, path: KernelPath) -> usize {
    geometry.col_rows().div_ceil(grad_nr(path))
}

/// The weight-gradient tasks: every (group, block) with its tiles cut into runs so there are at
/// least `min_tasks` tasks where the tiles allow, on the calling thread's [`kernel_path`].
/// Each entry of `∂W` belongs to one task.
pub(crate) fn grad_tasks(geometry: &Conv2dGeometry, min_tasks: usize) -> Vec<GradTask> {
    let path = kernel_path();
    let blocks = geometry.params.groups * blocks_per_group(geometry);
    let tiles = grad_tiles(geometry, path);
    let runs = min_tasks.div_ceil(blocks.max(1)).clamp(1, tiles.max(1));
    let per_run = tiles.div_ceil(runs).max(1);
    let mut tasks = Vec::new();
    for block in 0..blocks {
        for start in (0..tiles).step_by(per_run) {
            tasks.push(GradTask {
                path,
                group: block / blocks_per_group(geometry),
                block: block % blocks_per_group(geometry),
                tiles: start..(start + per_run).min(tiles),
            });
        }
    }
    tasks
}

impl GradTask {
    /// Adds `scale · Σ_positions ∂y[co, p] · x[ci, p + tap]` for this task's entries to `grad`
    /// (`[Cout, Cin/g, kh, kw]`), for one image: `dy` `[Cout, out_h, out_w]`, `x`
    /// `[Cin, in_h, in_w]`. `buffer` is scratch space, reused across calls.
    ///
    /// # Safety
    /// [`fits`] must hold for `geometry` and `self.path` must be an available SIMD path; `grad`
    /// must hold the whole weight gradient, and no
    /// other thread may touch this task's entries during the call.
    pub(crate) unsafe fn accumulate(
        &self,
        geometry: &Conv2dGeometry,
        dy: &[f32],
        x: &[f32],
        scale: f32,
        grad: *mut f32,
        buffer: &mut Vec<f32>,
    ) {
        assert!(dy.len() >= geometry.out_channels * geometry.out_pixels());
        assert!(x.len() >= geometry.in_channels * geometry.in_pixels());
        #[cfg(target_arch = "x86_64")]
        match self.path {
            KernelPath::Avx2 => grad::grad_avx2(geometry, self, dy, x, scale, grad, buffer),
            KernelPath::Avx512 => grad::grad_avx512(geometry, self, dy, x, scale, grad, buffer),
            KernelPath::Portable => unreachable!("the direct convolution needs a SIMD path"),
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the direct convolution needs x86-64 AVX2 or AVX-512F");
    }
}

/// The weight gradient of a whole (batched) stride-1 convolution on the direct kernel, summed
/// over images in order, on the calling thread's SIMD [`kernel_path`]. [`fits`] must hold.
pub(crate) fn weight_backward(geometry: &Conv2dGeometry, grad_out: &[f32], x: &[f32]) -> Vec<f32> {
    assert!(fits(geometry) && kernel_path().is_simd());
    let mut grad = buffer_cache::zeroed(geometry.weight_len());
    let grad_ptr = SendPtr(grad.as_mut_ptr());
    let (in_len, out_len) = (
        geometry.in_channels * geometry.in_pixels(),
        geometry.out_channels * geometry.out_pixels(),
    );
    grad_tasks(geometry, 4 * rayon::current_num_threads())
        .par_iter()
        .for_each_init(Vec::new, |buffer, task| {
            let ptr = grad_ptr; // the whole `SendPtr`, not its raw field
            for image in 0..geometry.batch {
                let dy = &grad_out[image * out_len..][..out_len];
                let x = &x[image * in_len..][..in_len];
                // SAFETY: `fits` holds on a SIMD path; tasks own disjoint entries of `grad`, which
                // outlives
                // the loop.
                unsafe { task.accumulate(geometry, dy, x, 1.0, ptr.0, buffer) };
            }
        });
    grad
}

/// Output rows per task band: enough rows per task to amortise it, few enough that a band's
/// input rows stay in cache while every channel block runs over them.
const BAND_ROWS: usize = 8;

/// The row bands of the forward tasks: [`BAND_ROWS`] rows, or fewer when `items` (images or
/// assignments × channel blocks) would otherwise give fewer than four tasks per thread.
pub(crate) fn task_bands(rows: usize, items: usize) -> Vec<Range<usize>> {
    let wanted = (4 * rayon::current_num_threads()).div_ceil(items.max(1));
    row_bands(rows, wanted.max(rows.div_ceil(BAND_ROWS)))
}

/// Row bands splitting `rows` output rows into about `parts` tasks.
pub(crate) fn row_bands(rows: usize, parts: usize) -> Vec<Range<usize>> {
    let band = rows.div_ceil(parts.max(1)).max(1);
    (0..rows)
        .step_by(band)
        .map(|r| r..(r + band).min(rows))
        .collect()
}

#[cfg(target_arch = "x86_64")]
mod forward;
#[cfg(target_arch = "x86_64")]
mod grad;
#[cfg(target_arch = "x86_64")]
mod simd;

#[cfg(test)]
mod tests;
