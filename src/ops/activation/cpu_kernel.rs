//! CPU kernels of the activation family. gelu is evaluated in f64 with `libm::erf` (fdlibm's erf,
//! error below 1 ulp of f64) and rounded once to f32.

use super::{Activation, ActivationBackend, ChannelLayout};
use crate::backend::cpu::{map_binary, map_unary, CpuBackend, PAR_CHUNK};
use crate::error::Result;
use crate::tensor::Storage;
use rayon::prelude::*;

fn relu(x: f32) -> f32 {
    x.max(0.0)
}

/// ReLU's gradient from its saved output (0 at the kink, as PyTorch).
fn relu_backward(saved: f32, g: f32) -> f32 {
    if saved > 0.0 {
        g
    } else {
        0.0
    }
}

fn hardswish(x: f32) -> f32 {
    x * (x + 3.0).clamp(0.0, 6.0) / 6.0
}

fn hardsigmoid(x: f32) -> f32 {
    (x + 3.0).clamp(0.0, 6.0) / 6.0
}

/// Hardswish's gradient from its saved input (PyTorch's choices at ±3).
fn hardswish_backward(saved: f32, g: f32) -> f32 {
    if saved <= -3.0 {
        0.0
    } else if saved < 3.0 {
        g * (saved / 3.0 + 0.5)
    } else {
        g
    }
}

/// Hardsigmoid's gradient from its saved input (0 at ±3, as PyTorch).
fn hardsigmoid_backward(saved: f32, g: f32) -> f32 {
    if saved > -3.0 && saved < 3.0 {
        g / 6.0
    } else {
        0.0
    }
}

fn forward_fn(op: Activation) -> impl Fn(f32) -> f32 + Sync {
    move |x: f32| match op {
        Activation::Relu => relu(x),
        Activation::LeakyRelu { negative_slope } => {
            if x > 0.0 {
                x
            } else {
                x * negative_slope
            }
        }
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Tanh => x.tanh(),
        Activation::Hardswish => hardswish(x),
        Activation::Hardsigmoid => hardsigmoid(x),
        Activation::Gelu | Activation::GeluTanh => {
            let (x, (cdf, _)) = (f64::from(x), gelu_cdf_and_slope(op, f64::from(x)));
            (x * cdf) as f32
        }
    }
}

/// `√(2/π)`, the slope of the tanh approximation's argument.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of the tanh approximation.
const GELU_TANH_CUBIC: f64 = 0.044_715;

/// For gelu `x ↦ x · c(x)`: `(c(x), c'(x))`, so that `gelu'(x) = c(x) + x · c'(x)`.
/// Exact: `c = Φ(x) = (1 + erf(x/√2)) / 2`, `c' = φ(x) = e^(−x²/2) / √(2π)`.
/// Tanh: `c = (1 + tanh u) / 2`, `c' = (1 − tanh² u) · √(2/π) · (1 + 3 · 0.044715 x²) / 2`
/// with `u = √(2/π) · (x + 0.044715 x³)`.
fn gelu_cdf_and_slope(op: Activation, x: f64) -> (f64, f64) {
    if op == Activation::GeluTanh {
        let t = (SQRT_2_OVER_PI * (x + GELU_TANH_CUBIC * x * x * x)).tanh();
        let slope = 0.5 * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_CUBIC * x * x);
        (0.5 * (1.0 + t), slope)
    } else {
        let cdf = 0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2));
        let density = (-0.5 * x * x).exp()
            * (0.5 * std::f64::consts::FRAC_2_SQRT_PI)
            * std::f64::consts::FRAC_1_SQRT_2;
        (cdf, density)
    }
}

/// `(saved, grad_out) ↦ grad_in`, with PyTorch's choices at the kinks.
fn backward_fn(op: Activation) -> impl Fn(f32, f32) -> f32 + Sync {
    move |saved: f32, g: f32| match op {
        Activation::Relu => relu_backward(saved, g),
        Activation::LeakyRelu { negative_slope } => {
            if saved > 0.0 {
                g
            } else {
                g * negative_slope
            }
        }
        Activation::Sigmoid => g * saved * (1.0 - saved),
        Activation::Tanh => g * (1.0 - saved * saved),
        Activation::Hardswish => hardswish_backward(saved, g),
        Activation::Hardsigmoid => hardsigmoid_backward(saved, g),
        Activation::Gelu | Activation::GeluTanh => {
            let x = f64::from(saved);
            let (cdf, slope) = gelu_cdf_and_slope(op, x);
            (f64::from(g) * (cdf + x * slope)) as f32
        }
    }
}

