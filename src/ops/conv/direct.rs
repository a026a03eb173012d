//! Direct stride-1 convolution on AVX-512F: output rows computed straight from the input planes,
//! with no im2col matrix and no packing of the input.
//!
//! For stride 1 the input under one kernel tap, for a run of output columns, is a contiguous run
//! of an input row, so a register tile of [`MR`] output channels × 48 output columns (32 or 16
//! for a row's tail) is accumulated as `Σ_{tap, ci} w[co, ci, tap] · x[ci, row(tap), cols(tap)]`:
//! up to three (masked) vector loads of the input and `MR` broadcast weights per step. Padding
//! is handled by skipping input rows outside the map and by load masks for columns outside it,
//! so padded and VALID convolutions (and the full-padded flipped-kernel convolution that is a
//! stride-1 input gradient) run the same kernel.
//!
//! Used where [`avx512_kernels`] holds; elsewhere the im2col + GEMM paths run. Every output
//! element is written by one task with a fixed summation order (chunks of input channels in
//! order; within a chunk, taps, then channels), so results do not depend on the thread count.

use super::Conv2dGeometry;
use crate::backend::cpu::{avx512_kernels, pool, SendPtr};
use rayon::prelude::*;
use std::ops::Range;

/// Output channels per register tile.
pub(crate) const MR: usize = 8;
/// Largest `Cin/groups · taps` the direct kernel takes: past it the im2col + GEMM path keeps
/// the weights and input rows of a tile in cache better.
const MAX_DEPTH: usize = 512 * 9;

/// Input channels per pass of the forward tiles over a band.
const CHANNEL_CHUNK: usize = 32;

/// Most kernel taps the direct kernel takes (7×7).
const MAX_TAPS: usize = 49;

/// Whether `geometry` runs on the direct kernel on this machine: stride 1, not depthwise, a
/// moderate depth, output rows at least a vector wide, and AVX-512F.
pub(crate) fn usable(geometry: &Conv2dGeometry) -> bool {
    geometry.params.stride == [1, 1]
        && !geometry.is_depthwise()
        && geometry.col_rows() <= MAX_DEPTH
        && geometry.out_size[1] >= 16
        && geometry.taps() <= MAX_TAPS
        && avx512_kernels()
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
    let mut packed = pool::uninit(packed_len(geometry));
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
    /// [`usable`] must hold for `geometry`.
    pub(crate) unsafe fn run(&self, geometry: &Conv2dGeometry, out: *mut f32) {
        assert!(self.x.len() >= geometry.in_channels * geometry.in_pixels());
        assert!(self.packed.len() >= packed_len(geometry));
        #[cfg(target_arch = "x86_64")]
        kernel::block(geometry, self, out);
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the direct convolution needs x86-64 AVX-512F");
    }
}

/// A whole (batched) stride-1 convolution on the direct kernel: tasks (image, group, channel
/// block, row band), at least four per thread where the map allows. [`usable`] must hold.
pub(crate) fn forward(
    geometry: &Conv2dGeometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    debug_assert!(usable(geometry));
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
    let mut out = pool::uninit(geometry.output_len());
    let out_ptr = SendPtr(out.as_mut_ptr());
    tasks.par_iter().for_each(|(image, block, rows)| {
        let ptr = out_ptr; // the whole `SendPtr`, not its raw field
        let task = BlockTask {
            group: block / per_group,
            block: block % per_group,
            rows: rows.clone(),
            x: &x[image * in_len..][..in_len],
            packed: &packed,
            bias,
        };
        // SAFETY: `usable` holds; each (image, block, band) is one task writing only its part
        // of image `image`'s output, and `out` outlives the loop.
        unsafe { task.run(geometry, ptr.0.add(image * out_len)) };
    });
    pool::recycle(packed);
    out
}

/// Columns of the weight gradient (`(ci, tap)` pairs) per register tile of [`grad`].
pub(crate) const GRAD_NR: usize = 3;
/// Fewest output rows per pass of the weight-gradient tiles.
const GRAD_BAND_ROWS: usize = 8;
/// Largest pack of one band's `∂y` (`MR` channels, 1 MiB); the bands are as tall as fit.
/// Unit tests use 16 KiB, so their small maps run in several bands as large maps do.
const GRAD_PACK_FLOATS: usize = if cfg!(test) { 1 << 12 } else { 1 << 18 };

/// A task of the weight gradient: the entries of `∂W` for channel block `block` of group
/// `group` (rows) and `(ci, tap)` tiles `tiles` (columns), accumulated over whole images.
pub(crate) struct GradTask {
    pub group: usize,
    pub block: usize,
    pub tiles: Range<usize>,
}

