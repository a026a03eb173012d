//! CPU kernels of the routed convolution.
//!
//! Every kernel starts from the [`RoutingPlan`] (assignments grouped by expert). An expert's
//! *columns* are the output positions of all its assignments, flattened `i·P + p` (i-th
//! assignment, position `p` of `P`); they are cut into [`ColumnTile`]s whose im2col buffer
//! stays within a fixed budget, and a tile may span several small tokens so the GEMMs stay
//! wide. Tasks (expert, tile) run in parallel; each builds its tile's im2col straight from the
//! tokens it covers (no per-expert copies of the tokens) and multiplies by the expert's weight.
//!
//! - forward: slot outputs `s[a] = W_e · col + b_e` written per assignment, then combined per
//!   token in slot order;
//! - tokens gradient: the adjoint of a VALID stride-1 conv is a fully padded conv with the
//!   flipped kernel, so it is the same expert engine run on `∂L/∂y` with flipped weights,
//!   combined with the routing weights;
//! - weights gradient: per expert, `Σ_tiles (w·∂L/∂y)[:, tile] · colᵀ`, tiles gathered into a
//!   fixed set of chunks whose partial sums are added in order (deterministic);
//! - biases and routing-weight gradients: per-token channel sums and dot products.

mod tiles;
mod weight_grad;

use super::{RoutedConvBackend, RoutedConvGeometry, RoutingPlan};
use crate::backend::cpu::gemm::{gemm, Operand};
use crate::backend::cpu::{buffer_cache, CpuBackend, SendPtr, PAR_CHUNK};
use crate::error::{Error, Result};
use crate::ops::conv::cpu::direct;
use crate::ops::conv::cpu::gemm_paths::{flipped_weight_into, scratch, COL_TILE_ELEMS};
use crate::ops::conv::cpu::im2col::for_each_tap_row;
use crate::ops::conv::{Conv2dGeometry, Conv2dParams};
use crate::tensor::Storage;
use rayon::prelude::*;
use std::ops::Range;
use tiles::*;
use weight_grad::*;

/// Fewest columns per tile (narrower GEMMs waste their packing).
const MIN_TILE_COLUMNS: usize = 64;

/// Budget (elements) for the per-chunk partial weight gradients.
const WEIGHT_PARTIALS_ELEMS: usize = 1 << 24;

impl RoutedConvBackend for CpuBackend {
    fn routed_conv_expert_outputs(
        &self,
        tokens: &Storage,
        weights: &Storage,
        biases: Option<&Storage>,
        indices: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        let op = "routed_conv_expert_outputs";
        let conv = geometry.token_conv();
        let plan = routing_plan(op, indices, &geometry)?;
        let tokens = cpu_slice(op, "tokens", tokens, geometry.tokens_len())?;
        let weights = cpu_slice(op, "weights", weights, stacked_weight_len(&geometry))?;
        let biases = biases
            .map(|b| cpu_slice(op, "biases", b, geometry.experts * geometry.out_channels))
            .transpose()?;
        let out = expert_convolutions(&conv, tokens, weights, biases, &plan);
        Ok(Storage::cpu(out))
    }

    fn routed_conv_combine(
        &self,
        slot_outputs: &Storage,
        routing_weights: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        let op = "routed_conv_combine";
        let slots = cpu_slice(
            op,
            "slot outputs",
            slot_outputs,
            geometry.slot_outputs_len(),
        )?;
        let routing = routing_slice(op, routing_weights, &geometry)?;
        let per_token = geometry.token_conv().output_len();
        Ok(Storage::cpu(combine(
            slots,
            routing,
            geometry.slots,
            per_token,
        )))
    }

