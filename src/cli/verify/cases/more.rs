//! Cases of the CNN families: batch norm, pooling, interpolation, matmul, convolution.

use super::{case, Case, Input};
use crate::cli::verify::Tolerance;
use crate::ops::activation::ChannelLayout;

/// Batch norm: statistics, forward (affine or not), backward in training and eval.
pub fn norm(cases: &mut Vec<Case>) {
    for (outer, channels, inner) in [(2, 5, 33), (1, 16, 49), (4, 3, 1), (3, 1, 7)] {
        let layout = ChannelLayout {
            outer,
            channels,
            inner,
        };
        let len = outer * channels * inner;
        let shape = format!("[{outer},{channels},{inner}]");
        let stats = Input::Uniform(channels, 0.3, 2.0);
        cases.push(case(
            "batch_norm_statistics",
            &shape,
            vec![Input::Normal(len)],
            Tolerance::REDUCTION,
            move |b, x| {
                let (mean, var) = b.batch_norm_statistics(&x[0], layout)?;
                Ok(vec![mean, var])
            },
        ));
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
                cases.push(case(
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
                ));
            }
        }
    }
}
