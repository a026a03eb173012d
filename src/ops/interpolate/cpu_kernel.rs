//! CPU kernels of the resize family.
//!
//! Both modes are separable: each output row and column reads `T` input rows / columns with
//! fixed weights ([`Taps`], `T = 2` for bilinear, `T = 1` for nearest), computed once per axis in
//! f32 exactly as PyTorch does. The forward runs in parallel over output rows; the backward
//! scatters into the input, one task per (n, c) plane, so it is deterministic.

use super::{InterpolateBackend, InterpolateGeometry, InterpolateMode};
use crate::backend::cpu::{CpuBackend, PAR_CHUNK};
use crate::error::Result;
use crate::tensor::Storage;
use rayon::prelude::*;

/// The `T` input positions one output position reads along an axis, and their weights.
#[derive(Clone, Copy, Debug)]
struct Taps<const T: usize> {
    index: [usize; T],
    weight: [f32; T],
}

/// PyTorch's `compute_scales_value`: `1/scale` when the size came from a scale, else `in/out`.
fn source_step(input: usize, output: usize, scale: Option<f64>) -> f32 {
    match scale {
        Some(s) if s > 0.0 => (1.0 / s) as f32,
        _ => input as f32 / output as f32,
    }
}

/// Bilinear taps (PyTorch's `compute_source_index_and_lambda`): the source coordinate's floor
/// and its right neighbour (clamped), weighted `1 − λ` and `λ`.
fn linear_taps(
    input: usize,
    output: usize,
    align_corners: bool,
    scale: Option<f64>,
) -> Vec<Taps<2>> {
    if input == output {
        return (0..output)
            .map(|o| Taps {
                index: [o, o],
                weight: [1.0, 0.0],
            })
            .collect();
    }
    let step = if align_corners {
        if output > 1 {
            (input - 1) as f32 / (output - 1) as f32
        } else {
            0.0
        }
    } else {
        source_step(input, output, scale)
    };
    (0..output)
        .map(|o| {
            let source = if align_corners {
                step * o as f32
            } else {
                let s = step * (o as f32 + 0.5) - 0.5;
                if s < 0.0 {
                    0.0
                } else {
                    s
                }
            };
            let low = (source.floor() as usize).min(input - 1);
            let lambda = (source - low as f32).clamp(0.0, 1.0);
            let high = if low < input - 1 { low + 1 } else { low };
            Taps {
                index: [low, high],
                weight: [1.0 - lambda, lambda],
            }
        })
        .collect()
}

/// Nearest taps (PyTorch's `nearest_idx`): a copy when sizes match, `o/2` when doubling, else
/// `min(⌊o·step⌋, in−1)`.
fn nearest_taps(input: usize, output: usize, scale: Option<f64>) -> Vec<Taps<1>> {
    let step = source_step(input, output, scale);
    (0..output)
        .map(|o| {
            let index = if output == input {
                o
            } else if output == 2 * input {
                o >> 1
            } else {
                ((o as f32 * step).floor() as usize).min(input - 1)
            };
            Taps {
                index: [index],
                weight: [1.0],
            }
        })
        .collect()
}

/// `Σ_a value(a) · weights[a]`, accumulated in tap order like PyTorch.
#[inline]
fn weighted_sum<const T: usize>(weights: &[f32; T], value: impl Fn(usize) -> f32) -> f32 {
    let mut sum = value(0) * weights[0];
    for (a, &w) in weights.iter().enumerate().skip(1) {
        sum += value(a) * w;
    }
    sum
}

