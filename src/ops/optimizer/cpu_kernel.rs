//! CPU kernels of this family: one parallel pass over the elements computing every output.
//! `mul_add` marks each fused multiply-add of PyTorch's kernels (a libm call unless the build
//! enables the `fma` target feature).

use super::{AdamHyper, AdamMoments, OptimizerBackend, SgdHyper};
use crate::backend::cpu::{buffer_cache, CpuBackend, PAR_CHUNK};
use crate::error::{Error, Result};
use crate::tensor::Storage;
use rayon::prelude::*;

/// `outputs[k][i] = f(inputs[·][i])[k]` for equally long inputs, in parallel chunks: one pass
/// that reads each operand once and writes every new buffer.
fn fused_map<const I: usize, const O: usize>(
    inputs: [&[f32]; I],
    f: impl Fn([f32; I]) -> [f32; O] + Sync,
) -> [Vec<f32>; O] {
    let len = inputs.first().map_or(0, |x| x.len());
    let mut outputs: [Vec<f32>; O] = std::array::from_fn(|_| buffer_cache::uninit(len));
    let mut chunk_iters = outputs.each_mut().map(|o| o.chunks_mut(PAR_CHUNK));
    let blocks: Vec<[&mut [f32]; O]> = (0..len.div_ceil(PAR_CHUNK))
        .map(|_| {
            chunk_iters
                .each_mut()
                .map(|chunks| chunks.next().unwrap_or_default())
        })
        .collect();
    blocks
        .into_par_iter()
        .enumerate()
        .for_each(|(block, mut outs)| {
            let start = block * PAR_CHUNK;
            let end = (start + PAR_CHUNK).min(len);
            let ins = inputs.map(|x| &x[start..end]);
            for i in 0..end - start {
                let values = f(ins.map(|x| x[i]));
                for (out, value) in outs.iter_mut().zip(values) {
                    out[i] = value;
                }
            }
        });
    outputs
}

/// The host slices of `operands`, checked to have `len` elements each.
fn host_slices<'a, const N: usize>(
    op: &'static str,
    len: usize,
    operands: [(&str, &'a Storage); N],
) -> Result<[&'a [f32]; N]> {
    let mut out: [&[f32]; N] = [&[]; N];
    for (slot, (name, storage)) in out.iter_mut().zip(operands) {
        let data = storage.as_cpu(op)?;
        if data.len() != len {
            return Err(Error::shape(
                op,
                format!("{name} has {} elements, the parameter {len}", data.len()),
            ));
        }
        *slot = data;
    }
    Ok(out)
}

/// PyTorch's `lerp(start, end, weight)`: the form that is exact at the nearer end.
fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        weight.mul_add(end - start, start)
    } else {
        (start - end).mul_add(1.0 - weight, end)
    }
}

impl OptimizerBackend for CpuBackend {
    fn sgd_update(
        &self,
        hyper: SgdHyper,
        param: &Storage,
        grad: &Storage,
        momentum_buffer: Option<&Storage>,
    ) -> Result<(Storage, Option<Storage>)> {
        const OP: &str = "sgd_update";
        let s = hyper.scalars();
        let [p, g] = host_slices(OP, param.len(), [("param", param), ("grad", grad)])?;
        let decayed = move |p: f32, g: f32| {
            if s.weight_decay != 0.0 {
                s.weight_decay.mul_add(p, g)
            } else {
                g
            }
        };
        // The step direction from the (weight-decayed) gradient and the new buffer.
        let direction = move |g: f32, buf: f32| {
            if hyper.nesterov {
                s.momentum.mul_add(buf, g)
            } else {
                buf
            }
        };
        if hyper.momentum == 0.0 {
            let [p] = fused_map([p, g], |[p, g]| [s.neg_lr.mul_add(decayed(p, g), p)]);
            return Ok((Storage::cpu(p), None));
        }
        let [p, buf] = match momentum_buffer {
            None => fused_map([p, g], |[p, g]| {
                let g = decayed(p, g);
                [s.neg_lr.mul_add(direction(g, g), p), g]
            }),
            Some(buf) => {
                let [buf] = host_slices(OP, param.len(), [("momentum buffer", buf)])?;
                fused_map([p, g, buf], |[p, g, buf]| {
                    let g = decayed(p, g);
                    let buf = s.grad_scale.mul_add(g, buf * s.momentum);
                    [s.neg_lr.mul_add(direction(g, buf), p), buf]
                })
            }
        };
        Ok((Storage::cpu(p), Some(Storage::cpu(buf))))
    }

    fn adam_update(
        &self,
        hyper: AdamHyper,
        param: &Storage,
        grad: &Storage,
        moments: &AdamMoments,
    ) -> Result<(Storage, AdamMoments)> {
        const OP: &str = "adam_update";
        let s = hyper.scalars();
        let [p, g, m, v] = host_slices(
            OP,
            param.len(),
            [
                ("param", param),
                ("grad", grad),
                ("exp_avg", &moments.exp_avg),
                ("exp_avg_sq", &moments.exp_avg_sq),
            ],
        )?;
        // Weight decay, moments and (given the normaliser v̂) the new parameter, in torch's order.
        let moments_of = move |p: f32, g: f32, m: f32, v: f32| {
            let g = if s.grad_weight_decay != 0.0 {
                s.grad_weight_decay.mul_add(p, g)
            } else {
                g
            };
            let m = lerp(m, g, s.one_minus_beta1);
            let v = (s.one_minus_beta2 * g).mul_add(g, v * s.beta2);
            (m, v)
        };
        let new_param = move |p: f32, m: f32, v_hat: f32| {
            let denom = v_hat.sqrt() / s.bias_correction2_sqrt + s.eps;
            p * s.param_scale + s.neg_step_size * m / denom
        };
        let max_exp_avg_sq = match (s.amsgrad, &moments.max_exp_avg_sq) {
            (false, _) => None,
            (true, Some(max)) => Some(host_slices(OP, param.len(), [("max_exp_avg_sq", max)])?),
            (true, None) => {
                return Err(Error::invalid(
                    OP,
                    "amsgrad needs the max_exp_avg_sq buffer",
                ));
            }
        };
        Ok(match max_exp_avg_sq {
            None => {
                let [p, m, v] = fused_map([p, g, m, v], |[p, g, m, v]| {
                    let (m, v) = moments_of(p, g, m, v);
                    [new_param(p, m, v), m, v]
                })
                .map(Storage::cpu);
                let new = AdamMoments {
                    exp_avg: m,
                    exp_avg_sq: v,
                    max_exp_avg_sq: None,
                };
                (p, new)
            }
            Some([max]) => {
                let [p, m, v, max] = fused_map([p, g, m, v, max], |[p, g, m, v, max]| {
                    let (m, v) = moments_of(p, g, m, v);
                    // torch.maximum: NaN wins.
                    let max = if v.is_nan() || v > max { v } else { max };
                    [new_param(p, m, max), m, v, max]
                })
                .map(Storage::cpu);
                let new = AdamMoments {
                    exp_avg: m,
                    exp_avg_sq: v,
                    max_exp_avg_sq: Some(max),
                };
                (p, new)
            }
        })
    }
}
