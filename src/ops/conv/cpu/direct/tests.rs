//! The direct kernels against naive f64 convolutions.

use super::*;
use crate::ops::conv::Conv2dParams;

/// Calls `term(x_index, w_index, y_index)` for every product `x · w` that contributes to an
/// output of image `image` (flat NCHW / OIHW indices): the one loop nest the three f64
/// references below share.
fn each_term(g: &Conv2dGeometry, image: usize, mut term: impl FnMut(usize, usize, usize)) {
    let [in_h, in_w] = g.in_size;
    let [out_h, out_w] = g.out_size;
    let [kh_n, kw_n] = g.kernel;
    let [dh, dw] = g.params.dilation;
    let [pt, _, pl, _] = g.params.padding;
    let (ig, og) = (g.in_channels_per_group(), g.out_channels_per_group());
    for co in 0..g.out_channels {
        let group = co / og;
        for ci in 0..ig {
            let x_plane = (image * g.in_channels + group * ig + ci) * in_h * in_w;
            for kh in 0..kh_n {
                for kw in 0..kw_n {
                    let w_index = ((co * ig + ci) * kh_n + kh) * kw_n + kw;
                    for oh in 0..out_h {
                        for ow in 0..out_w {
                            let ih = (oh + kh * dh) as isize - pt as isize;
                            let iw = (ow + kw * dw) as isize - pl as isize;
                            if ih < 0 || iw < 0 || ih >= in_h as isize || iw >= in_w as isize {
                                continue;
                            }
                            let x_index = x_plane + ih as usize * in_w + iw as usize;
                            let y_index = ((image * g.out_channels + co) * out_h + oh) * out_w + ow;
                            term(x_index, w_index, y_index);
                        }
                    }
                }
            }
        }
    }
}

