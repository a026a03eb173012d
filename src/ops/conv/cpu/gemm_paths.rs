//! GEMM-based conv kernels: im2col over bounded tiles of output positions for general
//! kernels, and direct GEMMs for pointwise (1×1, stride 1, unpadded) convolutions whose input
//! already is the column matrix.
//!
//! Per image `n` and group `g` (weights `W_g [Cout/g, K]`, `K = Cin/g·kh·kw`, columns
//! `col [K, positions]`): forward `out = W_g · col`, input gradient `col = W_gᵀ · ∂out` then
//! col2im, weight gradient `∂W_g += ∂out · colᵀ`.

use super::im2col::{col2im_channel, im2col_channel};
use crate::backend::cpu::gemm::{gemm, gemm_parallel, Operand};
use crate::ops::conv::{Conv2dGeometry, Conv2dParams};
use rayon::prelude::*;
use std::ops::Range;

/// Column-buffer budget per task in elements (1 MiB of f32): a tile of output positions has
/// at most this many im2col entries, whatever the image size.
pub(crate) const COL_TILE_ELEMS: usize = 1 << 18;

/// Fewest output positions per tile (narrower GEMMs waste their packing).
const MIN_TILE_POSITIONS: usize = 64;

/// Largest number of per-chunk weight-gradient partials (and their memory, in elements).
const MAX_WEIGHT_PARTIALS: usize = 32;
const WEIGHT_PARTIALS_ELEMS: usize = 1 << 24;

/// How one image's flattened output positions are cut into tiles of `tile_len` positions.
#[derive(Clone, Copy, Debug)]
struct TilePlan {
    positions: usize,
    tile_len: usize,
    tiles: usize,
}

impl TilePlan {
    /// Tiles whose column buffer stays within `col_budget` elements; with `min_tasks`, also
    /// small enough that `batch · groups · tiles` reaches it.
    fn new(geometry: &Conv2dGeometry, col_budget: usize, min_tasks: usize) -> Self {
        let positions = geometry.out_pixels();
        let by_memory = (col_budget / geometry.col_rows().max(1)).max(MIN_TILE_POSITIONS);
        let images = (geometry.batch * geometry.params.groups).max(1);
        let per_image_tasks = min_tasks.div_ceil(images).max(1);
        let by_parallelism = positions.div_ceil(per_image_tasks).max(MIN_TILE_POSITIONS);
        let tile_len = by_memory.min(by_parallelism).min(positions).max(1);
        TilePlan {
            positions,
            tile_len,
            tiles: positions.div_ceil(tile_len),
        }
    }

    fn range(&self, tile: usize) -> Range<usize> {
        tile * self.tile_len..((tile + 1) * self.tile_len).min(self.positions)
    }
}

/// Reusable per-worker buffers.
#[derive(Default)]
struct Scratch {
    col: Vec<f32>,
    block: Vec<f32>,
}

/// `buffer[..len]`, grown as needed.
pub(crate) fn scratch(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// Columns `range` of the row-major `[rows, row_len]` matrix `src`, as a contiguous
/// `[rows, range.len()]` matrix: `src` itself when the range is every column.
fn column_block<'a>(
    src: &'a [f32],
    row_len: usize,
    range: Range<usize>,
    buffer: &'a mut Vec<f32>,
) -> &'a [f32] {
    if range.len() == row_len {
        return src;
    }
    let rows = src.len() / row_len.max(1);
    let block = scratch(buffer, rows * range.len());
    for (dst, row) in block.chunks_mut(range.len()).zip(src.chunks(row_len)) {
        dst.copy_from_slice(&row[range.clone()]);
    }
    block
}

/// The im2col matrix `[Cin/g·taps, range.len()]` of one image's group of input channels.
fn im2col(geometry: &Conv2dGeometry, x_group: &[f32], range: Range<usize>, col: &mut [f32]) {
    if geometry.in_pixels() == 0 {
        col.fill(0.0); // an empty image: every tap reads padding
        return;
    }
    let rows_per_channel = geometry.taps() * range.len();
    for (plane, col_rows) in x_group
        .chunks(geometry.in_pixels().max(1))
        .zip(col.chunks_mut(rows_per_channel.max(1)))
    {
        im2col_channel(geometry, plane, range.clone(), col_rows);
    }
}