    fn routed_conv_tokens_backward(
        &self,
        grad_out: &Storage,
        weights: &Storage,
        indices: &Storage,
        routing_weights: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        let op = "routed_conv_tokens_backward";
        let conv = geometry.token_conv();
        let plan = routing_plan(op, indices, &geometry)?;
        let grad_out = cpu_slice(op, "grad_out", grad_out, geometry.output_len())?;
        let weights = cpu_slice(op, "weights", weights, stacked_weight_len(&geometry))?;
        let routing = routing_slice(op, routing_weights, &geometry)?;
        // Linear in the weights: one adjoint convolution per token with its mixed expert
        // `Σ_j w[t, j] · W_{e(t, j)}` (flipped), written straight into the token gradient.
        let weight_len = geometry.expert_weight_len().max(1);
        let mut flipped = buffer_cache::uninit(weights.len());
        flipped
            .par_chunks_mut(weight_len)
            .zip(weights.par_chunks(weight_len))
            .for_each(|(dst, w)| flipped_weight_into(&conv, w, dst));
        let grad_tokens =
            mixed_token_convolutions(&adjoint(&conv), grad_out, &flipped, None, routing, &plan);
        buffer_cache::recycle(flipped);
        Ok(Storage::cpu(grad_tokens?))
    }

    fn routed_conv_expert_weights_backward(
        &self,
        grad_out: &Storage,
        tokens: &Storage,
        indices: &Storage,
        routing_weights: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        let op = "routed_conv_expert_weights_backward";
        let plan = routing_plan(op, indices, &geometry)?;
        let grad_out = cpu_slice(op, "grad_out", grad_out, geometry.output_len())?;
        let tokens = cpu_slice(op, "tokens", tokens, geometry.tokens_len())?;
        let routing = routing_slice(op, routing_weights, &geometry)?;
        let grad =
            expert_weight_gradients(&geometry.token_conv(), grad_out, tokens, routing, &plan);
        Ok(Storage::cpu(grad))
    }

    fn routed_conv_expert_biases_backward(
        &self,
        grad_out: &Storage,
        indices: &Storage,
        routing_weights: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        let op = "routed_conv_expert_biases_backward";
        let plan = routing_plan(op, indices, &geometry)?;
        let grad_out = cpu_slice(op, "grad_out", grad_out, geometry.output_len())?;
        let routing = routing_slice(op, routing_weights, &geometry)?;
        // s[t, o] = Σ_p ∂L/∂y[t, o, p], then ∂b_e[o] = Σ_{a of e, in order} w[a]·s[t(a), o].
        let sums = channel_sums(grad_out, &geometry);
        Ok(Storage::cpu(scatter_to_experts(
            &sums,
            routing,
            &plan,
            geometry.out_channels,
        )))
    }

    fn routed_conv_mixes_weights(&self, _geometry: &RoutedConvGeometry) -> bool {
        !crate::backend::cpu::portable_forced()
    }

    fn routed_conv_mixed_forward(
        &self,
        tokens: &Storage,
        weights: &Storage,
        biases: Option<&Storage>,
        indices: &Storage,
        routing_weights: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        let op = "routed_conv_mixed_forward";
        let plan = routing_plan(op, indices, &geometry)?;
        let tokens = cpu_slice(op, "tokens", tokens, geometry.tokens_len())?;
        let (weights, biases, routing) =
            expert_operands(op, weights, biases, routing_weights, &geometry)?;
        let mixed_biases = biases.map(|b| mix_rows(b, routing, &plan, geometry.out_channels));
        Ok(Storage::cpu(mixed_token_convolutions(
            &geometry.token_conv(),
            tokens,
            weights,
            mixed_biases.as_deref(),
            routing,
            &plan,
        )?))
    }

