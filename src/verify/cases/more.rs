//! Cases of the CNN families: batch norm, pooling, interpolation, matmul, convolution.

use super::{case, Case, Input};
use crate::ops::activation::ChannelLayout;
use crate::ops::conv::{Conv2dGeometry, Conv2dParams};
use crate::ops::interpolate::{InterpolateGeometry, InterpolateMode};
use crate::ops::matmul::MatmulDims;
use crate::ops::norm::RowLayout;
use crate::ops::pool::{AvgPool2dGeometry, PlaneResize, Pool2dGeometry};
use crate::ops::routed_conv::{RoutedConvGeometry, RoutedConvParams};
use crate::ops::softmax::RouteLayout;
use crate::ops::topk_gate::TopkGateParams;
use crate::tensor::Storage;
use crate::verify::Tolerance;

/// `(planes, input, output, scales)` of an interpolation case.
type ResizeCase = (usize, [usize; 2], [usize; 2], [Option<f64>; 2]);

/// `(batch, in_channels, [h, w], out_channels, [kh, kw], stride, [top, bottom, left, right],
/// dilation, groups)` of a convolution case.
type ConvCase = (
    usize,
    usize,
    [usize; 2],
    usize,
    [usize; 2],
    usize,
    [usize; 4],
    usize,
    usize,
);

/// Soft-MoE routing (the fused dispatch/combine softmaxes) and its backward: lines shorter and
/// longer than a CUDA block (256) in both directions, one token and one slot.
pub fn soft_route(cases: &mut Vec<Case>) {
    for (batch, tokens, slots) in [(2, 9, 6), (1, 300, 5), (3, 7, 513), (1, 1, 1), (2, 197, 40)] {
        let layout = RouteLayout {
            batch,
            tokens,
            slots,
        };
        let n = layout.numel();
        let shape = format!("[{batch},{tokens},{slots}]");
        // Spread logits: the maxima matter.
        let logits = Input::Uniform(n, -8.0, 8.0);
        cases.push(
            case(
                "soft_route_forward",
                &shape,
                vec![logits],
                Tolerance::TRANSCENDENTAL,
                move |b, x| Ok(vec![b.soft_route_forward(&x[0], layout)?]),
            )
            .outputs(&["routes"]),
        );
        cases.push(case(
            "soft_route_backward",
            &shape,
            vec![logits, Input::Normal(2 * n)],
            Tolerance::TRANSCENDENTAL,
            move |b, x| {
                let routes = b.soft_route_forward(&x[0], layout)?;
                Ok(vec![b.soft_route_backward(&routes, &x[1], layout)?])
            },
        ));
    }
}

/// Layer norm forward and backward, affine or not: rows shorter and longer than a CUDA block
/// (256), a single row, many rows of one element.
fn layer_norm(cases: &mut Vec<Case>) {
    for (rows, dim) in [(6, 33), (1, 300), (37, 1), (130, 64), (3, 513)] {
        let layout = RowLayout { rows, dim };
        let shape = format!("[{rows},{dim}]");
        for affine in [true, false] {
            let inputs = vec![
                Input::Normal(rows * dim),
                Input::Normal(dim),
                Input::Normal(dim),
                Input::Normal(rows * dim),
            ];
            let parameters = move |x: &[Storage]| {
                if affine {
                    (Some(x[1].clone()), Some(x[2].clone()))
                } else {
                    (None, None)
                }
            };
            cases.push(
                case(
                    format!("layer_norm_forward affine {affine}"),
                    &shape,
                    inputs[..3].to_vec(),
                    Tolerance::REDUCTION,
                    move |b, x| {
                        let (w, bias) = parameters(x);
                        let f =
                            b.layer_norm_forward(&x[0], w.as_ref(), bias.as_ref(), layout, 1e-5)?;
                        Ok(vec![f.output, f.mean, f.rstd])
                    },
                )
                .outputs(&["output", "mean", "rstd"]),
            );
            cases.push(
                case(
                    format!("layer_norm_backward affine {affine}"),
                    &shape,
                    inputs,
                    Tolerance::REDUCTION,
                    move |b, x| {
                        let (w, bias) = parameters(x);
                        let f =
                            b.layer_norm_forward(&x[0], w.as_ref(), bias.as_ref(), layout, 1e-5)?;
                        let grads = b.layer_norm_backward(&x[0], &x[3], &f, w.as_ref(), layout)?;
                        Ok(vec![grads.input, grads.weight, grads.bias])
                    },
                )
                .outputs(&["grad_input", "grad_weight", "grad_bias"]),
            );
        }
    }
}