/// Number of `(ci, tap)` tiles of the weight gradient.
pub(crate) fn grad_tiles(geometry: &Conv2dGeometry) -> usize {
    geometry.col_rows().div_ceil(GRAD_NR)
}

/// The weight-gradient tasks: every (group, block) with its tiles cut into runs so there are at
/// least `min_tasks` tasks where the tiles allow. Each entry of `∂W` belongs to one task.
pub(crate) fn grad_tasks(geometry: &Conv2dGeometry, min_tasks: usize) -> Vec<GradTask> {
    let blocks = geometry.params.groups * blocks_per_group(geometry);
    let tiles = grad_tiles(geometry);
    let runs = min_tasks.div_ceil(blocks.max(1)).clamp(1, tiles.max(1));
    let per_run = tiles.div_ceil(runs).max(1);
    let mut tasks = Vec::new();
    for block in 0..blocks {
        for start in (0..tiles).step_by(per_run) {
            tasks.push(GradTask {
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
    /// [`usable`] must hold for `geometry`; `grad` must hold the whole weight gradient, and no
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
        kernel::grad(geometry, self, dy, x, scale, grad, buffer);
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the direct convolution needs x86-64 AVX-512F");
    }
}

/// The weight gradient of a whole (batched) stride-1 convolution on the direct kernel, summed
/// over images in order. [`usable`] must hold.
pub(crate) fn weight_backward(geometry: &Conv2dGeometry, grad_out: &[f32], x: &[f32]) -> Vec<f32> {
    debug_assert!(usable(geometry));
    let mut grad = pool::zeroed(geometry.weight_len());
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
                // SAFETY: `usable` holds; tasks own disjoint entries of `grad`, which outlives
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
mod kernel {
    use super::{
        BlockTask, GradTask, CHANNEL_CHUNK, GRAD_BAND_ROWS, GRAD_NR, GRAD_PACK_FLOATS, MAX_TAPS, MR,
    };
    use crate::ops::conv::Conv2dGeometry;
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Edge vectors per side whose masks the weight-gradient tiles compute once.
    const EDGES: usize = 2;

    /// The lanes `l` of a 16-float vector whose column `start + l` lies in `0..len`.
    fn lane_mask(start: isize, len: usize) -> __mmask16 {
        let lo = (-start).clamp(0, 16);
        let hi = (len as isize - start).clamp(0, 16);
        if hi <= lo {
            0
        } else {
            (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as __mmask16
        }
    }

    /// See [`GradTask::accumulate`]. Registers hold an `MR × GRAD_NR` tile of vector partial
    /// sums over output columns; each band of rows runs every tile of the task, parking the
    /// partial sums in `buffer` between bands; the lanes are summed at the end.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn grad(
        g: &Conv2dGeometry,
        task: &GradTask,
        dy: &[f32],
        x: &[f32],
        scale: f32,
        grad: *mut f32,
        buffer: &mut Vec<f32>,
    ) {
        let [in_h, in_w] = g.in_size;
        let [out_h, out_w] = g.out_size;
        let [dh, dw] = g.params.dilation;
        let [pad_top, _, pad_left, _] = g.params.padding;
        let (in_group, out_group) = (g.in_channels_per_group(), g.out_channels_per_group());
        let depth = g.col_rows();
        let first_channel = task.group * out_group + task.block * MR;
        let channels = MR.min(out_group - task.block * MR);
        let tile_floats = MR * GRAD_NR * 16;
        let parked_len = task.tiles.len() * tile_floats;
        // Vectors per output row; ∂y of a band is packed as [row][vector][channel][16 lanes],
        // or for a VALID convolution as [vector][channel][16 lanes] over the band's rows laid
        // end to end (see `flat_grad_band`).
        let vectors = out_w.div_ceil(16);
        let flat = g.params.padding == [0; 4];
        let row_floats = if flat { in_w * MR } else { vectors * MR * 16 };
        // Bands as tall as keep ∂y's pack within GRAD_PACK_FLOATS: parking the partial sums
        // between bands costs more than reading the pack from L2 or L3.
        let band_rows = (GRAD_PACK_FLOATS / row_floats).max(GRAD_BAND_ROWS);
        let band_floats = out_h.min(band_rows) * row_floats + MR * 16;
        buffer.clear();
        // Room to start on a cache line: the ∂y loads of the inner loop then never split.
        buffer.resize(parked_len + band_floats + 16, 0.0);
        let skew = buffer.as_ptr().align_offset(64).min(16);
        let (parked_all, dy_pack) = buffer[skew..].split_at_mut(parked_len);
        let out_pixels = out_h * out_w;
        let x = x[task.group * in_group * in_h * in_w..].as_ptr();
        for band in super::row_bands(out_h, out_h.div_ceil(band_rows)) {
            if flat {
                let (first, channels) = (first_channel, channels);
                flat_grad_band(g, task, dy, x, band, parked_all, dy_pack, first, channels);
                continue;
            }
            for (r, oh) in band.clone().enumerate() {
                for v in 0..vectors {
                    let dst = &mut dy_pack[(r * vectors + v) * MR * 16..][..MR * 16];
                    let (start, len) = (v * 16, 16.min(out_w - v * 16));
                    for (i, lanes) in dst.chunks_mut(16).enumerate() {
                        if i < channels {
                            let at = (first_channel + i) * out_pixels + oh * out_w + start;
                            lanes[..len].copy_from_slice(&dy[at..at + len]);
                            lanes[len..].fill(0.0);
                        } else {
                            lanes.fill(0.0);
                        }
                    }
                }
            }
            for (slot, tile) in task.tiles.clone().enumerate() {
                let columns = tile_columns(g, tile);
                let parked = parked_all.as_mut_ptr().add(slot * tile_floats);
                let mut acc = load_tile(parked);
                // Per (ci, tap) column: its input row offset, first column, and plane start.
                let mut row_shift = [0isize; GRAD_NR];
                let mut col0 = [0isize; GRAD_NR];
                let mut base = [0isize; GRAD_NR];
                for (c, &[ci, kh, kw]) in columns.iter().enumerate() {
                    row_shift[c] = (kh * dh) as isize - pad_top as isize;
                    col0[c] = (kw * dw) as isize - pad_left as isize;
                    base[c] = (ci * in_h * in_w) as isize + col0[c];
                }
                // Vectors in `interior` need no masks: whole, and every column's input in the row.
                let lead = col0
                    .iter()
                    .map(|&c| (-c).max(0) as usize)
                    .max()
                    .unwrap_or(0);
                let reach = col0.iter().map(|&c| c.max(0) as usize).max().unwrap_or(0);
                let interior = lead.div_ceil(16)..(out_w.min(in_w.saturating_sub(reach)) / 16);
                // The column masks of the vectors outside `interior` (the first EDGES before
                // it and after it), for rows whose input rows all lie in the map.
                let edge_masks = |v: usize| -> [__mmask16; GRAD_NR] {
                    let m = lane_mask((v * 16) as isize, out_w);
                    std::array::from_fn(|c| lane_mask((v * 16) as isize + col0[c], in_w) & m)
                };
                let head: [[__mmask16; GRAD_NR]; EDGES] = std::array::from_fn(edge_masks);
                let tail: [[__mmask16; GRAD_NR]; EDGES] =
                    std::array::from_fn(|i| edge_masks(interior.end + i));
                for (r, oh) in band.clone().enumerate() {
                    let mut src = [x; GRAD_NR];
                    let mut row_ok = [true; GRAD_NR];
                    for c in 0..GRAD_NR {
                        let ih = oh as isize + row_shift[c];
                        row_ok[c] = ih >= 0 && ih < in_h as isize;
                        src[c] = x.wrapping_offset(base[c] + ih * in_w as isize);
                    }
                    let fast = if row_ok.iter().all(|&ok| ok) {
                        interior.clone()
                    } else {
                        0..0
                    };
                    let dy_row = dy_pack.as_ptr().add(r * vectors * MR * 16);
                    for v in 0..vectors {
                        let ow0 = v * 16;
                        let edge = if fast.is_empty() {
                            None
                        } else if v < EDGES.min(interior.start) {
                            Some(head[v])
                        } else if v >= interior.end && v - interior.end < EDGES {
                            Some(tail[v - interior.end])
                        } else {
                            None
                        };
                        let xv: [__m512; GRAD_NR] = if fast.contains(&v) {
                            std::array::from_fn(|c| _mm512_loadu_ps(src[c].wrapping_add(ow0)))
                        } else if let Some(masks) = edge {
                            std::array::from_fn(|c| {
                                _mm512_maskz_loadu_ps(masks[c], src[c].wrapping_add(ow0))
                            })
                        } else {
                            let m = lane_mask(ow0 as isize, out_w);
                            std::array::from_fn(|c| {
                                let mask = if row_ok[c] {
                                    lane_mask(ow0 as isize + col0[c], in_w) & m
                                } else {
                                    0
                                };
                                _mm512_maskz_loadu_ps(mask, src[c].wrapping_add(ow0))
                            })
                        };
                        accumulate_step(&mut acc, dy_row.add(v * MR * 16), &xv);
                    }
                }
                store_tile(parked, &acc);
            }
        }
        for (slot, tile) in task.tiles.clone().enumerate() {
            let parked = &parked_all[slot * tile_floats..][..tile_floats];
            for i in 0..channels {
                for c in 0..GRAD_NR {
                    let step = tile * GRAD_NR + c;
                    if step >= depth {
                        continue;
                    }
                    let lanes = &parked[(i * GRAD_NR + c) * 16..][..16];
                    let sum = _mm512_reduce_add_ps(_mm512_loadu_ps(lanes.as_ptr()));
                    *grad.add((first_channel + i) * depth + step) += scale * sum;
                }
            }
        }
    }

    /// One band of [`grad`] for a VALID convolution, its rows laid end to end: output `(oh, ow)`
    /// is position `(oh − r0)·in_w + ow` of one long row whose tap `(kh, kw)` reads the input
    /// plane at that position plus `(r0 + kh·dh)·in_w + kw·dw`. ∂y is packed with zeros at the
    /// `in_w − out_w` positions past each row's end, so they add nothing; the input is read
    /// unmasked up to the end of its plane.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn flat_grad_band(
        g: &Conv2dGeometry,
        task: &GradTask,
        dy: &[f32],
        x: *const f32,
        band: Range<usize>,
        parked_all: &mut [f32],
        dy_pack: &mut [f32],
        first_channel: usize,
        channels: usize,
    ) {
        let [in_h, in_w] = g.in_size;
        let [out_h, out_w] = g.out_size;
        let [dh, dw] = g.params.dilation;
        let plane = in_h * in_w;
        let (r0, rows) = (band.start, band.len());
        let len = (rows - 1) * in_w + out_w;
        let vectors = len.div_ceil(16);
        // Position q of channel i goes to lane q % 16 of pack[q / 16][i]. A vector spans at
        // most two rows (in_w ≥ 16): the lanes of row r, then those of row r + 1 past the gap
        // of in_w − out_w zeros; absent channels and positions past the end are zeros.
        for i in 0..MR {
            let source = (i < channels).then(|| {
                dy[(first_channel + i) * out_h * out_w..]
                    .as_ptr()
                    .add(r0 * out_w)
            });
            let (mut r, mut q0) = (0usize, 0usize);
            for v in 0..vectors {
                let q = v * 16;
                while q >= q0 + in_w {
                    r += 1;
                    q0 += in_w;
                }
                let lanes = match source {
                    None => _mm512_setzero_ps(),
                    Some(rows_start) => {
                        let at = |row: usize, from: isize| {
                            (
                                lane_mask(from, out_w),
                                rows_start.wrapping_offset(row as isize * out_w as isize + from),
                            )
                        };
                        let (mask, ptr) = at(r, q as isize - q0 as isize);
                        let mut lanes = _mm512_maskz_loadu_ps(mask, ptr);
                        if r + 1 < rows {
                            let (mask, ptr) = at(r + 1, q as isize - (q0 + in_w) as isize);
                            lanes = _mm512_mask_loadu_ps(lanes, mask, ptr);
                        }
                        lanes
                    }
                };
                _mm512_storeu_ps(dy_pack.as_mut_ptr().add((v * MR + i) * 16), lanes);
            }
        }
        let pack = &dy_pack[..vectors * MR * 16];
        let tile_floats = MR * GRAD_NR * 16;
        for (slot, tile) in task.tiles.clone().enumerate() {
            let columns = tile_columns(g, tile);
            let parked = parked_all.as_mut_ptr().add(slot * tile_floats);
            let mut acc = load_tile(parked);
            // Per column: where its long row starts, and how many floats of the plane follow.
            let mut src = [x; GRAD_NR];
            let mut limit = [0usize; GRAD_NR];
            for (c, &[ci, kh, kw]) in columns.iter().enumerate() {
                let start = (r0 + kh * dh) * in_w + kw * dw;
                src[c] = x.add(ci * plane + start);
                limit[c] = plane - start;
            }
            // Vectors wholly inside every column's plane load unmasked.
            let whole = (limit.iter().min().copied().unwrap_or(0) / 16).min(vectors);
            for v in 0..vectors {
                let q = v * 16;
                let xv: [__m512; GRAD_NR] = if v < whole {
                    std::array::from_fn(|c| _mm512_loadu_ps(src[c].add(q)))
                } else {
                    std::array::from_fn(|c| {
                        let mask = lane_mask(q as isize, limit[c]);
                        _mm512_maskz_loadu_ps(mask, src[c].wrapping_add(q))
                    })
                };
                accumulate_step(&mut acc, pack.as_ptr().add(v * MR * 16), &xv);
            }
            store_tile(parked, &acc);
        }
    }

    /// The `[ci, kh, kw]` of weight-gradient tile `tile`'s [`GRAD_NR`] `(ci, tap)` columns;
    /// past the depth they repeat the last one.
    fn tile_columns(g: &Conv2dGeometry, tile: usize) -> [[usize; 3]; GRAD_NR] {
        let (depth, taps, kw_n) = (g.col_rows(), g.taps(), g.kernel[1]);
        std::array::from_fn(|c| {
            let step = (tile * GRAD_NR + c).min(depth - 1);
            let (ci, tap) = (step / taps, step % taps);
            [ci, tap / kw_n, tap % kw_n]
        })
    }

    /// A weight-gradient tile's partial sums (`[MR][GRAD_NR]` vectors parked at `parked`).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load_tile(parked: *const f32) -> [[__m512; GRAD_NR]; MR] {
        std::array::from_fn(|i| {
            std::array::from_fn(|c| _mm512_loadu_ps(parked.add((i * GRAD_NR + c) * 16)))
        })
    }

    /// Parks a weight-gradient tile's partial sums at `parked` (see [`load_tile`]).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn store_tile(parked: *mut f32, acc: &[[__m512; GRAD_NR]; MR]) {
        for (i, row) in acc.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                _mm512_storeu_ps(parked.add((i * GRAD_NR + c) * 16), *v);
            }
        }
    }

    /// `acc[i][c] += ∂y[i] · x[c]` for one vector of positions: `dy` holds the `MR` channels'
    /// packed lanes, `xv` the tile's columns.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn accumulate_step(
        acc: &mut [[__m512; GRAD_NR]; MR],
        dy: *const f32,
        xv: &[__m512; GRAD_NR],
    ) {
        for (i, row) in acc.iter_mut().enumerate() {
            let dv = _mm512_loadu_ps(dy.add(i * 16));
            for (c, acc) in row.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(dv, xv[c], *acc);
            }
        }
    }

    /// What the register tiles of one forward task share.
    struct TileContext {
        x: *const f32,
        weights: *const f32,
        plane: usize,
        in_size: [usize; 2],
        taps: usize,
        kernel: [usize; 2],
        dilation: [usize; 2],
        pad: [usize; 2],
        bias: [f32; MR],
        out: *mut f32,
        out_size: [usize; 2],
        channels: usize,
        /// Rows laid end to end (see [`block`]): input reads are bounded by the plane, not
        /// the row.
        flat: bool,
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block(g: &Conv2dGeometry, task: &BlockTask, out: *mut f32) {
        let (in_group, out_group) = (g.in_channels_per_group(), g.out_channels_per_group());
        let depth = g.col_rows();
        let first_channel = task.group * out_group + task.block * MR;
        let channels = MR.min(out_group - task.block * MR);
        let blocks = out_group.div_ceil(MR);
        let [in_h, in_w] = g.in_size;
        let mut bias = [0.0f32; MR];
        if let Some(b) = task.bias {
            bias[..channels].copy_from_slice(&b[first_channel..first_channel + channels]);
        }
        let [pad_top, _, pad_left, _] = g.params.padding;
        let ctx = TileContext {
            x: task.x[task.group * in_group * in_h * in_w..].as_ptr(),
            weights: task.packed[(task.group * blocks + task.block) * MR * depth..].as_ptr(),
            plane: in_h * in_w,
            in_size: g.in_size,
            taps: g.taps(),
            kernel: g.kernel,
            dilation: g.params.dilation,
            pad: [pad_top, pad_left],
            bias,
            out: out.add(first_channel * g.out_pixels()),
            out_size: g.out_size,
            channels,
            flat: false,
        };
        let out_w = g.out_size[1];
        if g.params.padding == [0; 4] {
            return flat_block(g, task, ctx, out);
        }
        // Input channels in chunks, so one chunk's input rows and weights stay in L1 while the
        // tiles sweep the band.
        for first in (0..in_group).step_by(CHANNEL_CHUNK) {
            let chunk = first..(first + CHANNEL_CHUNK).min(in_group);
            for oh in task.rows.clone() {
                row_tiles(&ctx, oh, out_w, &chunk);
            }
        }
    }

    /// Output row `oh`'s `width` columns in tiles of three vectors, and two or one for the
    /// row's tail (less wasted work on narrow rows).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn row_tiles(ctx: &TileContext, oh: usize, width: usize, chunk: &Range<usize>) {
        let mut ow0 = 0;
        while ow0 < width {
            match width - ow0 {
                left if left > 32 => tile::<3>(ctx, oh, ow0, chunk.clone()),
                left if left > 16 => tile::<2>(ctx, oh, ow0, chunk.clone()),
                _ => tile::<1>(ctx, oh, ow0, chunk.clone()),
            }
            ow0 += 48;
        }
    }

    thread_local! {
        /// The output rows of a flat task, laid end to end.
        static FLAT_ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// A VALID convolution's task with its rows laid end to end: output `(oh, ow)` of the band
    /// is position `(oh − r0)·in_w + ow` of one long row, whose tap `(kh, kw)` reads the input
    /// at the same position plus `kh·dh·in_w + kw·dw` — the input rows are contiguous in their
    /// plane. Positions with `ow ≥ out_w` are computed too and dropped, so a narrow map wastes
    /// `in_w − out_w` columns per row instead of the rest of a row's last vector. The long row
    /// is accumulated in a per-thread buffer and copied out row by row.
    #[target_feature(enable = "avx512f")]
    unsafe fn flat_block(g: &Conv2dGeometry, task: &BlockTask, ctx: TileContext, out: *mut f32) {
        let [in_h, in_w] = g.in_size;
        let [_, out_w] = g.out_size;
        let (r0, rows) = (task.rows.start, task.rows.len());
        if rows == 0 {
            return;
        }
        let len = (rows - 1) * in_w + out_w;
        let mut buffer = FLAT_ROWS.with(|b| b.take());
        if buffer.len() < MR * len {
            buffer.resize(MR * len, 0.0);
        }
        let mut ctx = ctx;
        ctx.x = ctx.x.add(r0 * in_w);
        ctx.in_size = [in_h - r0, in_w];
        ctx.out = buffer.as_mut_ptr();
        ctx.out_size = [1, len];
        ctx.flat = true;
        for first in (0..g.in_channels_per_group()).step_by(CHANNEL_CHUNK) {
            let chunk = first..(first + CHANNEL_CHUNK).min(g.in_channels_per_group());
            row_tiles(&ctx, 0, len, &chunk);
        }
        let first_channel = task.group * g.out_channels_per_group() + task.block * MR;
        for i in 0..ctx.channels {
            let dst = out.add((first_channel + i) * g.out_pixels() + r0 * out_w);
            for r in 0..rows {
                std::ptr::copy_nonoverlapping(
                    buffer.as_ptr().add(i * len + r * in_w),
                    dst.add(r * out_w),
                    out_w,
                );
            }
        }
        FLAT_ROWS.with(|b| b.replace(buffer));
    }

    /// The `MR × 16·NV` output tile at row `oh`, columns from `ow0`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const NV: usize>(
        ctx: &TileContext,
        oh: usize,
        ow0: usize,
        input_channels: Range<usize>,
    ) {
        let [in_h, in_w] = ctx.in_size;
        let [out_h, out_w] = ctx.out_size;
        let [kh_n, kw_n] = ctx.kernel;
        let [dh, dw] = ctx.dilation;
        let [pad_top, pad_left] = ctx.pad;
        let store: [__mmask16; NV] =
            std::array::from_fn(|v| lane_mask((ow0 + 16 * v) as isize, out_w));
        // The taps that fall on input rows, with their offsets and column masks.
        let mut offsets = [0isize; MAX_TAPS];
        let mut steps = [0usize; MAX_TAPS];
        let mut masks = [[0 as __mmask16; NV]; MAX_TAPS];
        let mut live = 0;
        for kh in 0..kh_n {
            let ih = (oh + kh * dh) as isize - pad_top as isize;
            if ih < 0 || ih >= in_h as isize {
                continue;
            }
            for kw in 0..kw_n {
                let c0 = (ow0 + kw * dw) as isize - pad_left as isize;
                offsets[live] = ih * in_w as isize + c0;
                steps[live] = (kh * kw_n + kw) * MR;
                // Flat rows (see `flat_block`) may read on to the end of the plane.
                let limit = if ctx.flat {
                    (in_h - ih as usize) * in_w
                } else {
                    in_w
                };
                masks[live] =
                    std::array::from_fn(|v| lane_mask(c0 + 16 * v as isize, limit) & store[v]);
                live += 1;
            }
        }
        // The first chunk of input channels starts from the bias, later ones from the partial
        // sums already stored (an exact f32 round trip: the sums are as if never interrupted).
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        for (i, row) in acc.iter_mut().enumerate() {
            *row = if input_channels.start == 0 {
                [_mm512_set1_ps(ctx.bias[i]); NV]
            } else if i < ctx.channels {
                let dst = ctx.out.add(i * out_h * out_w + oh * out_w + ow0);
                std::array::from_fn(|v| _mm512_maskz_loadu_ps(store[v], dst.wrapping_add(16 * v)))
            } else {
                [_mm512_setzero_ps(); NV]
            };
        }
        // Taps outer, channels inner: a tap's offset and masks stay in registers while the
        // chunk's channels stream past.
        for j in 0..live {
            let mask = masks[j];
            // Masked-out lanes are never read, so the pointer may sit outside the row
            // (wrapping arithmetic, no dereference of those lanes).
            let mut src = ctx
                .x
                .wrapping_add(input_channels.start * ctx.plane)
                .wrapping_offset(offsets[j]);
            let mut w = ctx
                .weights
                .add(input_channels.start * ctx.taps * MR + steps[j]);
            for _ in input_channels.clone() {
                let b: [__m512; NV] = std::array::from_fn(|v| {
                    _mm512_maskz_loadu_ps(mask[v], src.wrapping_add(16 * v))
                });
                for (i, row) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(*w.add(i));
                    for v in 0..NV {
                        row[v] = _mm512_fmadd_ps(a, b[v], row[v]);
                    }
                }
                src = src.wrapping_add(ctx.plane);
                w = w.add(ctx.taps * MR);
            }
        }
        for (i, row) in acc.iter().enumerate().take(ctx.channels) {
            let dst = ctx.out.add(i * out_h * out_w + oh * out_w + ow0);
            for v in 0..NV {
                _mm512_mask_storeu_ps(dst.wrapping_add(16 * v), store[v], row[v]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::Conv2dParams;

    /// Naive convolution in f64 of one image.
    fn naive(g: &Conv2dGeometry, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f64> {
        let [in_h, in_w] = g.in_size;
        let [out_h, out_w] = g.out_size;
        let [kh_n, kw_n] = g.kernel;
        let [dh, dw] = g.params.dilation;
        let [pt, _, pl, _] = g.params.padding;
        let (ig, og) = (g.in_channels_per_group(), g.out_channels_per_group());
        let mut out = vec![0.0f64; g.out_channels * out_h * out_w];
        for co in 0..g.out_channels {
            let group = co / og;
            for oh in 0..out_h {
                for ow in 0..out_w {
                    let mut acc = b[co] as f64;
                    for ci in 0..ig {
                        for kh in 0..kh_n {
                            for kw in 0..kw_n {
                                let ih = (oh + kh * dh) as isize - pt as isize;
                                let iw = (ow + kw * dw) as isize - pl as isize;
                                if ih < 0 || iw < 0 || ih >= in_h as isize || iw >= in_w as isize {
                                    continue;
                                }
                                let xv = x
                                    [((group * ig + ci) * in_h + ih as usize) * in_w + iw as usize];
                                let wv = w[((co * ig + ci) * kh_n + kh) * kw_n + kw];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    out[(co * out_h + oh) * out_w + ow] = acc;
                }
            }
        }
        out
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The direct kernel against the f64 naive convolution: padding on all sides, dilation,
    /// groups, widths that end mid-vector, a channel count that is not a multiple of MR.
    #[test]
    fn direct_matches_naive_f64() {
        if !usable_on_this_cpu() {
            eprintln!("skipped: no AVX-512F");
            return;
        }
        let cases = [
            // (cin, cout, in [h, w], kernel, padding [t, b, l, r], dilation, groups)
            (16, 16, [9, 40], [3, 3], [1, 1, 1, 1], [1, 1], 1),
            (32, 16, [34, 34], [3, 3], [0, 0, 0, 0], [1, 1], 1),
            (5, 11, [7, 53], [3, 3], [2, 2, 2, 2], [2, 2], 1),
            (8, 12, [6, 19], [3, 1], [2, 2, 0, 0], [2, 1], 1),
            (8, 8, [5, 37], [1, 3], [0, 0, 4, 4], [1, 2], 2),
            (16, 16, [4, 20], [3, 3], [2, 2, 2, 2], [1, 1], 1),
            // More input channels than one chunk, the last chunk partial.
            (70, 9, [5, 50], [3, 3], [1, 1, 1, 1], [1, 1], 1),
            // VALID convolutions run with their rows laid end to end: dilation, groups, odd
            // widths, asymmetric kernels, and rows longer than one band of the test pack.
            (8, 12, [13, 41], [3, 3], [0, 0, 0, 0], [2, 2], 2),
            (6, 9, [9, 23], [1, 3], [0, 0, 0, 0], [1, 3], 1),
            (16, 8, [40, 17], [3, 1], [0, 0, 0, 0], [1, 1], 1),
            (12, 16, [7, 19], [1, 1], [0, 0, 0, 0], [1, 1], 1),
        ];
        for (i, &(cin, cout, in_size, kernel, padding, dilation, groups)) in
            cases.iter().enumerate()
        {
            let out_size = [
                in_size[0] + padding[0] + padding[1] - dilation[0] * (kernel[0] - 1),
                in_size[1] + padding[2] + padding[3] - dilation[1] * (kernel[1] - 1),
            ];
            let g = Conv2dGeometry {
                batch: 1,
                in_channels: cin,
                in_size,
                out_channels: cout,
                kernel,
                out_size,
                params: Conv2dParams {
                    stride: [1, 1],
                    padding,
                    dilation,
                    groups,
                },
            };
            assert!(usable(&g), "case {i} should take the direct kernel");
            let x = values(g.input_len(), 1 + i as u64);
            let w = values(g.weight_len(), 100 + i as u64);
            let b = values(cout, 200 + i as u64);
            let packed = pack_weight(&g, &w);
            let mut out = vec![f32::NAN; g.output_len()];
            for group in 0..groups {
                for block in 0..blocks_per_group(&g) {
                    for rows in row_bands(out_size[0], 3) {
                        let task = BlockTask {
                            group,
                            block,
                            rows,
                            x: &x,
                            packed: &packed,
                            bias: Some(&b),
                        };
                        // SAFETY: `usable` holds; tasks are disjoint and run one at a time.
                        unsafe { task.run(&g, out.as_mut_ptr()) };
                    }
                }
            }
            let expected = naive(&g, &x, &w, &b);
            let depth = g.col_rows() as f64;
            for (j, (&got, &want)) in out.iter().zip(&expected).enumerate() {
                // f32 accumulation of `depth` terms of magnitude ≤ 1.
                let tol = 4.0 * depth * f32::EPSILON as f64;
                assert!(
                    (got as f64 - want).abs() <= tol,
                    "case {i}: element {j} is {got}, expected {want}"
                );
            }
            // Weight gradient for ∂y = dy over two images, against f64 sums.
            let g2 = Conv2dGeometry { batch: 2, ..g };
            let x2 = values(g2.input_len(), 300 + i as u64);
            let dy = values(g2.output_len(), 400 + i as u64);
            let got = weight_backward(&g2, &dy, &x2);
            let expected = naive_weight_grad(&g2, &dy, &x2);
            let positions = (2 * out_size[0] * out_size[1]) as f64;
            for (j, (&got, &want)) in got.iter().zip(&expected).enumerate() {
                let tol = 4.0 * positions.sqrt() * positions.log2() * f32::EPSILON as f64;
                assert!(
                    (got as f64 - want).abs() <= tol,
                    "case {i}: weight gradient {j} is {got}, expected {want}"
                );
            }
        }
    }

    /// `∂W[co, ci, kh, kw] = Σ_images,positions ∂y[co, p] · x[ci, p + tap]` in f64.
    fn naive_weight_grad(g: &Conv2dGeometry, dy: &[f32], x: &[f32]) -> Vec<f64> {
        let [in_h, in_w] = g.in_size;
        let [out_h, out_w] = g.out_size;
        let [kh_n, kw_n] = g.kernel;
        let [dh, dw] = g.params.dilation;
        let [pt, _, pl, _] = g.params.padding;
        let (ig, og) = (g.in_channels_per_group(), g.out_channels_per_group());
        let mut grad = vec![0.0f64; g.weight_len()];
        for image in 0..g.batch {
            for co in 0..g.out_channels {
                let group = co / og;
                for ci in 0..ig {
                    for kh in 0..kh_n {
                        for kw in 0..kw_n {
                            let mut acc = 0.0f64;
                            for oh in 0..out_h {
                                for ow in 0..out_w {
                                    let ih = (oh + kh * dh) as isize - pt as isize;
                                    let iw = (ow + kw * dw) as isize - pl as isize;
                                    if ih < 0
                                        || iw < 0
                                        || ih >= in_h as isize
                                        || iw >= in_w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[(((image * g.in_channels) + group * ig + ci)
                                        * in_h
                                        + ih as usize)
                                        * in_w
                                        + iw as usize];
                                    let d = dy
                                        [((image * g.out_channels + co) * out_h + oh) * out_w + ow];
                                    acc += xv as f64 * d as f64;
                                }
                            }
                            grad[((co * ig + ci) * kh_n + kh) * kw_n + kw] += acc;
                        }
                    }
                }
            }
        }
        grad
    }

    fn usable_on_this_cpu() -> bool {
        crate::backend::cpu::avx512_kernels()
    }
}