    /// The parameter gradients of the weight-mixing form, from the per-token weight gradient
    /// `G_t` (one pass per token, not per assignment) and channel sums `S_t`.
    #[allow(clippy::too_many_arguments)]
    fn routed_conv_mixed_parameter_grads(
        &self,
        grad_out: &Storage,
        tokens: &Storage,
        weights: &Storage,
        biases: Option<&Storage>,
        indices: &Storage,
        routing_weights: &Storage,
        geometry: RoutedConvGeometry,
        needs: [bool; 3],
    ) -> Result<[Option<Storage>; 3]> {
        let op = "routed_conv_mixed_parameter_grads";
        let conv = geometry.token_conv();
        let plan = routing_plan(op, indices, &geometry)?;
        let grad_out = cpu_slice(op, "grad_out", grad_out, geometry.output_len())?;
        let tokens = cpu_slice(op, "tokens", tokens, geometry.tokens_len())?;
        let (weights, biases, routing) =
            expert_operands(op, weights, biases, routing_weights, &geometry)?;
        let channels = geometry.out_channels;
        let weight_len = geometry.expert_weight_len();
        let (k, token_count) = (geometry.slots, geometry.tokens);
        // G_t: the unweighted weight gradient of every token (needed for ∂W and ∂w).
        let per_token = (needs[0] || needs[1]).then(|| {
            let ones = vec![1.0; token_count];
            let identity = token_plan(token_count)?;
            Ok::<_, Error>(expert_weight_gradients(
                &conv, grad_out, tokens, &ones, &identity,
            ))
        });
        let per_token = per_token.transpose()?;
        // S_t[o] = Σ_p ∂L/∂y[t, o, p] (needed for ∂b, and for ∂w when there are biases).
        let sums =
            (needs[2] || (needs[1] && biases.is_some())).then(|| channel_sums(grad_out, &geometry));
        let grad_weights = needs[0].then(|| {
            let g = per_token.as_deref().unwrap_or_default();
            Storage::cpu(scatter_to_experts(g, routing, &plan, weight_len))
        });
        let grad_routing = needs[1].then(|| {
            let g = per_token.as_deref().unwrap_or_default();
            let mut grad = buffer_cache::uninit(token_count * k);
            grad.par_iter_mut().enumerate().for_each(|(a, out)| {
                let (t, e) = (a / k, plan.expert_of(a));
                let w_e = &weights[e * weight_len..][..weight_len];
                let g_t = &g[t * weight_len..][..weight_len];
                let mut dot: f64 = w_e
                    .iter()
                    .zip(g_t)
                    .map(|(&w, &g)| w as f64 * g as f64)
                    .sum();
                if let (Some(b), Some(s)) = (biases, sums.as_deref()) {
                    dot += b[e * channels..][..channels]
                        .iter()
                        .zip(&s[t * channels..][..channels])
                        .map(|(&b, &s)| b as f64 * s as f64)
                        .sum::<f64>();
                }
                *out = dot as f32;
            });
            Storage::cpu(grad)
        });
        let grad_biases = needs[2].then(|| {
            let s = sums.as_deref().unwrap_or_default();
            Storage::cpu(scatter_to_experts(s, routing, &plan, channels))
        });
        if let Some(g) = per_token {
            buffer_cache::recycle(g);
        }
        Ok([grad_weights, grad_routing, grad_biases])
    }

    fn routed_conv_routing_weights_backward(
        &self,
        grad_out: &Storage,
        slot_outputs: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        let op = "routed_conv_routing_weights_backward";
        let grad_out = cpu_slice(op, "grad_out", grad_out, geometry.output_len())?;
        let slots = cpu_slice(
            op,
            "slot outputs",
            slot_outputs,
            geometry.slot_outputs_len(),
        )?;
        let per_token = geometry.token_conv().output_len();
        let k = geometry.slots;
        // ⟨∂L/∂y[t], s[t, j]⟩ over fixed chunks, each summed in f64, chunks added in order.
        let mut grad = buffer_cache::uninit(geometry.tokens * k);
        grad.par_iter_mut().enumerate().for_each(|(a, g)| {
            let dy = &grad_out[(a / k) * per_token..][..per_token];
            let s = &slots[a * per_token..][..per_token];
            let partials: Vec<f64> = dy
                .par_chunks(PAR_CHUNK)
                .zip(s.par_chunks(PAR_CHUNK))
                .map(|(x, y)| x.iter().zip(y).map(|(&x, &y)| x as f64 * y as f64).sum())
                .collect();
            *g = partials.iter().sum::<f64>() as f32;
        });
        Ok(Storage::cpu(grad))
    }
}

/// The experts' stacked weights, their biases (if any) and the routing weights.
type ExpertOperands<'a> = (&'a [f32], Option<&'a [f32]>, &'a [f32]);