/// Batch norm: statistics, forward (affine or not), backward in training and eval.
pub fn norm(cases: &mut Vec<Case>) {
    layer_norm(cases);
    for (outer, channels, inner) in [(2, 5, 33), (1, 16, 49), (4, 3, 1), (3, 1, 7)] {
        let layout = ChannelLayout {
            outer,
            channels,
            inner,
        };
        let len = outer * channels * inner;
        let shape = format!("[{outer},{channels},{inner}]");
        let stats = Input::Uniform(channels, 0.3, 2.0);
        cases.push(
            case(
                "batch_norm_statistics",
                &shape,
                vec![Input::Normal(len)],
                Tolerance::REDUCTION,
                move |b, x| {
                    let (mean, var) = b.batch_norm_statistics(&x[0], layout)?;
                    Ok(vec![mean, var])
                },
            )
            .outputs(&["mean", "var"]),
        );
        for affine in [true, false] {
            let inputs = vec![
                Input::Normal(len),
                Input::Normal(channels),
                stats,
                Input::Normal(channels),
                Input::Normal(channels),
                Input::Normal(len),
            ];
            cases.push(case(
                format!("batch_norm_forward affine {affine}"),
                &shape,
                inputs[..5].to_vec(),
                Tolerance::TRANSCENDENTAL,
                move |b, x| {
                    let (w, bias) = if affine {
                        (Some(&x[3]), Some(&x[4]))
                    } else {
                        (None, None)
                    };
                    Ok(vec![b.batch_norm_forward(
                        &x[0], &x[1], &x[2], w, bias, layout, 1e-5,
                    )?])
                },
            ));
            for training in [true, false] {
                cases.push(
                    case(
                        format!("batch_norm_backward affine {affine} training {training}"),
                        &shape,
                        inputs.clone(),
                        Tolerance::REDUCTION,
                        move |b, x| {
                            let w = affine.then_some(&x[3]);
                            let (mean, var) = if training {
                                b.batch_norm_statistics(&x[0], layout)?
                            } else {
                                (x[1].clone(), x[2].clone())
                            };
                            let g = b.batch_norm_backward(
                                &x[0], &x[5], &mean, &var, w, layout, 1e-5, training,
                            )?;
                            Ok(vec![g.input, g.weight, g.bias])
                        },
                    )
                    .outputs(&["grad_input", "grad_weight", "grad_bias"]),
                );
            }
        }
    }
}

/// PyTorch's pooled length (floor or ceil mode; a last window must start inside the input or
/// the left padding).
fn pooled(
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
    ceil: bool,
) -> usize {
    let span = (input + 2 * pad) as i64 - (dilation * (kernel - 1) + 1) as i64;
    let stride = stride as i64;
    let mut len = if ceil {
        (span + stride - 1).div_euclid(stride)
    } else {
        span.div_euclid(stride)
    } + 1;
    if ceil && (len - 1) * stride >= (input + pad) as i64 {
        len -= 1;
    }
    len.max(0) as usize
}

