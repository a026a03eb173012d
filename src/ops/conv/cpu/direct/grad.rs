//! The weight-gradient tiles of the direct convolution (see [`super::GradTask`]), written once
//! over [`Simd`] and over the tile's width `NR` (`(ci, tap)` columns), and instantiated for
//! AVX2+FMA (`NR` = [`GRAD_NR_AVX2`]) and AVX-512F (`NR` = [`GRAD_NR_AVX512`]).

use super::simd::{array, Avx2, Avx512, Simd};
use super::{GradTask, GRAD_BAND_ROWS, GRAD_PACK_FLOATS, MR};
use crate::ops::conv::Conv2dGeometry;
use std::ops::Range;

/// `(ci, tap)` columns per AVX2 tile: `MR × 1` accumulators of 16 registers.
pub(super) const GRAD_NR_AVX2: usize = 1;
/// `(ci, tap)` columns per AVX-512 tile: `MR × 3` accumulators of 32 registers.
pub(super) const GRAD_NR_AVX512: usize = 3;

/// [`grad`] on AVX2+FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn grad_avx2(
    g: &Conv2dGeometry,
    task: &GradTask,
    dy: &[f32],
    x: &[f32],
    scale: f32,
    grad_out: *mut f32,
    buffer: &mut Vec<f32>,
) {
    grad::<Avx2, GRAD_NR_AVX2>(g, task, dy, x, scale, grad_out, buffer)
}

/// [`grad`] on AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn grad_avx512(
    g: &Conv2dGeometry,
    task: &GradTask,
    dy: &[f32],
    x: &[f32],
    scale: f32,
    grad_out: *mut f32,
    buffer: &mut Vec<f32>,
) {
    grad::<Avx512, GRAD_NR_AVX512>(g, task, dy, x, scale, grad_out, buffer)
}

/// Edge vectors per side whose masks the weight-gradient tiles compute once.
const EDGES: usize = 2;

