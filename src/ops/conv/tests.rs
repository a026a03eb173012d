//! Kernel-level checks against a naive direct convolution, with tiny column budgets so the
//! tiled paths cut images into many partial-row tiles.

use super::cpu::gemm_paths::{self, COL_TILE_ELEMS};
use super::cpu::{depthwise, direct};
use super::{Conv2dGeometry, Conv2dParams};
use crate::tensor::Rng;

/// `(out, ∂x, ∂w)` by the definition, one multiply-add per (output, input channel, tap),
/// with `∂out = grad_out`.
fn reference(
    geometry: &Conv2dGeometry,
    x: &[f32],
    weight: &[f32],
    grad_out: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let g = geometry;
    let p = g.params;
    let (in_group, out_group) = (g.in_channels_per_group(), g.out_channels_per_group());
    let mut out = vec![0.0f32; g.output_len()];
    let mut grad_x = vec![0.0f32; g.input_len()];
    let mut grad_w = vec![0.0f32; g.weight_len()];
    for n in 0..g.batch {
        for o in 0..g.out_channels {
            let group = o / out_group;
            for oh in 0..g.out_size[0] {
                for ow in 0..g.out_size[1] {
                    let out_index =
                        ((n * g.out_channels + o) * g.out_size[0] + oh) * g.out_size[1] + ow;
                    for c in 0..in_group {
                        for ki in 0..g.kernel[0] {
                            for kj in 0..g.kernel[1] {
                                let ih = (oh * p.stride[0] + ki * p.dilation[0]) as isize
                                    - p.padding[0] as isize;
                                let iw = (ow * p.stride[1] + kj * p.dilation[1]) as isize
                                    - p.padding[2] as isize;
                                if ih < 0
                                    || iw < 0
                                    || ih >= g.in_size[0] as isize
                                    || iw >= g.in_size[1] as isize
                                {
                                    continue;
                                }
                                let channel = group * in_group + c;
                                let x_index = ((n * g.in_channels + channel) * g.in_size[0]
                                    + ih as usize)
                                    * g.in_size[1]
                                    + iw as usize;
                                let w_index =
                                    ((o * in_group + c) * g.kernel[0] + ki) * g.kernel[1] + kj;
                                out[out_index] += weight[w_index] * x[x_index];
                                grad_x[x_index] += weight[w_index] * grad_out[out_index];
                                grad_w[w_index] += grad_out[out_index] * x[x_index];
                            }
                        }
                    }
                }
            }
        }
    }
    (out, grad_x, grad_w)
}

fn close(what: &str, actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= 1e-4 + 1e-4 * e.abs(),
            "{what}[{i}]: {a} vs {e}"
        );
    }
}

fn random(len: usize, rng: &mut Rng) -> Vec<f32> {
    (0..len).map(|_| rng.normal(0.0, 1.0)).collect()
}

fn geometry(
    batch: usize,
    channels: [usize; 2],
    in_size: [usize; 2],
    kernel: [usize; 2],
    params: Conv2dParams,
) -> Conv2dGeometry {
    let mut out_size = [0; 2];
    let padded = [
        in_size[0] + params.padding[0] + params.padding[1],
        in_size[1] + params.padding[2] + params.padding[3],
    ];
    for axis in 0..2 {
        out_size[axis] = (padded[axis] - params.dilation[axis] * (kernel[axis] - 1) - 1)
            / params.stride[axis]
            + 1;
    }
    Conv2dGeometry {
        batch,
        in_channels: channels[0],
        in_size,
        out_channels: channels[1],
        kernel,
        out_size,
        params,
    }
}