/// Max pool (+ indices, backward), max unpool (+ backward), avg pool, adaptive avg pool.
pub fn pool(cases: &mut Vec<Case>) {
    let windows = [
        // (planes, [h, w], kernel, stride, padding, dilation, ceil)
        (6, [13, 11], 3, 2, 1, 1, false),
        (4, [16, 15], 2, 2, 0, 1, false),
        (3, [9, 9], 3, 1, 1, 1, false),
        (2, [12, 10], 3, 1, 1, 2, false),
        (5, [13, 11], 3, 2, 0, 1, true),
    ];
    for (planes, input, k, s, p, d, ceil) in windows {
        let output = [
            pooled(input[0], k, s, p, d, ceil),
            pooled(input[1], k, s, p, d, ceil),
        ];
        let g = Pool2dGeometry {
            planes,
            input,
            output,
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
            dilation: [d, d],
        };
        let shape = format!(
            "{planes}x{input:?} k{k} s{s} p{p} d{d}{}",
            if ceil { " ceil" } else { "" }
        );
        let (in_len, out_len) = (planes * input[0] * input[1], planes * output[0] * output[1]);
        cases.push(
            case(
                "max_pool2d_with_indices",
                &shape,
                vec![Input::Normal(in_len)],
                Tolerance::EXACT,
                move |b, x| {
                    let (v, i) = b.max_pool2d_with_indices(&x[0], g)?;
                    Ok(vec![v, i])
                },
            )
            .outputs(&["values", "indices"]),
        );
        cases.push(case(
            "max_pool2d_with_indices_backward",
            &shape,
            vec![Input::Normal(in_len), Input::Normal(out_len)],
            Tolerance::REDUCTION,
            move |b, x| {
                let (_, i) = b.max_pool2d_with_indices(&x[0], g)?;
                Ok(vec![b.max_pool2d_with_indices_backward(&x[1], &i, g)?])
            },
        ));
        for (count_include_pad, divisor_override) in [(true, None), (false, None), (true, Some(4))]
        {
            let a = AvgPool2dGeometry {
                window: Pool2dGeometry {
                    dilation: [1, 1],
                    ..g
                },
                count_include_pad,
                divisor_override,
            };
            if d != 1 {
                continue;
            }
            let shape =
                format!("{shape} include_pad {count_include_pad} divisor {divisor_override:?}");
            cases.push(case(
                "avg_pool2d",
                &shape,
                vec![Input::Normal(in_len)],
                Tolerance::REDUCTION,
                move |b, x| Ok(vec![b.avg_pool2d(&x[0], a)?]),
            ));
            cases.push(case(
                "avg_pool2d_backward",
                &shape,
                vec![Input::Normal(out_len)],
                Tolerance::REDUCTION,
                move |b, x| Ok(vec![b.avg_pool2d_backward(&x[0], a)?]),
            ));
        }
    }
    // ENet's unpool: indices of a 2x2/2 max pool.
    for (planes, input) in [(6, [12, 10]), (3, [13, 11])] {
        let output = [input[0] / 2, input[1] / 2];
        let g = Pool2dGeometry {
            planes,
            input,
            output,
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
            dilation: [1, 1],
        };
        let sizes = PlaneResize {
            planes,
            input: output,
            output: input,
        };
        let shape = format!("{planes}x{output:?} -> {input:?}");
        let (in_len, out_len) = (planes * input[0] * input[1], planes * output[0] * output[1]);
        cases.push(case(
            "max_unpool2d",
            &shape,
            vec![Input::Normal(in_len), Input::Normal(out_len)],
            Tolerance::EXACT,
            move |b, x| {
                let (_, i) = b.max_pool2d_with_indices(&x[0], g)?;
                Ok(vec![b.max_unpool2d(&x[1], &i, sizes)?])
            },
        ));
        cases.push(case(
            "max_unpool2d_backward",
            &shape,
            vec![Input::Normal(in_len), Input::Normal(in_len)],
            Tolerance::EXACT,
            move |b, x| {
                let (_, i) = b.max_pool2d_with_indices(&x[0], g)?;
                Ok(vec![b.max_unpool2d_backward(&x[1], &i, sizes)?])
            },
        ));
    }
    for (planes, input, output) in [
        (4, [13, 11], [1, 1]),
        (3, [13, 11], [2, 2]),
        (2, [13, 11], [6, 6]),
        (2, [5, 5], [7, 7]),
        (1, [9, 16], [3, 3]),
    ] {
        let sizes = PlaneResize {
            planes,
            input,
            output,
        };
        let shape = format!("{planes}x{input:?} -> {output:?}");
        let (in_len, out_len) = (planes * input[0] * input[1], planes * output[0] * output[1]);
        cases.push(case(
            "adaptive_avg_pool2d",
            &shape,
            vec![Input::Normal(in_len)],
            Tolerance::REDUCTION,
            move |b, x| Ok(vec![b.adaptive_avg_pool2d(&x[0], sizes)?]),
        ));
        cases.push(case(
            "adaptive_avg_pool2d_backward",
            &shape,
            vec![Input::Normal(out_len)],
            Tolerance::REDUCTION,
            move |b, x| Ok(vec![b.adaptive_avg_pool2d_backward(&x[0], sizes)?]),
        ));
    }
}