/// Forward of a general convolution: each task (image, group, tile) builds its im2col tile,
/// multiplies by `W_g` into a scratch block and writes the block (plus bias) into its own
/// pieces of the output rows.
pub(in crate::ops::conv) fn forward(
    geometry: &Conv2dGeometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    col_budget: usize,
) -> Vec<f32> {
    let plan = TilePlan::new(geometry, col_budget, 4 * rayon::current_num_threads());
    let (groups, k) = (geometry.params.groups, geometry.col_rows());
    let (in_group, out_group) = (
        geometry.in_channels_per_group(),
        geometry.out_channels_per_group(),
    );
    let (in_pixels, out_pixels) = (geometry.in_pixels(), geometry.out_pixels());
    let mut out = crate::backend::cpu::buffer_cache::uninit(geometry.output_len());

    // Safe disjoint views: for every (image·group, tile), its slice of each output row.
    let mut tasks: Vec<(usize, usize, Vec<&mut [f32]>)> = Vec::new();
    for (image_group, rows) in out.chunks_mut((out_group * out_pixels).max(1)).enumerate() {
        let first = tasks.len();
        tasks.extend((0..plan.tiles).map(|tile| (image_group, tile, Vec::new())));
        for row in rows.chunks_mut(out_pixels.max(1)) {
            for (tile, piece) in row.chunks_mut(plan.tile_len).enumerate() {
                tasks[first + tile].2.push(piece);
            }
        }
    }

    tasks.into_par_iter().for_each_init(
        Scratch::default,
        |buffers, (image_group, tile, mut rows)| {
            let group = image_group % groups;
            let range = plan.range(tile);
            let cols = range.len();
            let x_group = &x[image_group * in_group * in_pixels..][..in_group * in_pixels];
            let col = scratch(&mut buffers.col, k * cols);
            im2col(geometry, x_group, range, col);
            let w_group = &weight[group * out_group * k..][..out_group * k];
            let block = scratch(&mut buffers.block, out_group * cols);
            gemm(
                out_group,
                cols,
                k,
                Operand::plain(w_group),
                Operand::plain(col),
                block,
                0.0,
            );
            for (c, (row, values)) in rows.iter_mut().zip(block.chunks(cols)).enumerate() {
                let b = bias.map_or(0.0, |b| b[group * out_group + c]);
                for (o, &v) in row.iter_mut().zip(values) {
                    *o = v + b;
                }
            }
        },
    );
    out
}

/// Input gradient of a general convolution: per (image, group), tile by tile in order,
/// `col = W_gᵀ · ∂out[:, tile]` (parallel GEMM) then col2im in parallel over input channels.
/// Each (image, group) owns its slice of `∂x`, so the scatter-adds never race.
pub(in crate::ops::conv) fn input_backward(
    geometry: &Conv2dGeometry,
    grad_out: &[f32],
    weight: &[f32],
    col_budget: usize,
) -> Vec<f32> {
    let plan = TilePlan::new(geometry, col_budget, 1);
    let (groups, k, taps) = (geometry.params.groups, geometry.col_rows(), geometry.taps());
    let (in_group, out_group) = (
        geometry.in_channels_per_group(),
        geometry.out_channels_per_group(),
    );
    let (in_pixels, out_pixels) = (geometry.in_pixels(), geometry.out_pixels());
    let mut grad_x = crate::backend::cpu::buffer_cache::zeroed(geometry.input_len());
    grad_x
        .par_chunks_mut((in_group * in_pixels).max(1))
        .enumerate()
        .for_each_init(Scratch::default, |buffers, (image_group, grad_group)| {
            let group = image_group % groups;
            let g_group =
                &grad_out[image_group * out_group * out_pixels..][..out_group * out_pixels];
            let w_group = &weight[group * out_group * k..][..out_group * k];
            for tile in 0..plan.tiles {
                let range = plan.range(tile);
                let cols = range.len();
                let g_block = column_block(g_group, out_pixels, range.clone(), &mut buffers.block);
                let col = scratch(&mut buffers.col, k * cols);
                gemm_parallel(
                    k,
                    cols,
                    out_group,
                    Operand::transposed(w_group),
                    Operand::plain(g_block),
                    col,
                    0.0,
                );
                grad_group
                    .par_chunks_mut(in_pixels.max(1))
                    .zip(col.par_chunks((taps * cols).max(1)))
                    .for_each(|(plane, col_rows)| {
                        col2im_channel(geometry, col_rows, range.clone(), plane)
                    });
            }
        });
    grad_x
}