/// [`ExpertOperands`] as host slices, each checked against `geometry`.
fn expert_operands<'a>(
    op: &'static str,
    weights: &'a Storage,
    biases: Option<&'a Storage>,
    routing_weights: &'a Storage,
    geometry: &RoutedConvGeometry,
) -> Result<ExpertOperands<'a>> {
    let weights = cpu_slice(op, "weights", weights, stacked_weight_len(geometry))?;
    let biases = biases
        .map(|b| cpu_slice(op, "biases", b, geometry.experts * geometry.out_channels))
        .transpose()?;
    let routing = routing_slice(op, routing_weights, geometry)?;
    Ok((weights, biases, routing))
}

/// `S[t, o] = Σ_p ∂L/∂y[t, o, p]`, `[T, Cout]`.
fn channel_sums(grad_out: &[f32], geometry: &RoutedConvGeometry) -> Vec<f32> {
    let pixels = geometry.out_size[0] * geometry.out_size[1];
    let mut sums = buffer_cache::uninit(geometry.tokens * geometry.out_channels);
    sums.par_iter_mut()
        .zip(grad_out.par_chunks(pixels.max(1)))
        .for_each(|(s, row)| *s = row.iter().sum());
    sums
}

/// `out[e] = Σ_{a of e, in order} w[a] · rows[t(a)]` for per-token rows of `len`, `[E, len]`.
fn scatter_to_experts(rows: &[f32], routing: &[f32], plan: &RoutingPlan, len: usize) -> Vec<f32> {
    let mut out = buffer_cache::zeroed(plan.experts() * len);
    out.par_chunks_mut(len.max(1))
        .enumerate()
        .for_each(|(e, out_e)| {
            for &a in plan.assignments_of(e) {
                let row = &rows[plan.token_of(a) * len..][..len];
                for (o, &r) in out_e.iter_mut().zip(row) {
                    *o += routing[a] * r;
                }
            }
        });
    out
}

/// `out[t] = Σ_j w[t, j] · rows[e(t, j)]` (slot order) for per-expert rows of `len`, `[T, len]`:
/// each token's mixed expert weights (or biases).
fn mix_rows(rows: &[f32], routing: &[f32], plan: &RoutingPlan, len: usize) -> Vec<f32> {
    let k = plan.slots();
    let tokens = routing.len() / k.max(1);
    let mut out = buffer_cache::uninit(tokens * len);
    out.par_chunks_mut(len.max(1))
        .enumerate()
        .for_each(|(t, out_t)| {
            out_t.fill(0.0);
            for j in 0..k {
                let a = t * k + j;
                let row = &rows[plan.expert_of(a) * len..][..len];
                for (o, &r) in out_t.iter_mut().zip(row) {
                    *o += routing[a] * r;
                }
            }
        });
    out
}

/// `out[t] = conv(source[t]; Σ_j w[t, j] · W_{e(t, j)}, bias[t])`: one convolution per token
/// with its mixed expert (`weights` `[E, weight_len]`, `mixed_biases` `[T, Cout]`). On the
/// direct kernel the experts are packed once and mixed in the packed layout (mixing is linear
/// and packing a permutation), so no per-token weight is ever repacked.
fn mixed_token_convolutions(
    conv: &Conv2dGeometry,
    source: &[f32],
    weights: &[f32],
    mixed_biases: Option<&[f32]>,
    routing: &[f32],
    plan: &RoutingPlan,
) -> Result<Vec<f32>> {
    let tokens = token_plan(routing.len() / plan.slots().max(1))?;
    if !direct::usable(conv) {
        let mixed = mix_rows(weights, routing, plan, conv.weight_len());
        return Ok(expert_convolutions(
            conv,
            source,
            &mixed,
            mixed_biases,
            &tokens,
        ));
    }
    let packed = pack_experts(conv, weights);
    let mixed = mix_rows(&packed, routing, plan, direct::packed_len(conv));
    buffer_cache::recycle(packed);
    let out = direct_packed_convolutions(conv, source, &mixed, mixed_biases, &tokens);
    buffer_cache::recycle(mixed);
    Ok(out)
}

