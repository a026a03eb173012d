//! The forward register tiles of the direct convolution (see [`super::BlockTask`]), written
//! once over [`Simd`] and instantiated for AVX2+FMA and AVX-512F.

use super::simd::{array, Avx2, Avx512, Simd};
use super::{BlockTask, MAX_TAPS, MR};
use crate::ops::conv::Conv2dGeometry;
use std::ops::Range;

/// [`block`] on AVX2+FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn block_avx2(g: &Conv2dGeometry, task: &BlockTask, out: *mut f32) {
    block::<Avx2>(g, task, out)
}

/// [`block`] on AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn block_avx512(g: &Conv2dGeometry, task: &BlockTask, out: *mut f32) {
    block::<Avx512>(g, task, out)
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

#[inline(always)]
unsafe fn block<S: Simd>(g: &Conv2dGeometry, task: &BlockTask, out: *mut f32) {
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
        return flat_block::<S>(g, task, ctx, out);
    }
    // Input channels in chunks, so one chunk's input rows and weights stay in L1 while the
    // tiles sweep the band.
    for first in (0..in_group).step_by(S::CHANNEL_CHUNK) {
        let chunk = first..(first + S::CHANNEL_CHUNK).min(in_group);
        for oh in task.rows.clone() {
            row_tiles::<S>(&ctx, oh, out_w, &chunk);
        }
    }
}

/// Output row `oh`'s `width` columns in tiles of up to [`Simd::TILE_VECTORS`] vectors, fewer
/// for the row's tail (less wasted work on narrow rows).
#[inline(always)]
unsafe fn row_tiles<S: Simd>(ctx: &TileContext, oh: usize, width: usize, chunk: &Range<usize>) {
    let lanes = S::LANES;
    let mut ow0 = 0;
    while ow0 < width {
        match width - ow0 {
            left if S::TILE_VECTORS >= 3 && left > 2 * lanes => {
                channel_tiles::<S, 3>(ctx, oh, ow0, chunk)
            }
            left if S::TILE_VECTORS >= 2 && left > lanes => {
                channel_tiles::<S, 2>(ctx, oh, ow0, chunk)
            }
            _ => channel_tiles::<S, 1>(ctx, oh, ow0, chunk),
        }
        ow0 += S::TILE_VECTORS * lanes;
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
#[inline(always)]
unsafe fn flat_block<S: Simd>(
    g: &Conv2dGeometry,
    task: &BlockTask,
    ctx: TileContext,
    out: *mut f32,
) {
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
    for first in (0..g.in_channels_per_group()).step_by(S::CHANNEL_CHUNK) {
        let chunk = first..(first + S::CHANNEL_CHUNK).min(g.in_channels_per_group());
        row_tiles::<S>(&ctx, 0, len, &chunk);
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

/// The block's `MR` channels at row `oh`, columns from `ow0`, in tiles of
/// [`Simd::TILE_CHANNELS`] channels.
#[inline(always)]
unsafe fn channel_tiles<S: Simd, const NV: usize>(
    ctx: &TileContext,
    oh: usize,
    ow0: usize,
    chunk: &Range<usize>,
) {
    for c0 in (0..ctx.channels).step_by(S::TILE_CHANNELS) {
        if S::TILE_CHANNELS == MR {
            tile::<S, NV, MR>(ctx, oh, ow0, c0, chunk.clone());
        } else {
            tile::<S, NV, { MR / 2 }>(ctx, oh, ow0, c0, chunk.clone());
        }
    }
}

/// The `CH × LANES·NV` output tile of channels `c0..c0 + CH` of the block at row `oh`, columns
/// from `ow0`.
#[inline(always)]
unsafe fn tile<S: Simd, const NV: usize, const CH: usize>(
    ctx: &TileContext,
    oh: usize,
    ow0: usize,
    c0: usize,
    input_channels: Range<usize>,
) {
    let [in_h, in_w] = ctx.in_size;
    let [out_h, out_w] = ctx.out_size;
    let [kh_n, kw_n] = ctx.kernel;
    let [dh, dw] = ctx.dilation;
    let [pad_top, pad_left] = ctx.pad;
    let lanes = S::LANES;
    let store: [S::M; NV] = array(|v| S::mask((ow0 + lanes * v) as isize, out_w));
    // The taps that fall on input rows, with their offsets and column masks.
    let mut offsets = [0isize; MAX_TAPS];
    let mut steps = [0usize; MAX_TAPS];
    let mut masks = [[S::none(); NV]; MAX_TAPS];
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
            masks[live] = array(|v| S::and(S::mask(c0 + (lanes * v) as isize, limit), store[v]));
            live += 1;
        }
    }
    // The first chunk of input channels starts from the bias, later ones from the partial
    // sums already stored (an exact f32 round trip: the sums are as if never interrupted).
    let mut acc = [[S::zero(); NV]; CH];
    for (i, row) in acc.iter_mut().enumerate() {
        let i = c0 + i;
        *row = if input_channels.start == 0 {
            [S::splat(ctx.bias[i]); NV]
        } else if i < ctx.channels {
            let dst = ctx.out.add(i * out_h * out_w + oh * out_w + ow0);
            array(|v| S::load_masked(store[v], dst.wrapping_add(lanes * v)))
        } else {
            [S::zero(); NV]
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
            .add(input_channels.start * ctx.taps * MR + steps[j] + c0);
        // Whole vectors inside the row load unmasked (no mask registers in the loop).
        if mask.iter().all(|&m| S::is_full(m)) {
            for _ in input_channels.clone() {
                let b: [S::V; NV] = array(|v| S::load(src.add(lanes * v)));
                step::<S, NV, CH>(&mut acc, &b, w);
                src = src.add(ctx.plane);
                w = w.add(ctx.taps * MR);
            }
        } else {
            for _ in input_channels.clone() {
                let b: [S::V; NV] = array(|v| S::load_masked(mask[v], src.wrapping_add(lanes * v)));
                step::<S, NV, CH>(&mut acc, &b, w);
                src = src.wrapping_add(ctx.plane);
                w = w.add(ctx.taps * MR);
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(ctx.channels - c0) {
        let dst = ctx.out.add((c0 + i) * out_h * out_w + oh * out_w + ow0);
        for v in 0..NV {
            S::store_masked(dst.wrapping_add(lanes * v), store[v], row[v]);
        }
    }
}

/// `acc[i] += w[i] · b` for the tile's channels: one input channel of one tap.
#[inline(always)]
unsafe fn step<S: Simd, const NV: usize, const CH: usize>(
    acc: &mut [[S::V; NV]; CH],
    b: &[S::V; NV],
    w: *const f32,
) {
    for (i, row) in acc.iter_mut().enumerate() {
        let a = S::splat(*w.add(i));
        for v in 0..NV {
            row[v] = S::fmadd(a, b[v], row[v]);
        }
    }
}