/// Naive convolution in f64 of one image.
fn naive(g: &Conv2dGeometry, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f64> {
    let out_pixels = g.out_size[0] * g.out_size[1];
    let mut out: Vec<f64> = (0..g.out_channels * out_pixels)
        .map(|i| f64::from(b[i / out_pixels]))
        .collect();
    each_term(g, 0, |xi, wi, yi| {
        out[yi] += f64::from(x[xi]) * f64::from(w[wi]);
    });
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
    let paths = crate::backend::cpu::simd_paths_to_test("direct_matches_naive_f64")
        .unwrap_or_else(|e| panic!("{e}"));
    for path in paths {
        crate::backend::cpu::with_kernel_path(path, || check_direct_kernels(path));
        eprintln!("direct_matches_naive_f64: {} kernels checked", path.name());
    }
}

/// A batch-1 stride-1 convolution of `cin → cout` channels on `in_size` with `padding`
/// `[top, bottom, left, right]`.
fn stride1_geometry(
    cin: usize,
    cout: usize,
    in_size: [usize; 2],
    kernel: [usize; 2],
    padding: [usize; 4],
    dilation: [usize; 2],
    groups: usize,
) -> Conv2dGeometry {
    let out_size = [
        in_size[0] + padding[0] + padding[1] - dilation[0] * (kernel[0] - 1),
        in_size[1] + padding[2] + padding[3] - dilation[1] * (kernel[1] - 1),
    ];
    Conv2dGeometry {
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
    }
}

fn check_direct_kernels(path: KernelPath) {
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
    for (i, &(cin, cout, in_size, kernel, padding, dilation, groups)) in cases.iter().enumerate() {
        let g = stride1_geometry(cin, cout, in_size, kernel, padding, dilation, groups);
        assert!(
            fits(&g),
            "case {i} should take the direct kernel on {path:?}"
        );
        let x = values(g.input_len(), 1 + i as u64);
        let w = values(g.weight_len(), 100 + i as u64);
        let b = values(cout, 200 + i as u64);
        let packed = pack_weight(&g, &w);
        let mut out = vec![f32::NAN; g.output_len()];
        for group in 0..groups {
            for block in 0..blocks_per_group(&g) {
                for rows in row_bands(g.out_size[0], 3) {
                    let task = BlockTask {
                        path,
                        group,
                        block,
                        rows,
                        x: &x,
                        packed: &packed,
                        bias: Some(&b),
                    };
                    // SAFETY: `fits` holds on an available SIMD path; tasks are disjoint and run
                    // one at a time.
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
                "{path:?} case {i}: element {j} is {got}, expected {want}"
            );
        }
        // Weight gradient for ∂y = dy over two images, against f64 sums.
        let g2 = Conv2dGeometry { batch: 2, ..g };
        let x2 = values(g2.input_len(), 300 + i as u64);
        let dy = values(g2.output_len(), 400 + i as u64);
        let got = weight_backward(&g2, &dy, &x2);
        let expected = naive_weight_grad(&g2, &dy, &x2);
        let positions = (2 * g.out_size[0] * g.out_size[1]) as f64;
        for (j, (&got, &want)) in got.iter().zip(&expected).enumerate() {
            let tol = 4.0 * positions.sqrt() * positions.log2() * f32::EPSILON as f64;
            assert!(
                (got as f64 - want).abs() <= tol,
                "{path:?} case {i}: weight gradient {j} is {got}, expected {want}"
            );
        }
    }
}

/// `∂W[co, ci, kh, kw] = Σ_images,positions ∂y[co, p] · x[ci, p + tap]` in f64.
fn naive_weight_grad(g: &Conv2dGeometry, dy: &[f32], x: &[f32]) -> Vec<f64> {
    let mut grad = vec![0.0f64; g.weight_len()];
    for image in 0..g.batch {
        each_term(g, image, |xi, wi, yi| {
            grad[wi] += f64::from(x[xi]) * f64::from(dy[yi]);
        });
    }
    grad
}

/// `∂x[ci, ih, iw] = Σ ∂y[co, oh, ow] · w[co, ci, tap]` of one image in f64.
fn naive_input_grad(g: &Conv2dGeometry, dy: &[f32], w: &[f32]) -> Vec<f64> {
    let mut grad = vec![0.0f64; g.in_channels * g.in_size[0] * g.in_size[1]];
    each_term(g, 0, |xi, wi, yi| {
        grad[xi] += f64::from(dy[yi]) * f64::from(w[wi]);
    });
    grad
}

/// The CPU backend's convolution, input and weight gradients on every kernel family this CPU
/// runs (portable, AVX2, AVX-512; `MOESEG_REQUIRE_SIMD` makes a missing one a failure) against
/// f64 sums: 3×3 padded, ERFNet's dilated 3×1 and 1×3, a 1×1, a depthwise 3×3.
#[test]
fn every_kernel_family_matches_f64() {
    use crate::backend::cpu::{simd_paths_to_test, with_kernel_path, CpuBackend};
    use crate::ops::conv::ConvBackend;
    use crate::tensor::Storage;
    let mut paths = vec![KernelPath::Portable];
    paths.extend(
        simd_paths_to_test("every_kernel_family_matches_f64").unwrap_or_else(|e| panic!("{e}")),
    );
    let cases = [
        // (cin, cout, in [h, w], kernel, padding [t, b, l, r], dilation, groups)
        (16, 24, [12, 40], [3, 3], [1, 1, 1, 1], [1, 1], 1),
        (16, 16, [10, 37], [3, 1], [2, 2, 0, 0], [2, 1], 1),
        (16, 16, [10, 37], [1, 3], [0, 0, 4, 4], [1, 4], 1),
        (24, 8, [9, 33], [1, 1], [0, 0, 0, 0], [1, 1], 1),
        (16, 16, [11, 35], [3, 3], [1, 1, 1, 1], [1, 1], 16),
    ];
    for path in paths {
        for (i, &(cin, cout, in_size, kernel, padding, dilation, groups)) in
            cases.iter().enumerate()
        {
            let g = stride1_geometry(cin, cout, in_size, kernel, padding, dilation, groups);
            let x = values(g.input_len(), 500 + i as u64);
            let w = values(g.weight_len(), 600 + i as u64);
            let dy = values(g.output_len(), 700 + i as u64);
            let (got_y, got_dx, got_dw) = with_kernel_path(path, || {
                let cpu = CpuBackend;
                let (xs, ws, dys) = (
                    Storage::cpu(x.clone()),
                    Storage::cpu(w.clone()),
                    Storage::cpu(dy.clone()),
                );
                let y = cpu.conv2d(&xs, &ws, None, g).expect("cpu conv2d");
                let dx = cpu
                    .conv2d_input_backward(&dys, &ws, g)
                    .expect("cpu input grad");
                let dw = cpu
                    .conv2d_weight_backward(&dys, &xs, g)
                    .expect("cpu weight grad");
                let read = |s: &Storage| s.as_cpu("test").expect("cpu storage").to_vec();
                (read(&y), read(&dx), read(&dw))
            });
            let zero_bias = vec![0.0f32; cout];
            let checks = [
                (
                    "forward",
                    got_y,
                    naive(&g, &x, &w, &zero_bias),
                    g.col_rows(),
                ),
                (
                    "input grad",
                    got_dx,
                    naive_input_grad(&g, &dy, &w),
                    g.out_channels_per_group() * g.taps(),
                ),
                (
                    "weight grad",
                    got_dw,
                    naive_weight_grad(&g, &dy, &x),
                    g.out_pixels(),
                ),
            ];
            for (what, got, want, terms) in checks {
                assert_eq!(got.len(), want.len(), "{path:?} case {i} {what}: length");
                let tol = 4.0 * terms as f64 * f32::EPSILON as f64;
                for (j, (&got, &want)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (got as f64 - want).abs() <= tol,
                        "{path:?} case {i} {what}: element {j} is {got}, expected {want}"
                    );
                }
            }
        }
        eprintln!(
            "every_kernel_family_matches_f64: {} kernels checked",
            path.name()
        );
    }
}