/// Input gradient of a stride-1 convolution as a *forward* convolution (no col2im scatter):
/// `∂x = ∂out ⋆ W'` with `W'[c, o, tap] = W[o, c, taps − 1 − tap]` per group (kernel flipped,
/// channel roles swapped) and padding `dilation·(k − 1) − padding` on the leading sides, the
/// rest on the trailing ones. `None` when that padding would be negative.
pub(in crate::ops::conv) fn stride1_input_backward(
    geometry: &Conv2dGeometry,
    grad_out: &[f32],
    weight: &[f32],
    col_budget: usize,
) -> Option<Vec<f32>> {
    let p = geometry.params;
    if p.stride != [1, 1] {
        return None;
    }
    let signed = |v: usize| v as isize;
    let [pad_top, _, pad_left, _] = p.padding;
    let reach = [
        signed(p.dilation[0] * (geometry.kernel[0] - 1)),
        signed(p.dilation[1] * (geometry.kernel[1] - 1)),
    ];
    // Leading: dilation·(k−1) − padding; trailing: whatever makes the output `in_size`.
    let padding = [
        reach[0] - signed(pad_top),
        signed(geometry.in_size[0] + pad_top) - signed(geometry.out_size[0]),
        reach[1] - signed(pad_left),
        signed(geometry.in_size[1] + pad_left) - signed(geometry.out_size[1]),
    ];
    if padding.iter().any(|&v| v < 0) {
        return None;
    }
    let flipped = flipped_weight(geometry, weight);
    let adjoint = Conv2dGeometry {
        batch: geometry.batch,
        in_channels: geometry.out_channels,
        in_size: geometry.out_size,
        out_channels: geometry.in_channels,
        kernel: geometry.kernel,
        out_size: geometry.in_size,
        params: Conv2dParams {
            padding: padding.map(|v| v as usize),
            ..p
        },
    };
    let grad_x = if super::direct::usable(&adjoint) {
        super::direct::forward(&adjoint, grad_out, &flipped, None)
    } else {
        forward(&adjoint, grad_out, &flipped, None, col_budget)
    };
    crate::backend::cpu::buffer_cache::recycle(flipped);
    Some(grad_x)
}

/// The weight of the adjoint convolution of a stride-1 conv: `W'[g·Cin/g + c, o, tap] =
/// W[g·Cout/g + o, c, taps − 1 − tap]` (kernel flipped, channel roles swapped within each group).
pub(crate) fn flipped_weight(geometry: &Conv2dGeometry, weight: &[f32]) -> Vec<f32> {
    let mut flipped = crate::backend::cpu::buffer_cache::uninit(weight.len());
    flipped_weight_into(geometry, weight, &mut flipped);
    flipped
}

/// [`flipped_weight`] into `flipped` (as long as `weight`, every element written).
pub(crate) fn flipped_weight_into(geometry: &Conv2dGeometry, weight: &[f32], flipped: &mut [f32]) {
    let (in_group, out_group, taps) = (
        geometry.in_channels_per_group(),
        geometry.out_channels_per_group(),
        geometry.taps(),
    );
    for (row, flipped_row) in flipped.chunks_mut((out_group * taps).max(1)).enumerate() {
        let (group, c) = (row / in_group, row % in_group);
        for (o, flipped_taps) in flipped_row.chunks_mut(taps).enumerate() {
            let source = &weight[((group * out_group + o) * in_group + c) * taps..][..taps];
            for (f, &w) in flipped_taps.iter_mut().zip(source.iter().rev()) {
                *f = w;
            }
        }
    }
}

/// Weight gradient of a general convolution: the (image, tile) items are cut into a fixed
/// number of chunks; each chunk accumulates `∂out[:, tile] · colᵀ` into its own partial
/// gradient in order, and the partials are summed in order (deterministic).
pub(in crate::ops::conv) fn weight_backward(
    geometry: &Conv2dGeometry,
    grad_out: &[f32],
    x: &[f32],
    col_budget: usize,
) -> Vec<f32> {
    let threads = rayon::current_num_threads();
    let plan = TilePlan::new(geometry, col_budget, 2 * threads);
    let (groups, k) = (geometry.params.groups, geometry.col_rows());
    let (in_group, out_group) = (
        geometry.in_channels_per_group(),
        geometry.out_channels_per_group(),
    );
    let (in_pixels, out_pixels) = (geometry.in_pixels(), geometry.out_pixels());
    let weight_len = geometry.weight_len();
    let items = geometry.batch * plan.tiles;
    let memory_cap = (WEIGHT_PARTIALS_ELEMS / weight_len.max(1)).clamp(1, MAX_WEIGHT_PARTIALS);
    let chunks = memory_cap.max(threads).min(items).max(1);
    let per_chunk = items.div_ceil(chunks).max(1);

    let partials: Vec<Vec<f32>> = (0..items.div_ceil(per_chunk))
        .into_par_iter()
        .map(|chunk| {
            let mut partial = crate::backend::cpu::buffer_cache::zeroed(weight_len);
            let mut buffers = Scratch::default();
            for item in chunk * per_chunk..((chunk + 1) * per_chunk).min(items) {
                let (image, tile) = (item / plan.tiles, item % plan.tiles);
                let range = plan.range(tile);
                let cols = range.len();
                for group in 0..groups {
                    let image_group = image * groups + group;
                    let x_group = &x[image_group * in_group * in_pixels..][..in_group * in_pixels];
                    let col = scratch(&mut buffers.col, k * cols);
                    im2col(geometry, x_group, range.clone(), col);
                    let g_group =
                        &grad_out[image_group * out_group * out_pixels..][..out_group * out_pixels];
                    let g_block =
                        column_block(g_group, out_pixels, range.clone(), &mut buffers.block);
                    gemm(
                        out_group,
                        k,
                        cols,
                        Operand::plain(g_block),
                        Operand::transposed(&buffers.col[..k * cols]),
                        &mut partial[group * out_group * k..][..out_group * k],
                        1.0,
                    );
                }
            }
            partial
        })
        .collect();
    sum_in_order(partials, weight_len)
}