/// `out[p, i, j] = Σ_a Σ_b rows[i].w[a] · cols[j].w[b] · x[p, rows[i].index[a], cols[j].index[b]]`
/// (columns first), row-parallel.
fn resample<const T: usize>(
    x: &[f32],
    geometry: &InterpolateGeometry,
    rows: &[Taps<T>],
    cols: &[Taps<T>],
) -> Vec<f32> {
    let [in_h, in_w] = geometry.input;
    let [out_h, out_w] = geometry.output;
    let mut out = crate::backend::cpu::buffer_cache::zeroed(geometry.planes * out_h * out_w);
    out.par_chunks_mut(out_w)
        .enumerate()
        .with_min_len((PAR_CHUNK / (out_w * T * T)).max(1))
        .for_each(|(row, out_row)| {
            let plane = &x[(row / out_h) * in_h * in_w..][..in_h * in_w];
            let taps_h = &rows[row % out_h];
            let lines: [&[f32]; T] =
                std::array::from_fn(|a| &plane[taps_h.index[a] * in_w..][..in_w]);
            for (out, taps_w) in out_row.iter_mut().zip(cols) {
                *out = weighted_sum(&taps_h.weight, |a| {
                    weighted_sum(&taps_w.weight, |b| lines[a][taps_w.index[b]])
                });
            }
        });
    out
}

/// Gradient of [`resample`]: `grad_in[p, rows[i].index[a], cols[j].index[b]] +=
/// rows[i].w[a] · cols[j].w[b] · grad_out[p, i, j]`, one task per plane.
fn resample_backward<const T: usize>(
    grad_out: &[f32],
    geometry: &InterpolateGeometry,
    rows: &[Taps<T>],
    cols: &[Taps<T>],
) -> Vec<f32> {
    let [in_h, in_w] = geometry.input;
    let [out_h, out_w] = geometry.output;
    let mut grad_in = crate::backend::cpu::buffer_cache::zeroed(geometry.planes * in_h * in_w);
    grad_in
        .par_chunks_mut(in_h * in_w)
        .zip(grad_out.par_chunks(out_h * out_w))
        .for_each(|(plane, grad_plane)| {
            for (taps_h, grad_row) in rows.iter().zip(grad_plane.chunks(out_w)) {
                for (taps_w, &g) in cols.iter().zip(grad_row) {
                    for a in 0..T {
                        let line = &mut plane[taps_h.index[a] * in_w..][..in_w];
                        for b in 0..T {
                            line[taps_w.index[b]] += taps_h.weight[a] * taps_w.weight[b] * g;
                        }
                    }
                }
            }
        });
    grad_in
}

/// Which way [`resize_planes`] runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Forward,
    Backward,
}

/// Builds the mode's per-axis taps and runs the forward resample or its gradient.
fn resize_planes(data: &[f32], geometry: &InterpolateGeometry, pass: Pass) -> Vec<f32> {
    fn run<const T: usize>(
        data: &[f32],
        geometry: &InterpolateGeometry,
        pass: Pass,
        taps: impl Fn(usize) -> Vec<Taps<T>>,
    ) -> Vec<f32> {
        let (rows, cols) = (taps(0), taps(1));
        match pass {
            Pass::Forward => resample(data, geometry, &rows, &cols),
            Pass::Backward => resample_backward(data, geometry, &rows, &cols),
        }
    }
    let g = geometry;
    match g.mode {
        InterpolateMode::Nearest => run(data, g, pass, |a| {
            nearest_taps(g.input[a], g.output[a], g.scales[a])
        }),
        InterpolateMode::Bilinear { align_corners } => run(data, g, pass, |a| {
            linear_taps(g.input[a], g.output[a], align_corners, g.scales[a])
        }),
    }
}

impl InterpolateBackend for CpuBackend {
    fn interpolate(&self, x: &Storage, geometry: InterpolateGeometry) -> Result<Storage> {
        let x = x.as_cpu("interpolate")?;
        Ok(Storage::cpu(resize_planes(x, &geometry, Pass::Forward)))
    }

    fn interpolate_backward(
        &self,
        grad_out: &Storage,
        geometry: InterpolateGeometry,
    ) -> Result<Storage> {
        let grad_out = grad_out.as_cpu("interpolate_backward")?;
        Ok(Storage::cpu(resize_planes(
            grad_out,
            &geometry,
            Pass::Backward,
        )))
    }
}