/// Nearest and bilinear (both align_corners) resizing, up and down, with and without scales.
pub fn interpolate(cases: &mut Vec<Case>) {
    let modes = [
        InterpolateMode::Nearest,
        InterpolateMode::Bilinear {
            align_corners: false,
        },
        InterpolateMode::Bilinear {
            align_corners: true,
        },
    ];
    let sizes: [ResizeCase; 6] = [
        (6, [7, 9], [14, 18], [Some(2.0), Some(2.0)]),
        (3, [13, 11], [52, 44], [None, None]),
        (2, [16, 15], [5, 7], [None, None]),
        (4, [9, 9], [9, 9], [None, None]),
        (1, [1, 1], [5, 3], [None, None]),
        (2, [5, 6], [17, 1], [None, None]),
    ];
    for mode in modes {
        for (planes, input, output, scales) in sizes {
            let g = InterpolateGeometry {
                planes,
                input,
                output,
                scales,
                mode,
            };
            let shape = format!("{planes}x{input:?} -> {output:?}");
            let (in_len, out_len) = (planes * input[0] * input[1], planes * output[0] * output[1]);
            cases.push(case(
                format!("interpolate {mode:?}"),
                &shape,
                vec![Input::Normal(in_len)],
                Tolerance::REDUCTION,
                move |b, x| Ok(vec![b.interpolate(&x[0], g)?]),
            ));
            cases.push(case(
                format!("interpolate_backward {mode:?}"),
                &shape,
                vec![Input::Normal(out_len)],
                Tolerance::REDUCTION,
                move |b, x| Ok(vec![b.interpolate_backward(&x[0], g)?]),
            ));
        }
    }
}

/// Batched matmul (shared / per-item rhs, transposed rhs as in `linear` and `matmul_t`) and both
/// gradients.
pub fn matmul(cases: &mut Vec<Case>) {
    for (batch, m, k, n, rhs_shared, rhs_transposed) in [
        (1, 37, 19, 45, false, false),
        (3, 17, 70, 65, false, false),
        (4, 9, 33, 21, true, true),
        (2, 130, 7, 3, true, false),
        (5, 1, 64, 1, false, true),
        (3, 17, 33, 12, false, true),
    ] {
        let d = MatmulDims {
            batch,
            m,
            k,
            n,
            rhs_shared,
            rhs_transposed,
        };
        let shape =
            format!("b{batch} m{m} k{k} n{n} shared {rhs_shared} transposed {rhs_transposed}");
        let rhs_len = if rhs_shared { k * n } else { batch * k * n };
        let inputs = vec![
            Input::Normal(batch * m * k),
            Input::Normal(rhs_len),
            Input::Normal(batch * m * n),
        ];
        cases.push(case(
            "matmul",
            &shape,
            inputs[..2].to_vec(),
            Tolerance::REDUCTION,
            move |b, x| Ok(vec![b.matmul(&x[0], &x[1], d)?]),
        ));
        cases.push(case(
            "matmul_lhs_backward",
            &shape,
            inputs.clone(),
            Tolerance::REDUCTION,
            move |b, x| Ok(vec![b.matmul_lhs_backward(&x[2], &x[1], d)?]),
        ));
        cases.push(case(
            "matmul_rhs_backward",
            &shape,
            inputs,
            Tolerance::REDUCTION,
            move |b, x| Ok(vec![b.matmul_rhs_backward(&x[0], &x[2], d)?]),
        ));
    }
}