/// `Σ_i partials[i]` elementwise, in index order for every element.
fn sum_in_order(mut partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let Some(mut total) = (!partials.is_empty()).then(|| partials.remove(0)) else {
        return vec![0.0; len];
    };
    total
        .par_chunks_mut(1 << 12)
        .enumerate()
        .for_each(|(i, chunk)| {
            for partial in &partials {
                for (t, p) in chunk.iter_mut().zip(&partial[i << 12..]) {
                    *t += p;
                }
            }
        });
    total
}

/// Forward of a pointwise convolution: `out[n, g] = W_g · x[n, g] (+ bias)` per (image,
/// group), the bias pre-filled and accumulated with `beta = 1`.
pub(in crate::ops::conv) fn pointwise_forward(
    geometry: &Conv2dGeometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (groups, pixels) = (geometry.params.groups, geometry.out_pixels());
    let (in_group, out_group) = (
        geometry.in_channels_per_group(),
        geometry.out_channels_per_group(),
    );
    let mut out = crate::backend::cpu::buffer_cache::uninit(geometry.output_len());
    out.par_chunks_mut((out_group * pixels).max(1))
        .enumerate()
        .for_each(|(image_group, out_group_rows)| {
            let group = image_group % groups;
            if let Some(bias) = bias {
                for (row, &b) in out_group_rows
                    .chunks_mut(pixels.max(1))
                    .zip(&bias[group * out_group..])
                {
                    row.fill(b);
                }
            }
            gemm_parallel(
                out_group,
                pixels,
                in_group,
                Operand::plain(&weight[group * out_group * in_group..][..out_group * in_group]),
                Operand::plain(&x[image_group * in_group * pixels..][..in_group * pixels]),
                out_group_rows,
                if bias.is_some() { 1.0 } else { 0.0 },
            );
        });
    out
}

/// Input gradient of a pointwise convolution: `∂x[n, g] = W_gᵀ · ∂out[n, g]`.
pub(in crate::ops::conv) fn pointwise_input_backward(
    geometry: &Conv2dGeometry,
    grad_out: &[f32],
    weight: &[f32],
) -> Vec<f32> {
    let (groups, pixels) = (geometry.params.groups, geometry.out_pixels());
    let (in_group, out_group) = (
        geometry.in_channels_per_group(),
        geometry.out_channels_per_group(),
    );
    let mut grad_x = crate::backend::cpu::buffer_cache::zeroed(geometry.input_len());
    grad_x
        .par_chunks_mut((in_group * pixels).max(1))
        .enumerate()
        .for_each(|(image_group, grad_group)| {
            let group = image_group % groups;
            gemm_parallel(
                in_group,
                pixels,
                out_group,
                Operand::transposed(
                    &weight[group * out_group * in_group..][..out_group * in_group],
                ),
                Operand::plain(&grad_out[image_group * out_group * pixels..][..out_group * pixels]),
                grad_group,
                0.0,
            );
        });
    grad_x
}

/// Weight gradient of a pointwise convolution: `∂W_g = Σ_n ∂out[n, g] · x[n, g]ᵀ`, images
/// accumulated in order, groups in parallel.
pub(in crate::ops::conv) fn pointwise_weight_backward(
    geometry: &Conv2dGeometry,
    grad_out: &[f32],
    x: &[f32],
) -> Vec<f32> {
    let (groups, pixels) = (geometry.params.groups, geometry.out_pixels());
    let (in_group, out_group) = (
        geometry.in_channels_per_group(),
        geometry.out_channels_per_group(),
    );
    let mut grad_w = crate::backend::cpu::buffer_cache::zeroed(geometry.weight_len());
    grad_w
        .par_chunks_mut((out_group * in_group).max(1))
        .enumerate()
        .for_each(|(group, grad_group)| {
            for image in 0..geometry.batch {
                let image_group = image * groups + group;
                gemm_parallel(
                    out_group,
                    in_group,
                    pixels,
                    Operand::plain(
                        &grad_out[image_group * out_group * pixels..][..out_group * pixels],
                    ),
                    Operand::transposed(&x[image_group * in_group * pixels..][..in_group * pixels]),
                    grad_group,
                    1.0,
                );
            }
        });
    grad_w
}
