//! CPU kernels of the norm family. Batch norm: per-channel sums run one channel per task (each
//! a loop over the N contiguous rows of that channel, accumulated in f64); the elementwise
//! passes run over contiguous rows. Layer norm: one task per contiguous row (statistics in f64,
//! two passes), and the weight/bias gradients as column sums over the rows.

use super::{BatchNormGrads, LayerNormForward, LayerNormGrads, NormBackend, RowLayout};
use crate::backend::cpu::{CpuBackend, PAR_CHUNK};
use crate::error::Result;
use crate::ops::activation::ChannelLayout;
use crate::ops::softmax::cpu_kernel::{for_each_row, offset, per_column_blocks};
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
    // Every row is written.
    let mut out = crate::backend::cpu::buffer_cache::uninit(x.len());
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

    fn layer_norm_forward(
        &self,
        x: &Storage,
        weight: Option<&Storage>,
        bias: Option<&Storage>,
        layout: RowLayout,
        eps: f32,
    ) -> Result<LayerNormForward> {
        const OP: &str = "layer_norm";
        let x = x.as_cpu(OP)?;
        let weight = weight.map(|w| w.as_cpu(OP)).transpose()?;
        let bias = bias.map(|b| b.as_cpu(OP)).transpose()?;
        let dim = layout.dim;
        let mut y = crate::backend::cpu::buffer_cache::zeroed(x.len());
        let statistics: Vec<(f32, f32)> = y
            .par_chunks_mut(dim)
            .zip(x.par_chunks(dim))
            .with_min_len((PAR_CHUNK / dim).max(1))
            .map(|(y_row, x_row)| {
                let (mean, rstd) = row_statistics(x_row, eps);
                for (j, (y, &v)) in y_row.iter_mut().zip(x_row).enumerate() {
                    let normalised = (v - mean) * rstd;
                    *y = normalised * weight.map_or(1.0, |w| w[j]) + bias.map_or(0.0, |b| b[j]);
                }
                (mean, rstd)
            })
            .collect();
        let (mean, rstd): (Vec<f32>, Vec<f32>) = statistics.into_iter().unzip();
        Ok(LayerNormForward {
            output: Storage::cpu(y),
            mean: Storage::cpu(mean),
            rstd: Storage::cpu(rstd),
        })
    }

    fn layer_norm_backward(
        &self,
        x: &Storage,
        grad_out: &Storage,
        statistics: &LayerNormForward,
        weight: Option<&Storage>,
        layout: RowLayout,
    ) -> Result<LayerNormGrads> {
        const OP: &str = "layer_norm_backward";
        let (x, g) = (x.as_cpu(OP)?, grad_out.as_cpu(OP)?);
        let (mean, rstd) = (statistics.mean.as_cpu(OP)?, statistics.rstd.as_cpu(OP)?);
        let weight = weight.map(|w| w.as_cpu(OP)).transpose()?;
        let RowLayout { rows, dim } = layout;
        let mut grad_x = crate::backend::cpu::buffer_cache::zeroed(x.len());
        grad_x
            .par_chunks_mut(dim)
            .zip(x.par_chunks(dim).zip(g.par_chunks(dim)))
            .enumerate()
            .with_min_len((PAR_CHUNK / dim).max(1))
            .for_each(|(row, (dx_row, (x_row, g_row)))| {
                let (m, r) = (mean[row], rstd[row]);
                let scaled = |j: usize, g: f32| g * weight.map_or(1.0, |w| w[j]);
                // mean(ĝ) and mean(ĝ x̂) over the row, in f64.
                let (mut sum, mut sum_normalised) = (0.0f64, 0.0f64);
                for (j, (&v, &g)) in x_row.iter().zip(g_row).enumerate() {
                    let gw = scaled(j, g);
                    sum += f64::from(gw);
                    sum_normalised += f64::from(gw * ((v - m) * r));
                }
                let (mean_g, mean_gx) = (
                    (sum / dim as f64) as f32,
                    (sum_normalised / dim as f64) as f32,
                );
                for (j, (dx, (&v, &g))) in
                    dx_row.iter_mut().zip(x_row.iter().zip(g_row)).enumerate()
                {
                    let normalised = (v - m) * r;
                    *dx = r * (scaled(j, g) - mean_g - normalised * mean_gx);
                }
            });
        // Column sums over the rows: Σ g·x̂ and Σ g per element of the last axis.
        let sums = per_column_blocks(1, rows, dim, |_, first, width| {
            let mut sums = vec![(0.0f64, 0.0f64); width];
            for row in 0..rows {
                let start = offset(0, row, first, rows, dim);
                let (m, r) = (mean[row], rstd[row]);
                let values = x[start..start + width].iter().zip(&g[start..start + width]);
                for ((grad_w, grad_b), (&v, &g)) in sums.iter_mut().zip(values) {
                    *grad_w += f64::from(g * ((v - m) * r));
                    *grad_b += f64::from(g);
                }
            }
            Ok(sums)
        })?;
        let (grad_weight, grad_bias): (Vec<f32>, Vec<f32>) =
            sums.into_iter().map(|(w, b)| (w as f32, b as f32)).unzip();
        Ok(LayerNormGrads {
            input: Storage::cpu(grad_x),
            weight: Storage::cpu(grad_weight),
            bias: Storage::cpu(grad_bias),
        })
    }
}

/// A row's mean and `1/√(σ² + eps)` (biased variance), two passes in f64.
fn row_statistics(row: &[f32], eps: f32) -> (f32, f32) {
    let count = row.len() as f64;
    let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / count;
    let var = row
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / count;
    (mean as f32, (1.0 / (var + f64::from(eps)).sqrt()) as f32)
}
