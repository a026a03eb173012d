//! Direct stride-1 convolution on AVX-512F: output rows computed straight from the input planes,
//! with no im2col matrix and no packing of the input.
//!
//! For stride 1 the input under one kernel tap, for a run of output columns, is a contiguous run
//! of an input row, so a register tile of [`MR`] output channels × [`NR`] output columns is
//! accumulated as `Σ_{tap, ci} w[co, ci, tap] · x[ci, row(tap), cols(tap)]`: two (masked) vector
//! loads of the input and `MR` broadcast weights per step. Padding is handled by skipping input
//! rows outside the map and by load masks for columns outside it, so padded and VALID
//! convolutions (and the full-padded flipped-kernel convolution that is a stride-1 input
//! gradient) run the same kernel.
//!
//! Used where [`avx512_kernels`] holds; elsewhere the im2col + GEMM paths run. Every output
//! element is written by one task with a fixed summation order (taps, then input channels), so
//! results do not depend on the thread count.

use super::Conv2dGeometry;
use crate::backend::cpu::{avx512_kernels, pool, SendPtr};
use rayon::prelude::*;
use std::ops::Range;

/// Output channels per register tile.
pub(crate) const MR: usize = 8;
/// Output columns per register tile (two 16-float vectors).
const NR: usize = 32;
/// Largest `Cin/groups · taps` the direct kernel takes: past it the im2col + GEMM path keeps
/// the weights and input rows of a tile in cache better.
const MAX_DEPTH: usize = 64 * 9;

/// Whether `geometry` runs on the direct kernel on this machine: stride 1, not depthwise, a
/// moderate depth, output rows at least a vector wide, and AVX-512F.
pub(crate) fn usable(geometry: &Conv2dGeometry) -> bool {
    geometry.params.stride == [1, 1]
        && !geometry.is_depthwise()
        && geometry.col_rows() <= MAX_DEPTH
        && geometry.out_size[1] >= 16
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
    let (out_group, depth) = (geometry.out_channels_per_group(), geometry.col_rows());
    let blocks = blocks_per_group(geometry);
    let mut packed = vec![0.0; packed_len(geometry)];
    for group in 0..geometry.params.groups {
        for block in 0..blocks {
            let dst = &mut packed[(group * blocks + block) * MR * depth..][..MR * depth];
            for i in 0..MR.min(out_group - block * MR) {
                let channel = group * out_group + block * MR + i;
                let src = &weight[channel * depth..][..depth];
                for (step, &w) in src.iter().enumerate() {
                    dst[step * MR + i] = w;
                }
            }
        }
    }
    packed
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
    let bands = row_bands(
        geometry.out_size[0],
        (4 * rayon::current_num_threads()).div_ceil(items.max(1)),
    );
    let tasks: Vec<(usize, usize, Range<usize>)> = (0..geometry.batch)
        .flat_map(|image| (0..blocks).map(move |block| (image, block)))
        .flat_map(|(image, block)| bands.iter().map(move |rows| (image, block, rows.clone())))
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
    out
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
    use super::{BlockTask, MR, NR};
    use crate::ops::conv::Conv2dGeometry;
    use std::arch::x86_64::*;

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

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block(g: &Conv2dGeometry, task: &BlockTask, out: *mut f32) {
        let [in_h, in_w] = g.in_size;
        let [out_h, out_w] = g.out_size;
        let [kh_n, kw_n] = g.kernel;
        let [dh, dw] = g.params.dilation;
        let [pad_top, _, pad_left, _] = g.params.padding;
        let (in_group, out_group) = (g.in_channels_per_group(), g.out_channels_per_group());
        let depth = g.col_rows();
        let taps = kh_n * kw_n;
        let first_channel = task.group * out_group + task.block * MR;
        let channels = MR.min(out_group - task.block * MR);
        let blocks = out_group.div_ceil(MR);
        let weights = task.packed[(task.group * blocks + task.block) * MR * depth..].as_ptr();
        let x = task.x[task.group * in_group * in_h * in_w..].as_ptr();
        let plane = in_h * in_w;
        let out_pixels = out_h * out_w;
        let mut bias = [0.0f32; MR];
        if let Some(b) = task.bias {
            bias[..channels].copy_from_slice(&b[first_channel..first_channel + channels]);
        }
        for oh in task.rows.clone() {
            for ow0 in (0..out_w).step_by(NR) {
                let store = [
                    lane_mask(ow0 as isize, out_w),
                    lane_mask(ow0 as isize + 16, out_w),
                ];
                let mut acc = [[_mm512_setzero_ps(); 2]; MR];
                for (i, row) in acc.iter_mut().enumerate() {
                    row[0] = _mm512_set1_ps(bias[i]);
                    row[1] = row[0];
                }
                for kh in 0..kh_n {
                    let ih = (oh + kh * dh) as isize - pad_top as isize;
                    if ih < 0 || ih >= in_h as isize {
                        continue;
                    }
                    for kw in 0..kw_n {
                        let c0 = (ow0 + kw * dw) as isize - pad_left as isize;
                        let m0 = lane_mask(c0, in_w) & store[0];
                        let m1 = lane_mask(c0 + 16, in_w) & store[1];
                        // Masked-out lanes are never read, so the pointer may sit outside the
                        // row (wrapping arithmetic, no dereference of those lanes).
                        let mut src = x.wrapping_offset(ih * in_w as isize + c0);
                        let mut w = weights.add((kh * kw_n + kw) * MR);
                        for _ in 0..in_group {
                            let b0 = _mm512_maskz_loadu_ps(m0, src);
                            let b1 = _mm512_maskz_loadu_ps(m1, src.wrapping_add(16));
                            for (i, row) in acc.iter_mut().enumerate() {
                                let a = _mm512_set1_ps(*w.add(i));
                                row[0] = _mm512_fmadd_ps(a, b0, row[0]);
                                row[1] = _mm512_fmadd_ps(a, b1, row[1]);
                            }
                            src = src.wrapping_add(plane);
                            w = w.add(taps * MR);
                        }
                    }
                }
                for (i, row) in acc.iter().enumerate().take(channels) {
                    let dst = out.add((first_channel + i) * out_pixels + oh * out_w + ow0);
                    _mm512_mask_storeu_ps(dst, store[0], row[0]);
                    _mm512_mask_storeu_ps(dst.wrapping_add(16), store[1], row[1]);
                }
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
        }
    }

    fn usable_on_this_cpu() -> bool {
        crate::backend::cpu::avx512_kernels()
    }
}
