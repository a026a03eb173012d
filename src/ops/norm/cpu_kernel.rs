//! CPU kernels of batch normalisation: per-channel sums run one channel per task (each a loop
//! over the N contiguous rows of that channel, accumulated in f64); the elementwise passes run
//! over contiguous rows.

use super::{BatchNormGrads, NormBackend};
use crate::backend::cpu::CpuBackend;
use crate::error::Result;
use crate::ops::activation::ChannelLayout;
use crate::ops::softmax::cpu_kernel::for_each_row;
use crate::tensor::Storage;
use rayon::prelude::*;

/// The `N` contiguous rows (of `S` elements) that belong to channel `c`.
fn channel_rows(
    data: &[f32],
    layout: ChannelLayout,
    c: usize,
) -> impl Iterator<Item = &[f32]> + '_ {
    let ChannelLayout {
        channels, inner, ..
    } = layout;
    (0..layout.outer).map(move |n| {
        let start = (n * channels + c) * inner;
        &data[start..start + inner]
    })
}

/// `f(c)` for every channel, in parallel, collected in channel order.
fn per_channel<T: Send>(layout: ChannelLayout, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    (0..layout.channels).into_par_iter().map(&f).collect()
}

/// `1 / √(var + eps)` per channel.
fn inverse_std(var: &[f32], eps: f32) -> Vec<f32> {
    var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect()
}

/// `y = x · scale[c] + shift[c]` over the `[N, C, S]` layout.
fn scale_shift(x: &[f32], scale: &[f32], shift: &[f32], layout: ChannelLayout) -> Vec<f32> {
    let mut out = crate::backend::cpu::buffer_cache::zeroed(x.len());
    for_each_row(
        &mut out,
        layout.channels,
        layout.inner,
        |row, _, out_row| {
            let c = row % layout.channels;
            let src = &x[row * layout.inner..(row + 1) * layout.inner];
            for (y, &v) in out_row.iter_mut().zip(src) {
                *y = v * scale[c] + shift[c];
            }
        },
    );
    out
}

impl NormBackend for CpuBackend {
    fn batch_norm_statistics(
        &self,
        x: &Storage,
        layout: ChannelLayout,
    ) -> Result<(Storage, Storage)> {
        let x = x.as_cpu("batch_norm_statistics")?;
        let count = (layout.outer * layout.inner) as f64;
        // Two passes (mean, then squared deviations) in f64: no cancellation.
        let stats = per_channel(layout, |c| {
            let sum: f64 = channel_rows(x, layout, c)
                .flat_map(|row| row.iter())
                .map(|&v| v as f64)
                .sum();
            let mean = sum / count;
            let squares: f64 = channel_rows(x, layout, c)
                .flat_map(|row| row.iter())
                .map(|&v| (v as f64 - mean).powi(2))
                .sum();
            (mean as f32, (squares / count) as f32)
        });
        let (mean, var): (Vec<f32>, Vec<f32>) = stats.into_iter().unzip();
        Ok((Storage::cpu(mean), Storage::cpu(var)))
    }

    fn batch_norm_forward(
        &self,
        x: &Storage,
        mean: &Storage,
        var: &Storage,
        weight: Option<&Storage>,
        bias: Option<&Storage>,
        layout: ChannelLayout,
        eps: f32,
    ) -> Result<Storage> {
        const OP: &str = "batch_norm2d";
        let (x, mean) = (x.as_cpu(OP)?, mean.as_cpu(OP)?);
        let inv_std = inverse_std(var.as_cpu(OP)?, eps);
        let weight = weight.map(|w| w.as_cpu(OP)).transpose()?;
        let bias = bias.map(|b| b.as_cpu(OP)).transpose()?;
        // Folded per channel: y = x · (w r) + (b − μ w r).
        let scale: Vec<f32> = (0..layout.channels)
            .map(|c| inv_std[c] * weight.map_or(1.0, |w| w[c]))
            .collect();
        let shift: Vec<f32> = (0..layout.channels)
            .map(|c| bias.map_or(0.0, |b| b[c]) - mean[c] * scale[c])
            .collect();
        Ok(Storage::cpu(scale_shift(x, &scale, &shift, layout)))
    }

    fn batch_norm_backward(
        &self,
        x: &Storage,
        grad_out: &Storage,
        mean: &Storage,
        var: &Storage,
        weight: Option<&Storage>,
        layout: ChannelLayout,
        eps: f32,
        training: bool,
    ) -> Result<BatchNormGrads> {
        const OP: &str = "batch_norm2d_backward";
        let (x, g, mean) = (x.as_cpu(OP)?, grad_out.as_cpu(OP)?, mean.as_cpu(OP)?);
        let inv_std = inverse_std(var.as_cpu(OP)?, eps);
        let weight = weight.map(|w| w.as_cpu(OP)).transpose()?;
        // Σ g and Σ g·(x − μ) per channel; Σ g·x̂ = r · Σ g·(x − μ).
        let sums = per_channel(layout, |c| {
            let (mut sum_g, mut sum_g_centered) = (0.0f64, 0.0f64);
            for (x_row, g_row) in channel_rows(x, layout, c).zip(channel_rows(g, layout, c)) {
                let (mut row_g, mut row_gc) = (0.0f32, 0.0f32);
                for (&v, &g) in x_row.iter().zip(g_row) {
                    row_g += g;
                    row_gc += g * (v - mean[c]);
                }
                sum_g += row_g as f64;
                sum_g_centered += row_gc as f64;
            }
            (sum_g as f32, (sum_g_centered * inv_std[c] as f64) as f32)
        });
        let (grad_bias, grad_weight): (Vec<f32>, Vec<f32>) = sums.into_iter().unzip();

        let count = (layout.outer * layout.inner) as f32;
        // grad_x = a·g + b·x + d per channel, folding the training formula
        // w r (g − Σg/M − x̂ Σg x̂/M) with x̂ = (x − μ) r.
        let mut coefficients = vec![(0.0f32, 0.0f32, 0.0f32); layout.channels];
        for (c, coefficient) in coefficients.iter_mut().enumerate() {
            let a = weight.map_or(1.0, |w| w[c]) * inv_std[c];
            *coefficient = if training {
                let b = -a * inv_std[c] * grad_weight[c] / count;
                (a, b, -a * grad_bias[c] / count - b * mean[c])
            } else {
                (a, 0.0, 0.0)
            };
        }
        let mut grad_x = crate::backend::cpu::buffer_cache::zeroed(x.len());
        for_each_row(
            &mut grad_x,
            layout.channels,
            layout.inner,
            |row, _, out_row| {
                let (a, b, d) = coefficients[row % layout.channels];
                let range = row * layout.inner..(row + 1) * layout.inner;
                for ((dx, &v), &g) in out_row.iter_mut().zip(&x[range.clone()]).zip(&g[range]) {
                    *dx = a * g + b * v + d;
                }
            },
        );
        Ok(BatchNormGrads {
            input: Storage::cpu(grad_x),
            weight: Storage::cpu(grad_weight),
            bias: Storage::cpu(grad_bias),
        })
    }
}