/// Splits the flat range `start..start + len` of a `[outer, channels, inner]` tensor into runs
/// that stay within one channel, calling `f(channel, offset_in_range, run_len)` for each.
fn for_each_channel_run(
    layout: ChannelLayout,
    start: usize,
    len: usize,
    mut f: impl FnMut(usize, usize, usize),
) {
    let end = start + len;
    let mut pos = start;
    while pos < end {
        let row = pos / layout.inner;
        let run_end = ((row + 1) * layout.inner).min(end);
        f(row % layout.channels, pos - start, run_end - pos);
        pos = run_end;
    }
}

impl ActivationBackend for CpuBackend {
    fn activation_forward(&self, op: Activation, x: &Storage) -> Result<Storage> {
        let x = x.as_cpu("activation")?;
        // The common activations get loops of their own (vectorised); the general closure
        // matches `op` per element.
        Ok(Storage::cpu(match op {
            Activation::Relu => map_unary(x, relu),
            Activation::Hardswish => map_unary(x, hardswish),
            Activation::Hardsigmoid => map_unary(x, hardsigmoid),
            _ => map_unary(x, forward_fn(op)),
        }))
    }

    fn activation_backward(
        &self,
        op: Activation,
        saved: &Storage,
        grad_out: &Storage,
    ) -> Result<Storage> {
        let (saved, grad_out) = (
            saved.as_cpu("activation_backward")?,
            grad_out.as_cpu("activation_backward")?,
        );
        Ok(Storage::cpu(match op {
            Activation::Relu => map_binary(saved, grad_out, relu_backward),
            Activation::Hardswish => map_binary(saved, grad_out, hardswish_backward),
            Activation::Hardsigmoid => map_binary(saved, grad_out, hardsigmoid_backward),
            _ => map_binary(saved, grad_out, backward_fn(op)),
        }))
    }

    fn prelu_forward(
        &self,
        x: &Storage,
        weight: &Storage,
        layout: ChannelLayout,
    ) -> Result<Storage> {
        let (x, w) = (x.as_cpu("prelu")?, weight.as_cpu("prelu")?);
        let mut out = crate::backend::cpu::buffer_cache::zeroed(x.len());
        out.par_chunks_mut(PAR_CHUNK)
            .enumerate()
            .for_each(|(chunk, out)| {
                let start = chunk * PAR_CHUNK;
                for_each_channel_run(layout, start, out.len(), |c, offset, len| {
                    let slope = w[c];
                    let src = &x[start + offset..start + offset + len];
                    for (o, &v) in out[offset..offset + len].iter_mut().zip(src) {
                        *o = if v > 0.0 { v } else { slope * v };
                    }
                });
            });
        Ok(Storage::cpu(out))
    }

    fn prelu_backward(
        &self,
        x: &Storage,
        weight: &Storage,
        grad_out: &Storage,
        layout: ChannelLayout,
    ) -> Result<(Storage, Storage)> {
        let (x, w, g) = (
            x.as_cpu("prelu_backward")?,
            weight.as_cpu("prelu_backward")?,
            grad_out.as_cpu("prelu_backward")?,
        );
        let mut grad_x = crate::backend::cpu::buffer_cache::zeroed(x.len());
        // One pass: each chunk writes its grad_x and returns its per-channel weight partials.
        let grad_w = grad_x
            .par_chunks_mut(PAR_CHUNK)
            .enumerate()
            .map(|(chunk, out)| {
                let start = chunk * PAR_CHUNK;
                let mut partial = vec![0.0f64; layout.channels];
                for_each_channel_run(layout, start, out.len(), |c, offset, len| {
                    let range = start + offset..start + offset + len;
                    let mut acc = 0.0f32;
                    for ((o, &v), &g) in out[offset..offset + len]
                        .iter_mut()
                        .zip(&x[range.clone()])
                        .zip(&g[range])
                    {
                        if v > 0.0 {
                            *o = g;
                        } else {
                            *o = w[c] * g;
                            acc += v * g;
                        }
                    }
                    partial[c] += acc as f64;
                });
                partial
            })
            .reduce(
                || vec![0.0f64; layout.channels],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        let grad_w = grad_w.into_iter().map(|v| v as f32).collect();
        Ok((Storage::cpu(grad_x), Storage::cpu(grad_w)))
    }
}