/// Convolutions of the six networks: 3×3 (stride 1 and 2), the 7×7/2 stem, 1×1, dilated 3×3,
/// ERFNet's 3×1 / 1×3, grouped, depthwise 3×3 and 5×5 (stride 1 and 2), a channel multiplier,
/// and stride-2 input gradients (conv-transpose's forward); batch 1 and > 1, odd sizes.
pub fn conv(cases: &mut Vec<Case>) {
    // (batch, in_c, [h, w], out_c, [kh, kw], stride, [top, bottom, left, right], dilation, groups)
    let table: [ConvCase; 12] = [
        (2, 5, [13, 11], 7, [3, 3], 1, [1, 1, 1, 1], 1, 1),
        (1, 3, [17, 15], 8, [3, 3], 2, [1, 1, 1, 1], 1, 1),
        (1, 3, [23, 21], 16, [7, 7], 2, [3, 3, 3, 3], 1, 1),
        (3, 16, [9, 7], 24, [1, 1], 1, [0, 0, 0, 0], 1, 1),
        (2, 8, [15, 13], 8, [3, 3], 1, [2, 2, 2, 2], 2, 1),
        (1, 6, [19, 17], 6, [3, 3], 1, [4, 4, 4, 4], 4, 1),
        (2, 6, [11, 9], 6, [3, 1], 1, [1, 1, 0, 0], 1, 1),
        (2, 6, [11, 9], 6, [1, 3], 1, [0, 0, 2, 2], 2, 1),
        (2, 8, [10, 9], 12, [3, 3], 1, [1, 1, 1, 1], 1, 4),
        (2, 16, [13, 11], 16, [3, 3], 1, [1, 1, 1, 1], 1, 16),
        (1, 12, [17, 15], 12, [5, 5], 2, [2, 2, 2, 2], 1, 12),
        (2, 4, [9, 8], 8, [3, 3], 2, [1, 1, 1, 1], 1, 4),
    ];
    for (batch, in_c, in_size, out_c, kernel, stride, padding, dilation, groups) in table {
        let out =
            |a: usize, pad: usize| (in_size[a] + pad - dilation * (kernel[a] - 1) - 1) / stride + 1;
        let out_size = [
            out(0, padding[0] + padding[1]),
            out(1, padding[2] + padding[3]),
        ];
        let params = Conv2dParams {
            stride: [stride, stride],
            padding,
            dilation: [dilation, dilation],
            groups,
        };
        let g = Conv2dGeometry {
            batch,
            in_channels: in_c,
            in_size,
            out_channels: out_c,
            kernel,
            out_size,
            params,
        };
        let shape = format!("b{batch} {in_c}x{in_size:?} -> {out_c} k{kernel:?} s{stride} p{padding:?} d{dilation} g{groups}");
        let inputs = vec![
            Input::Normal(g.input_len()),
            Input::Normal(g.weight_len()),
            Input::Normal(out_c),
            Input::Normal(g.output_len()),
        ];
        cases.push(
            case(
                "conv2d",
                &shape,
                inputs[..3].to_vec(),
                Tolerance::REDUCTION,
                move |b, x| {
                    Ok(vec![
                        b.conv2d(&x[0], &x[1], Some(&x[2]), g)?,
                        b.conv2d(&x[0], &x[1], None, g)?,
                    ])
                },
            )
            .outputs(&["with_bias", "without_bias"]),
        );
        cases.push(case(
            "conv2d_input_backward",
            &shape,
            inputs.clone(),
            Tolerance::REDUCTION,
            move |b, x| Ok(vec![b.conv2d_input_backward(&x[3], &x[1], g)?]),
        ));
        cases.push(case(
            "conv2d_weight_backward",
            &shape,
            inputs,
            Tolerance::REDUCTION,
            move |b, x| Ok(vec![b.conv2d_weight_backward(&x[3], &x[0], g)?]),
        ));
    }
}

/// The top-k gate: k of E, with a selection score, straight-through k = 1, a capacity; and the
/// routing weights' backward.
pub fn topk_gate(cases: &mut Vec<Case>) {
    for (tokens, experts, k, straight_through, capacity, selection) in [
        (301, 8, 2, false, 0, false),
        (64, 4, 1, true, 0, false),
        (64, 4, 1, false, 0, true),
        (97, 6, 2, false, 40, false),
        (1, 3, 3, false, 0, false),
    ] {
        let params = TopkGateParams {
            k,
            straight_through,
            capacity,
            eps: 1e-5,
        };
        let shape = format!(
            "T{tokens} E{experts} k{k} st {straight_through} cap {capacity} sel {selection}"
        );
        let inputs = vec![
            Input::Normal(tokens * experts),
            Input::Normal(tokens * experts),
            Input::Normal(tokens * k),
        ];
        cases.push(
            case(
                "topk_gate_forward",
                &shape,
                inputs[..2].to_vec(),
                Tolerance::TRANSCENDENTAL,
                move |b, x| {
                    let s = selection.then_some(&x[1]);
                    let o = b.topk_gate_forward(&x[0], s, tokens, experts, params)?;
                    Ok(vec![o.probs, o.indices, o.weights, o.counts, o.top1_counts])
                },
            )
            .outputs(&["probs", "indices", "weights", "counts", "top1_counts"]),
        );
        cases.push(case(
            "routing_weights_backward",
            &shape,
            inputs,
            Tolerance::TRANSCENDENTAL,
            move |b, x| {
                let s = selection.then_some(&x[1]);
                let o = b.topk_gate_forward(&x[0], s, tokens, experts, params)?;
                Ok(vec![b.routing_weights_backward(
                    &x[2], &o.probs, &o.indices, tokens, experts, params,
                )?])
            },
        ));
    }
}

