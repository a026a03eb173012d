//! The index arithmetic every CPU conv kernel shares: which input pixels each kernel tap reads
//! along an output row ([`for_each_tap_row`]), and im2col / col2im over a range of flattened
//! output positions built on it.

use crate::ops::conv::Conv2dGeometry;
use std::ops::Range;

/// Kernel tap `tap = ki·kw + kj` on output row `oh`: output columns `ow_start..ow_end` read
/// input row `ih` at columns `iw_start + (ow − ow_start)·stride_w`, all inside the image.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TapRow {
    pub tap: usize,
    pub oh: usize,
    pub ih: usize,
    pub ow_start: usize,
    pub ow_end: usize,
    pub iw_start: usize,
}

impl TapRow {
    /// Number of output columns.
    pub fn len(&self) -> usize {
        self.ow_end - self.ow_start
    }
}

/// Output indices `o < out_len` with `0 ≤ o·stride + offset − pad < in_len` (the positions a
/// tap at `offset` sees inside the input).
fn valid_outputs(
    offset: usize,
    pad: usize,
    stride: usize,
    in_len: usize,
    out_len: usize,
) -> Range<usize> {
    let start = pad.saturating_sub(offset).div_ceil(stride);
    let end = (in_len + pad).saturating_sub(offset).div_ceil(stride);
    start.min(out_len)..end.min(out_len).max(start.min(out_len))
}

/// Calls `f` for every kernel tap (outer loop) and output row (inner loop) touching the
/// flattened output positions `positions` (`oh·Wo + ow`), restricted to taps inside the input.
#[inline(always)] // into the SIMD-compiled depthwise plane loops (see `depthwise`)
pub(crate) fn for_each_tap_row(
    geometry: &Conv2dGeometry,
    positions: Range<usize>,
    mut f: impl FnMut(TapRow),
) {
    let out_width = geometry.out_size[1];
    if positions.is_empty() || out_width == 0 {
        return;
    }
    let [kh, kw] = geometry.kernel;
    let [stride_h, stride_w] = geometry.params.stride;
    let [dilation_h, dilation_w] = geometry.params.dilation;
    let [pad_top, _, pad_left, _] = geometry.params.padding;
    let [in_h, in_w] = geometry.in_size;
    let (first_row, last_row) = (positions.start / out_width, (positions.end - 1) / out_width);
    for ki in 0..kh {
        let rows = valid_outputs(
            ki * dilation_h,
            pad_top,
            stride_h,
            in_h,
            geometry.out_size[0],
        );
        let rows = rows.start.max(first_row)..rows.end.min(last_row + 1);
        for kj in 0..kw {
            let columns = valid_outputs(kj * dilation_w, pad_left, stride_w, in_w, out_width);
            for oh in rows.clone() {
                let row_start = if oh == first_row {
                    positions.start % out_width
                } else {
                    0
                };
                let row_end = if oh == last_row {
                    (positions.end - 1) % out_width + 1
                } else {
                    out_width
                };
                let (ow_start, ow_end) = (columns.start.max(row_start), columns.end.min(row_end));
                if ow_start >= ow_end {
                    continue;
                }
                f(TapRow {
                    tap: ki * kw + kj,
                    oh,
                    ih: oh * stride_h + ki * dilation_h - pad_top,
                    ow_start,
                    ow_end,
                    iw_start: ow_start * stride_w + kj * dilation_w - pad_left,
                });
            }
        }
    }
}

/// `f(&mut dst[i·dst_step], src[i·src_step])` for `i < n`; the unit-step case is a plain zip
/// the compiler vectorises.
#[inline(always)]
pub(in crate::ops::conv) fn strided_update(
    dst: &mut [f32],
    dst_step: usize,
    src: &[f32],
    src_step: usize,
    n: usize,
    f: impl Fn(&mut f32, f32),
) {
    if dst_step == 1 && src_step == 1 {
        for (d, &s) in dst[..n].iter_mut().zip(&src[..n]) {
            f(d, s);
        }
    } else {
        for (d, &s) in dst
            .iter_mut()
            .step_by(dst_step)
            .zip(src.iter().step_by(src_step))
            .take(n)
        {
            f(d, s);
        }
    }
}

/// `Σ_i a[i] · b[i·b_step]` for `i < n`.
#[inline(always)]
pub(in crate::ops::conv) fn strided_dot(a: &[f32], b: &[f32], b_step: usize, n: usize) -> f32 {
    if b_step == 1 {
        // 16 running sums, so the loop vectorises (a single f32 sum must stay sequential).
        let (a, b) = (&a[..n], &b[..n]);
        let mut lanes = [0.0f32; 16];
        for (x, y) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
            for l in 0..16 {
                lanes[l] += x[l] * y[l];
            }
        }
        let tail = n - n % 16;
        let rest: f32 = a[tail..].iter().zip(&b[tail..]).map(|(&x, &y)| x * y).sum();
        lanes.iter().sum::<f32>() + rest
    } else {
        a[..n]
            .iter()
            .zip(b.iter().step_by(b_step))
            .map(|(&x, &y)| x * y)
            .sum()
    }
}

/// Fills the im2col rows of one input channel (`taps` rows of `positions.len()` columns):
/// `col[tap, p − start] = plane[input pixel of tap at output position p]`, 0 in the padding.
pub(in crate::ops::conv) fn im2col_channel(
    geometry: &Conv2dGeometry,
    plane: &[f32],
    positions: Range<usize>,
    col: &mut [f32],
) {
    let cols = positions.len();
    let start = positions.start;
    let [out_width, in_width, stride_w] = [
        geometry.out_size[1],
        geometry.in_size[1],
        geometry.params.stride[1],
    ];
    if geometry.params.padding != [0; 4] {
        col.fill(0.0);
    }
    for_each_tap_row(geometry, positions, |t| {
        let at = t.tap * cols + t.oh * out_width + t.ow_start - start;
        let src = &plane[t.ih * in_width + t.iw_start..];
        strided_update(&mut col[at..], 1, src, stride_w, t.len(), |d, s| *d = s);
    });
}

/// The adjoint of [`im2col_channel`]: adds each column entry back onto the input pixel it
/// was read from.
pub(in crate::ops::conv) fn col2im_channel(
    geometry: &Conv2dGeometry,
    col: &[f32],
    positions: Range<usize>,
    plane: &mut [f32],
) {
    let cols = positions.len();
    let start = positions.start;
    let [out_width, in_width, stride_w] = [
        geometry.out_size[1],
        geometry.in_size[1],
        geometry.params.stride[1],
    ];
    for_each_tap_row(geometry, positions, |t| {
        let at = t.tap * cols + t.oh * out_width + t.ow_start - start;
        let dst = &mut plane[t.ih * in_width + t.iw_start..];
        strided_update(dst, stride_w, &col[at..], 1, t.len(), |d, s| *d += s);
    });
}