/// See [`GradTask::accumulate`]. Registers hold an `MR × NR` tile of vector partial
/// sums over output columns; each band of rows runs every tile of the task, parking the
/// partial sums in `buffer` between bands; the lanes are summed at the end.
#[inline(always)]
unsafe fn grad<S: Simd, const NR: usize>(
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
    let lanes = S::LANES;
    let tile_floats = MR * NR * lanes;
    let parked_len = task.tiles.len() * tile_floats;
    // Vectors per output row; ∂y of a band is packed as [row][vector][channel][LANES],
    // or for a VALID convolution as [vector][channel][LANES] over the band's rows laid
    // end to end (see `flat_grad_band`).
    let vectors = out_w.div_ceil(lanes);
    let flat = g.params.padding == [0; 4];
    let row_floats = if flat {
        in_w * MR
    } else {
        vectors * MR * lanes
    };
    // Bands as tall as keep ∂y's pack within GRAD_PACK_FLOATS: parking the partial sums
    // between bands costs more than reading the pack from L2 or L3.
    let band_rows = (GRAD_PACK_FLOATS / row_floats).max(GRAD_BAND_ROWS);
    let band_floats = out_h.min(band_rows) * row_floats + MR * lanes;
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
            flat_grad_band::<S, NR>(g, task, dy, x, band, parked_all, dy_pack, first, channels);
            continue;
        }
        for (r, oh) in band.clone().enumerate() {
            for v in 0..vectors {
                let dst = &mut dy_pack[(r * vectors + v) * MR * lanes..][..MR * lanes];
                let (start, len) = (v * lanes, lanes.min(out_w - v * lanes));
                for (i, vector) in dst.chunks_mut(lanes).enumerate() {
                    if i < channels {
                        let at = (first_channel + i) * out_pixels + oh * out_w + start;
                        vector[..len].copy_from_slice(&dy[at..at + len]);
                        vector[len..].fill(0.0);
                    } else {
                        vector.fill(0.0);
                    }
                }
            }
        }
        for (slot, tile) in task.tiles.clone().enumerate() {
            let columns = tile_columns::<NR>(g, tile);
            let parked = parked_all.as_mut_ptr().add(slot * tile_floats);
            let mut acc = load_tile::<S, NR>(parked);
            // Per (ci, tap) column: its input row offset, first column, and plane start.
            let mut row_shift = [0isize; NR];
            let mut col0 = [0isize; NR];
            let mut base = [0isize; NR];
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
            let interior = lead.div_ceil(lanes)..(out_w.min(in_w.saturating_sub(reach)) / lanes);
            // The column masks of the vectors outside `interior` (the first EDGES before
            // it and after it), for rows whose input rows all lie in the map.
            let edge_masks = |v: usize| -> [S::M; NR] {
                let m = S::mask((v * lanes) as isize, out_w);
                array(|c| S::and(S::mask((v * lanes) as isize + col0[c], in_w), m))
            };
            let head: [[S::M; NR]; EDGES] = array(edge_masks);
            let tail: [[S::M; NR]; EDGES] = array(|i| edge_masks(interior.end + i));
            for (r, oh) in band.clone().enumerate() {
                let mut src = [x; NR];
                let mut row_ok = [true; NR];
                for c in 0..NR {
                    let ih = oh as isize + row_shift[c];
                    row_ok[c] = ih >= 0 && ih < in_h as isize;
                    src[c] = x.wrapping_offset(base[c] + ih * in_w as isize);
                }
                let fast = if row_ok.iter().all(|&ok| ok) {
                    interior.clone()
                } else {
                    0..0
                };
                let dy_row = dy_pack.as_ptr().add(r * vectors * MR * lanes);
                for v in 0..vectors {
                    let ow0 = v * lanes;
                    let edge = if fast.is_empty() {
                        None
                    } else if v < EDGES.min(interior.start) {
                        Some(head[v])
                    } else if v >= interior.end && v - interior.end < EDGES {
                        Some(tail[v - interior.end])
                    } else {
                        None
                    };
                    let xv: [S::V; NR] = if fast.contains(&v) {
                        array(|c| S::load(src[c].wrapping_add(ow0)))
                    } else if let Some(masks) = edge {
                        array(|c| S::load_masked(masks[c], src[c].wrapping_add(ow0)))
                    } else {
                        let m = S::mask(ow0 as isize, out_w);
                        array(|c| {
                            let mask = if row_ok[c] {
                                S::and(S::mask(ow0 as isize + col0[c], in_w), m)
                            } else {
                                S::none()
                            };
                            S::load_masked(mask, src[c].wrapping_add(ow0))
                        })
                    };
                    accumulate_step::<S, NR>(&mut acc, dy_row.add(v * MR * lanes), &xv);
                }
            }
            store_tile::<S, NR>(parked, &acc);
        }
    }
    for (slot, tile) in task.tiles.clone().enumerate() {
        let parked = &parked_all[slot * tile_floats..][..tile_floats];
        for i in 0..channels {
            for c in 0..NR {
                let step = tile * NR + c;
                if step >= depth {
                    continue;
                }
                let sum: f32 = parked[(i * NR + c) * lanes..][..lanes].iter().sum();
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
#[inline(always)]
unsafe fn flat_grad_band<S: Simd, const NR: usize>(
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
    let lanes = S::LANES;
    let vectors = len.div_ceil(lanes);
    // Position q of channel i goes to lane q % LANES of pack[q / LANES][i]. A vector spans at
    // most two rows (in_w ≥ 16 ≥ LANES): the lanes of row r, then those of row r + 1 past the gap
    // of in_w − out_w zeros; absent channels and positions past the end are zeros.
    for i in 0..MR {
        let source = (i < channels).then(|| {
            dy[(first_channel + i) * out_h * out_w..]
                .as_ptr()
                .add(r0 * out_w)
        });
        let (mut r, mut q0) = (0usize, 0usize);
        for v in 0..vectors {
            let q = v * lanes;
            while q >= q0 + in_w {
                r += 1;
                q0 += in_w;
            }
            let vector = match source {
                None => S::zero(),
                Some(rows_start) => {
                    let at = |row: usize, from: isize| {
                        (
                            S::mask(from, out_w),
                            rows_start.wrapping_offset(row as isize * out_w as isize + from),
                        )
                    };
                    let (mask, ptr) = at(r, q as isize - q0 as isize);
                    let mut vector = S::load_masked(mask, ptr);
                    if r + 1 < rows {
                        let (mask, ptr) = at(r + 1, q as isize - (q0 + in_w) as isize);
                        vector = S::load_merge(vector, mask, ptr);
                    }
                    vector
                }
            };
            S::store(dy_pack.as_mut_ptr().add((v * MR + i) * lanes), vector);
        }
    }
    let pack = &dy_pack[..vectors * MR * lanes];
    let tile_floats = MR * NR * lanes;
    for (slot, tile) in task.tiles.clone().enumerate() {
        let columns = tile_columns::<NR>(g, tile);
        let parked = parked_all.as_mut_ptr().add(slot * tile_floats);
        let mut acc = load_tile::<S, NR>(parked);
        // Per column: where its long row starts, and how many floats of the plane follow.
        let mut src = [x; NR];
        let mut limit = [0usize; NR];
        for (c, &[ci, kh, kw]) in columns.iter().enumerate() {
            let start = (r0 + kh * dh) * in_w + kw * dw;
            src[c] = x.add(ci * plane + start);
            limit[c] = plane - start;
        }
        // Vectors wholly inside every column's plane load unmasked.
        let whole = (limit.iter().min().copied().unwrap_or(0) / lanes).min(vectors);
        for v in 0..vectors {
            let q = v * lanes;
            let xv: [S::V; NR] = if v < whole {
                array(|c| S::load(src[c].add(q)))
            } else {
                array(|c| {
                    let mask = S::mask(q as isize, limit[c]);
                    S::load_masked(mask, src[c].wrapping_add(q))
                })
            };
            accumulate_step::<S, NR>(&mut acc, pack.as_ptr().add(v * MR * lanes), &xv);
        }
        store_tile::<S, NR>(parked, &acc);
    }
}

/// The `[ci, kh, kw]` of weight-gradient tile `tile`'s [`NR`] `(ci, tap)` columns;
/// past the depth they repeat the last one.
fn tile_columns<const NR: usize>(g: &Conv2dGeometry, tile: usize) -> [[usize; 3]; NR] {
    let (depth, taps, kw_n) = (g.col_rows(), g.taps(), g.kernel[1]);
    array(|c| {
        let step = (tile * NR + c).min(depth - 1);
        let (ci, tap) = (step / taps, step % taps);
        [ci, tap / kw_n, tap % kw_n]
    })
}

/// A weight-gradient tile's partial sums (`[MR][NR]` vectors parked at `parked`).
#[inline(always)]
unsafe fn load_tile<S: Simd, const NR: usize>(parked: *const f32) -> [[S::V; NR]; MR] {
    array(|i| array(|c| S::load(parked.add((i * NR + c) * S::LANES))))
}

/// Parks a weight-gradient tile's partial sums at `parked` (see [`load_tile`]).
#[inline(always)]
unsafe fn store_tile<S: Simd, const NR: usize>(parked: *mut f32, acc: &[[S::V; NR]; MR]) {
    for (i, row) in acc.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            S::store(parked.add((i * NR + c) * S::LANES), *v);
        }
    }
}

/// `acc[i][c] += ∂y[i] · x[c]` for one vector of positions: `dy` holds the `MR` channels'
/// packed lanes, `xv` the tile's columns.
#[inline(always)]
unsafe fn accumulate_step<S: Simd, const NR: usize>(
    acc: &mut [[S::V; NR]; MR],
    dy: *const f32,
    xv: &[S::V; NR],
) {
    for (i, row) in acc.iter_mut().enumerate() {
        let dv = S::load(dy.add(i * S::LANES));
        for (c, acc) in row.iter_mut().enumerate() {
            *acc = S::fmadd(dv, xv[c], *acc);
        }
    }
}