/// Routed convolution: expert dispatch (with and without biases, dilation, groups), combine,
/// and the token, expert-weight, expert-bias and routing-weight gradients.
pub fn routed_conv(cases: &mut Vec<Case>) {
    // (tokens, slots, experts, in_channels, out_channels, out_size, dilation, groups)
    for (tokens, slots, experts, in_channels, out_channels, out_size, dilation, groups) in [
        (13, 2, 4, 3, 5, [4, 4], 1, 1),
        (1, 1, 2, 4, 4, [7, 5], 2, 2),
        (21, 3, 3, 6, 6, [3, 5], 1, 6),
    ] {
        let g = RoutedConvGeometry {
            tokens,
            slots,
            experts,
            in_channels,
            token_size: [out_size[0] + 2 * dilation, out_size[1] + 2 * dilation],
            out_channels,
            kernel: [3, 3],
            out_size,
            params: RoutedConvParams {
                dilation: [dilation, dilation],
                groups,
            },
        };
        let shape = format!("T{tokens} k{slots} E{experts} {in_channels}->{out_channels}x{out_size:?} d{dilation} g{groups}");
        let (slot_len, out_len, token_len) = (g.slot_outputs_len(), g.output_len(), g.tokens_len());
        let weight_len = experts * g.expert_weight_len();
        let routed = tokens * slots;
        // tokens, weights, biases, indices, routing weights, grad_out, slot outputs
        let inputs = vec![
            Input::Normal(token_len),
            Input::Normal(weight_len),
            Input::Normal(experts * out_channels),
            Input::Integers(routed, experts),
            Input::Uniform(routed, 0.0, 1.0),
            Input::Normal(out_len),
            Input::Normal(slot_len),
        ];
        let with = |name: &str| (name.to_string(), shape.clone(), inputs.clone());
        let (n, s, i) = with("routed_conv_expert_outputs");
        cases.push(
            case(n, s, i, Tolerance::REDUCTION, move |b, x| {
                Ok(vec![
                    b.routed_conv_expert_outputs(&x[0], &x[1], Some(&x[2]), &x[3], g)?,
                    b.routed_conv_expert_outputs(&x[0], &x[1], None, &x[3], g)?,
                ])
            })
            .outputs(&["with_biases", "without_biases"]),
        );
        let (n, s, i) = with("routed_conv_combine");
        cases.push(case(n, s, i, Tolerance::REDUCTION, move |b, x| {
            Ok(vec![b.routed_conv_combine(&x[6], &x[4], g)?])
        }));
        let (n, s, i) = with("routed_conv_tokens_backward");
        cases.push(case(n, s, i, Tolerance::REDUCTION, move |b, x| {
            Ok(vec![b.routed_conv_tokens_backward(
                &x[5], &x[1], &x[3], &x[4], g,
            )?])
        }));
        let (n, s, i) = with("routed_conv_expert_weights_backward");
        cases.push(case(n, s, i, Tolerance::REDUCTION, move |b, x| {
            Ok(vec![b.routed_conv_expert_weights_backward(
                &x[5], &x[0], &x[3], &x[4], g,
            )?])
        }));
        let (n, s, i) = with("routed_conv_expert_biases_backward");
        cases.push(case(n, s, i, Tolerance::REDUCTION, move |b, x| {
            Ok(vec![b.routed_conv_expert_biases_backward(
                &x[5], &x[3], &x[4], g,
            )?])
        }));
        let (n, s, i) = with("routed_conv_routing_weights_backward");
        cases.push(case(n, s, i, Tolerance::REDUCTION, move |b, x| {
            Ok(vec![
                b.routed_conv_routing_weights_backward(&x[5], &x[6], g)?
            ])
        }));
    }
}