/// Every expert's weight (`[E, weight_len]`) packed for the direct kernel, `[E, packed_len]`.
fn pack_experts(conv: &Conv2dGeometry, weights: &[f32]) -> Vec<f32> {
    let (weight_len, packed_len) = (conv.weight_len().max(1), direct::packed_len(conv).max(1));
    let mut packed = buffer_cache::uninit(weights.len() / weight_len * packed_len);
    packed
        .par_chunks_mut(packed_len)
        .zip(weights.par_chunks(weight_len))
        .for_each(|(dst, w)| direct::pack_weight_into(conv, w, dst));
    packed
}

/// The plan that routes token `t` to "expert" `t` (k = 1): runs per-token weights through the
/// expert convolution kernels.
fn token_plan(tokens: usize) -> Result<RoutingPlan> {
    let ids: Vec<f32> = (0..tokens).map(|t| t as f32).collect();
    RoutingPlan::new(&ids, tokens, 1, tokens)
}

/// The host slice of `storage`, checked to hold `len` elements.
fn cpu_slice<'a>(
    op: &'static str,
    name: &str,
    storage: &'a Storage,
    len: usize,
) -> Result<&'a [f32]> {
    let data = storage.as_cpu(op)?;
    if data.len() != len {
        return Err(Error::shape(
            op,
            format!("{name} has {} elements, expected {len}", data.len()),
        ));
    }
    Ok(data)
}

fn routing_plan(
    op: &'static str,
    indices: &Storage,
    geometry: &RoutedConvGeometry,
) -> Result<RoutingPlan> {
    let indices = cpu_slice(op, "indices", indices, routing_len(geometry))?;
    RoutingPlan::new(indices, geometry.tokens, geometry.slots, geometry.experts)
}

/// The routing weights `[T, k]` as a host slice, checked against `geometry`.
fn routing_slice<'a>(
    op: &'static str,
    routing_weights: &'a Storage,
    geometry: &RoutedConvGeometry,
) -> Result<&'a [f32]> {
    cpu_slice(
        op,
        "routing weights",
        routing_weights,
        routing_len(geometry),
    )
}

fn routing_len(geometry: &RoutedConvGeometry) -> usize {
    geometry.tokens * geometry.slots
}

fn stacked_weight_len(geometry: &RoutedConvGeometry) -> usize {
    geometry.experts * geometry.expert_weight_len()
}

/// The convolution whose forward is the input gradient of the VALID stride-1 `conv`: input
/// and output swap roles, padded by `dilation·(k − 1)` on every side (used with
/// [`flipped_weight`]).
fn adjoint(conv: &Conv2dGeometry) -> Conv2dGeometry {
    let [dh, dw] = conv.params.dilation;
    let reach = [dh * (conv.kernel[0] - 1), dw * (conv.kernel[1] - 1)];
    Conv2dGeometry {
        batch: 1,
        in_channels: conv.out_channels,
        in_size: conv.out_size,
        out_channels: conv.in_channels,
        kernel: conv.kernel,
        out_size: conv.in_size,
        params: Conv2dParams {
            padding: [reach[0], reach[0], reach[1], reach[1]],
            ..conv.params
        },
    }
}

/// `y[t] = Σ_j w[t, j] · slots[t, j]` for `[T, k, per_token]` slots, in slot order; parallel
/// over tokens and chunks of each token.
fn combine(slots: &[f32], routing: &[f32], k: usize, per_token: usize) -> Vec<f32> {
    let tokens = routing.len() / k.max(1);
    let mut out = buffer_cache::uninit(tokens * per_token);
    out.par_chunks_mut(per_token.max(1))
        .enumerate()
        .for_each(|(t, y)| {
            y.par_chunks_mut(PAR_CHUNK)
                .enumerate()
                .for_each(|(chunk, y)| {
                    y.fill(0.0);
                    for j in 0..k {
                        let w = routing[t * k + j];
                        let s = &slots[(t * k + j) * per_token + chunk * PAR_CHUNK..];
                        for (y, &s) in y.iter_mut().zip(s) {
                            *y += w * s;
                        }
                    }
                });
        });
    out
}
