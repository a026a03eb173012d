//! The AVX-512F weight-gradient tiles of the direct convolution (see [`super::GradTask`]).

use super::{lane_mask, GradTask, GRAD_BAND_ROWS, GRAD_NR, GRAD_PACK_FLOATS, MR};
use crate::ops::conv::Conv2dGeometry;
use std::arch::x86_64::*;
use std::ops::Range;

/// Edge vectors per side whose masks the weight-gradient tiles compute once.
const EDGES: usize = 2;

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