/// Runs every applicable kernel path on `geometry` against [`reference`].
fn check(name: &str, geometry: Conv2dGeometry) {
    let mut rng = Rng::new(7);
    let x = random(geometry.input_len(), &mut rng);
    let w = random(geometry.weight_len(), &mut rng);
    let g = random(geometry.output_len(), &mut rng);
    let (out, grad_x, grad_w) = reference(&geometry, &x, &w, &g);
    for budget in [1, 300, COL_TILE_ELEMS] {
        let what = format!("{name} (tiled, budget {budget})");
        close(
            &what,
            &gemm_paths::forward(&geometry, &x, &w, None, budget),
            &out,
        );
        close(
            &what,
            &gemm_paths::input_backward(&geometry, &g, &w, budget),
            &grad_x,
        );
        close(
            &what,
            &gemm_paths::weight_backward(&geometry, &g, &x, budget),
            &grad_w,
        );
    }
    // The stride-1 input gradient as a flipped-kernel forward conv, on both kernels.
    for portable in [true, false] {
        let run = || gemm_paths::stride1_input_backward(&geometry, &g, &w, COL_TILE_ELEMS);
        let result = if portable {
            crate::backend::cpu::with_portable_kernels(run)
        } else {
            run()
        };
        if let Some(grad) = result {
            close(
                &format!("{name} (stride-1 adjoint, portable {portable})"),
                &grad,
                &grad_x,
            );
        }
    }
    if direct::usable(&geometry) {
        let what = format!("{name} (direct)");
        close(&what, &direct::forward(&geometry, &x, &w, None), &out);
        close(&what, &direct::weight_backward(&geometry, &g, &x), &grad_w);
    }
    if geometry.is_pointwise() {
        let what = format!("{name} (pointwise)");
        close(
            &what,
            &gemm_paths::pointwise_forward(&geometry, &x, &w, None),
            &out,
        );
        close(
            &what,
            &gemm_paths::pointwise_input_backward(&geometry, &g, &w),
            &grad_x,
        );
        close(
            &what,
            &gemm_paths::pointwise_weight_backward(&geometry, &g, &x),
            &grad_w,
        );
    }
    if geometry.is_depthwise() {
        let what = format!("{name} (depthwise)");
        close(&what, &depthwise::forward(&geometry, &x, &w, None), &out);
        close(
            &what,
            &depthwise::input_backward(&geometry, &g, &w),
            &grad_x,
        );
        close(
            &what,
            &depthwise::weight_backward(&geometry, &g, &x),
            &grad_w,
        );
    }
}

#[test]
fn kernels_match_the_definition() {
    let padded = |top, bottom, left, right| Conv2dParams {
        padding: [top, bottom, left, right],
        ..Conv2dParams::default()
    };
    check(
        "3x3 pad 1",
        geometry(2, [3, 4], [9, 13], [3, 3], Conv2dParams::new(1, 1, 1, 1)),
    );
    check(
        "stride 2",
        geometry(2, [3, 5], [11, 9], [3, 3], Conv2dParams::new(2, 1, 1, 1)),
    );
    check(
        "asymmetric padding",
        geometry(1, [2, 3], [7, 10], [3, 2], padded(0, 2, 1, 3)),
    );
    check(
        "dilation 2",
        geometry(2, [3, 2], [12, 11], [3, 3], Conv2dParams::new(1, 2, 2, 1)),
    );
    check(
        "groups 2",
        geometry(2, [4, 6], [9, 10], [3, 3], Conv2dParams::new(1, 1, 1, 2)),
    );
    check(
        "depthwise",
        geometry(2, [5, 5], [10, 13], [3, 3], Conv2dParams::new(1, 1, 1, 5)),
    );
    check(
        "depthwise stride 2 dilation 2",
        geometry(1, [3, 3], [13, 12], [3, 3], Conv2dParams::new(2, 2, 2, 3)),
    );
    check(
        "channel multiplier",
        geometry(1, [3, 6], [8, 9], [3, 3], Conv2dParams::new(1, 1, 1, 3)),
    );
    check(
        "1x1",
        geometry(2, [6, 5], [9, 15], [1, 1], Conv2dParams::default()),
    );
    check(
        "1x1 groups",
        geometry(2, [6, 4], [8, 9], [1, 1], Conv2dParams::new(1, 0, 1, 2)),
    );
    check(
        "1x1 stride 2",
        geometry(2, [4, 3], [9, 10], [1, 1], Conv2dParams::new(2, 0, 1, 1)),
    );
    check(
        "strided rectangle",
        geometry(
            1,
            [2, 3],
            [14, 9],
            [5, 2],
            Conv2dParams {
                stride: [3, 2],
                padding: [2, 1, 0, 1],
                dilation: [1, 2],
                groups: 1,
            },
        ),
    );
    // Rows at least a vector wide, so the AVX-512F direct kernel takes them where it runs.
    check(
        "wide 3x3 pad 1",
        geometry(2, [5, 9], [6, 37], [3, 3], Conv2dParams::new(1, 1, 1, 1)),
    );
    check(
        "wide dilated groups",
        geometry(1, [4, 6], [5, 40], [3, 3], Conv2dParams::new(1, 2, 2, 2)),
    );
    check(
        "wide asymmetric padding",
        geometry(1, [3, 10], [4, 33], [3, 2], padded(0, 2, 1, 3)),
    );
    let mut cropped = geometry(1, [2, 3], [9, 8], [3, 3], Conv2dParams::new(1, 1, 2, 1));
    cropped.out_size = [cropped.out_size[0] - 1, cropped.out_size[1] - 2];
    check("output smaller than the formula", cropped);
    check(
        "padding wider than the kernel",
        geometry(1, [2, 3], [5, 6], [3, 3], Conv2dParams::new(1, 3, 1, 1)),
    );
}
