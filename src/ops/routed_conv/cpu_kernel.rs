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

use super::{RoutedConvBackend, RoutedConvGeometry, RoutingPlan};
use crate::backend::cpu::gemm::{gemm, Operand};
use crate::backend::cpu::{pool, CpuBackend, SendPtr, PAR_CHUNK};
use crate::error::{Error, Result};
use crate::ops::conv::direct;
use crate::ops::conv::gemm_paths::{flipped_weight_into, scratch, COL_TILE_ELEMS};
use crate::ops::conv::im2col::for_each_tap_row;
use crate::ops::conv::{Conv2dGeometry, Conv2dParams};
use crate::tensor::Storage;
use rayon::prelude::*;
use std::ops::Range;

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
        let mut flipped = pool::uninit(weights.len());
        flipped
            .par_chunks_mut(weight_len)
            .zip(weights.par_chunks(weight_len))
            .for_each(|(dst, w)| flipped_weight_into(&conv, w, dst));
        let grad_tokens =
            mixed_token_convolutions(&adjoint(&conv), grad_out, &flipped, None, routing, &plan);
        pool::recycle(flipped);
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
            let mut grad = pool::uninit(token_count * k);
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
            pool::recycle(g);
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
        let mut grad = pool::uninit(geometry.tokens * k);
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
    let mut sums = pool::uninit(geometry.tokens * geometry.out_channels);
    sums.par_iter_mut()
        .zip(grad_out.par_chunks(pixels.max(1)))
        .for_each(|(s, row)| *s = row.iter().sum());
    sums
}

/// `out[e] = Σ_{a of e, in order} w[a] · rows[t(a)]` for per-token rows of `len`, `[E, len]`.
fn scatter_to_experts(rows: &[f32], routing: &[f32], plan: &RoutingPlan, len: usize) -> Vec<f32> {
    let mut out = pool::zeroed(plan.experts() * len);
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
    let mut out = pool::uninit(tokens * len);
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
    pool::recycle(packed);
    let out = direct_packed_convolutions(conv, source, &mixed, mixed_biases, &tokens);
    pool::recycle(mixed);
    Ok(out)
}

/// Every expert's weight (`[E, weight_len]`) packed for the direct kernel, `[E, packed_len]`.
fn pack_experts(conv: &Conv2dGeometry, weights: &[f32]) -> Vec<f32> {
    let (weight_len, packed_len) = (conv.weight_len().max(1), direct::packed_len(conv).max(1));
    let mut packed = pool::uninit(weights.len() / weight_len * packed_len);
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
    let mut out = pool::uninit(tokens * per_token);
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

/// A range of one expert's columns (`i·P + p`: position `p` of its i-th assignment).
#[derive(Clone, Debug)]
struct ColumnTile {
    expert: usize,
    columns: Range<usize>,
}

/// The part of a tile inside one assignment: positions `positions` of assignment `assignment`
/// (token `token`) are the tile's columns `offset..offset + positions.len()`.
#[derive(Clone, Debug)]
struct Segment {
    assignment: usize,
    token: usize,
    positions: Range<usize>,
    offset: usize,
}

/// All experts' columns cut into tiles of at most `tile_len` columns.
struct ColumnTiles {
    positions: usize,
    tiles: Vec<ColumnTile>,
}

impl ColumnTiles {
    /// Tiles whose im2col buffer (`col_rows` rows) stays within [`COL_TILE_ELEMS`] and, when
    /// there are enough columns, that give at least `min_tasks` tiles; aligned with tokens
    /// (several whole tokens, or equal parts of one), which keeps the GEMMs regular: tiles
    /// straddling token boundaries measured ~1.5× slower.
    fn new(plan: &RoutingPlan, positions: usize, col_rows: usize, min_tasks: usize) -> Self {
        let positions = positions.max(1);
        let columns = |e| plan.assignments_of(e).len() * positions;
        let total: usize = (0..plan.experts()).map(columns).sum();
        let by_memory = (COL_TILE_ELEMS / col_rows.max(1)).max(MIN_TILE_COLUMNS);
        let by_parallelism = total.div_ceil(min_tasks.max(1)).max(MIN_TILE_COLUMNS);
        let longest = by_memory.min(by_parallelism);
        // Align tiles with tokens: whole tokens when they fit, else equal parts of one token.
        let tile_len = if longest >= positions {
            longest / positions * positions
        } else {
            positions.div_ceil(positions.div_ceil(longest))
        };
        // Units of whole tokens, each cut into tiles (one per unit unless a token is split).
        let unit = tile_len.max(positions);
        let mut tiles = Vec::new();
        for expert in 0..plan.experts() {
            let end = columns(expert);
            for unit_start in (0..end).step_by(unit) {
                let unit_end = (unit_start + unit).min(end);
                for start in (unit_start..unit_end).step_by(tile_len) {
                    let columns = start..(start + tile_len).min(unit_end);
                    tiles.push(ColumnTile { expert, columns });
                }
            }
        }
        ColumnTiles { positions, tiles }
    }

    /// The segments of `tile`, in column order.
    fn segments(&self, plan: &RoutingPlan, tile: &ColumnTile) -> Vec<Segment> {
        let (p, Range { start, end }) = (self.positions, tile.columns.clone());
        let assignments = plan.assignments_of(tile.expert);
        (start / p..end.div_ceil(p))
            .map(|i| {
                let (first, last) = (start.max(i * p), end.min((i + 1) * p));
                let assignment = assignments[i];
                Segment {
                    assignment,
                    token: plan.token_of(assignment),
                    positions: first - i * p..last - i * p,
                    offset: first - start,
                }
            })
            .collect()
    }
}

/// The im2col matrix `[Cin/g · taps, cols]` of group `group` over a tile's segments, read
/// straight from `source` (`[T, Cin, in_pixels]`); zero where a tap falls in the padding.
fn im2col_tile(
    conv: &Conv2dGeometry,
    source: &[f32],
    group: usize,
    segments: &[Segment],
    cols: usize,
    col: &mut [f32],
) {
    let (in_group, taps, in_pixels) = (conv.in_channels_per_group(), conv.taps(), conv.in_pixels());
    let (out_width, in_width) = (conv.out_size[1], conv.in_size[1]);
    if conv.params.padding != [0; 4] {
        col.fill(0.0);
    }
    for seg in segments {
        let x = &source[(seg.token * conv.in_channels + group * in_group) * in_pixels..];
        for (plane, rows) in x
            .chunks(in_pixels)
            .zip(col.chunks_mut(taps * cols))
            .take(in_group)
        {
            for_each_tap_row(conv, seg.positions.clone(), |r| {
                let at =
                    r.tap * cols + seg.offset + r.oh * out_width + r.ow_start - seg.positions.start;
                rows[at..at + r.len()]
                    .copy_from_slice(&plane[r.ih * in_width + r.iw_start..][..r.len()]);
            });
        }
    }
}

/// Reusable per-worker buffers.
#[derive(Default)]
struct Scratch {
    col: Vec<f32>,
    block: Vec<f32>,
}

/// `out[a] = b_e + conv_e(source[token(a)])` for every assignment `a` of `plan` (shape
/// `[T·k, Cout, P]`, `conv` the per-token geometry): per (expert, tile) and group, im2col, one
/// GEMM `W_e,g · col`, and the block's pieces written to the assignments' output rows.
fn expert_convolutions(
    conv: &Conv2dGeometry,
    source: &[f32],
    weights: &[f32],
    biases: Option<&[f32]>,
    plan: &RoutingPlan,
) -> Vec<f32> {
    if direct::usable(conv) {
        return direct_expert_convolutions(conv, source, weights, biases, plan);
    }
    let (groups, k, weight_len) = (conv.params.groups, conv.col_rows(), conv.weight_len());
    let (out_group, pixels) = (conv.out_channels_per_group(), conv.out_pixels());
    let tiles = ColumnTiles::new(plan, pixels, k, 4 * rayon::current_num_threads());
    let mut out = pool::uninit(plan.assignment_count() * conv.output_len());
    let out_ptr = SendPtr(out.as_mut_ptr());
    tiles
        .tiles
        .par_iter()
        .for_each_init(Scratch::default, |buffers, tile| {
            let ptr = out_ptr; // the whole `SendPtr`, not its raw field
            let segments = tiles.segments(plan, tile);
            let cols = tile.columns.len();
            let weight = &weights[tile.expert * weight_len..][..weight_len];
            for group in 0..groups {
                let col = scratch(&mut buffers.col, k * cols);
                im2col_tile(conv, source, group, &segments, cols, col);
                let block = scratch(&mut buffers.block, out_group * cols);
                gemm(
                    out_group,
                    cols,
                    k,
                    Operand::plain(&weight[group * out_group * k..][..out_group * k]),
                    Operand::plain(&buffers.col[..k * cols]),
                    block,
                    0.0,
                );
                for seg in &segments {
                    for (o, values) in block.chunks(cols).enumerate() {
                        let channel = group * out_group + o;
                        let b =
                            biases.map_or(0.0, |b| b[tile.expert * conv.out_channels + channel]);
                        let at = (seg.assignment * conv.out_channels + channel) * pixels
                            + seg.positions.start;
                        let len = seg.positions.len();
                        // SAFETY: `at..at + len` lies inside `out` (assignment < T·k, channel <
                        // Cout, positions ⊂ 0..P), and each (assignment, channel, position) is
                        // written by exactly one task: the tile owning that column of the one
                        // expert the assignment is routed to. `out` outlives the loop.
                        let row = unsafe { std::slice::from_raw_parts_mut(ptr.0.add(at), len) };
                        for (y, &v) in row.iter_mut().zip(&values[seg.offset..seg.offset + len]) {
                            *y = v + b;
                        }
                    }
                }
            }
        });
    out
}

/// [`expert_convolutions`] on the direct stride-1 kernel: tasks (assignment, channel block, row
/// band) read the assignment's token in place and write its output rows.
fn direct_expert_convolutions(
    conv: &Conv2dGeometry,
    source: &[f32],
    weights: &[f32],
    biases: Option<&[f32]>,
    plan: &RoutingPlan,
) -> Vec<f32> {
    let packed = pack_experts(conv, weights);
    let out = direct_packed_convolutions(conv, source, &packed, biases, plan);
    pool::recycle(packed);
    out
}

/// [`direct_expert_convolutions`] from the experts' packed weights (`[E, packed_len]`, see
/// [`direct::pack_weight`]).
fn direct_packed_convolutions(
    conv: &Conv2dGeometry,
    source: &[f32],
    packed: &[f32],
    biases: Option<&[f32]>,
    plan: &RoutingPlan,
) -> Vec<f32> {
    let packed_len = direct::packed_len(conv);
    let (in_len, out_len) = (conv.input_len(), conv.output_len());
    let blocks = conv.params.groups * direct::blocks_per_group(conv);
    let bands = direct::task_bands(conv.out_size[0], plan.assignment_count() * blocks);
    // Band-major within an assignment, so the token rows in use stay in cache.
    let mut tasks = Vec::new();
    for expert in 0..plan.experts() {
        for &assignment in plan.assignments_of(expert) {
            for band in &bands {
                for block in 0..blocks {
                    tasks.push((expert, assignment, block, band.clone()));
                }
            }
        }
    }
    let mut out = pool::uninit(plan.assignment_count() * out_len);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let per_group = direct::blocks_per_group(conv);
    tasks
        .par_iter()
        .for_each(|(expert, assignment, block, rows)| {
            let ptr = out_ptr; // the whole `SendPtr`, not its raw field
            let token = plan.token_of(*assignment);
            let task = direct::BlockTask {
                group: block / per_group,
                block: block % per_group,
                rows: rows.clone(),
                x: &source[token * in_len..][..in_len],
                packed: &packed[expert * packed_len..][..packed_len],
                bias: biases.map(|b| &b[expert * conv.out_channels..][..conv.out_channels]),
            };
            // SAFETY: `direct::usable(conv)` holds; the task writes only its (block, rows) part of
            // assignment `assignment`'s output, and every (assignment, block, band) is one task.
            unsafe { task.run(conv, ptr.0.add(assignment * out_len)) };
        });
    out
}

/// `∂L/∂W_e = Σ_{a of e} w[a] · ∂L/∂y[t(a)] ⋆ im2col(tokens[t(a)])ᵀ`, `[E, weight_len]`: each
/// chunk of consecutive tiles of one expert accumulates a partial gradient, and each expert's
/// partials are added in chunk order.
fn expert_weight_gradients(
    conv: &Conv2dGeometry,
    grad_out: &[f32],
    tokens: &[f32],
    routing: &[f32],
    plan: &RoutingPlan,
) -> Vec<f32> {
    if direct::usable(conv) {
        return direct_expert_weight_gradients(conv, grad_out, tokens, routing, plan);
    }
    let threads = rayon::current_num_threads();
    let (groups, k, weight_len) = (conv.params.groups, conv.col_rows(), conv.weight_len());
    let (out_group, pixels) = (conv.out_channels_per_group(), conv.out_pixels());
    let tiles = ColumnTiles::new(plan, pixels, k, 2 * threads);
    let max_partials = (WEIGHT_PARTIALS_ELEMS / weight_len.max(1)).clamp(1, 2 * threads);
    let per_chunk = tiles.tiles.len().div_ceil(max_partials).max(1);
    // Chunks: runs of at most `per_chunk` consecutive tiles of the same expert.
    let mut chunks: Vec<(usize, Range<usize>)> = Vec::new();
    for (i, tile) in tiles.tiles.iter().enumerate() {
        match chunks.last_mut() {
            Some((e, range)) if *e == tile.expert && range.len() < per_chunk => range.end = i + 1,
            _ => chunks.push((tile.expert, i..i + 1)),
        }
    }
    let partials: Vec<Vec<f32>> = chunks
        .par_iter()
        .map(|(_, range)| {
            let mut partial = pool::zeroed(weight_len);
            let mut buffers = Scratch::default();
            for tile in &tiles.tiles[range.clone()] {
                let segments = tiles.segments(plan, tile);
                let cols = tile.columns.len();
                for group in 0..groups {
                    let col = scratch(&mut buffers.col, k * cols);
                    im2col_tile(conv, tokens, group, &segments, cols, col);
                    // (w·∂L/∂y)[group's channels, tile columns]
                    let block = scratch(&mut buffers.block, out_group * cols);
                    for seg in &segments {
                        let w = routing[seg.assignment];
                        let len = seg.positions.len();
                        for (o, row) in block.chunks_mut(cols).enumerate() {
                            let channel = group * out_group + o;
                            let dy = &grad_out[(seg.token * conv.out_channels + channel)
                                * pixels
                                + seg.positions.start..][..len];
                            for (b, &g) in row[seg.offset..seg.offset + len].iter_mut().zip(dy) {
                                *b = w * g;
                            }
                        }
                    }
                    gemm(
                        out_group,
                        k,
                        cols,
                        Operand::plain(&buffers.block[..out_group * cols]),
                        Operand::transposed(&buffers.col[..k * cols]),
                        &mut partial[group * out_group * k..][..out_group * k],
                        1.0,
                    );
                }
            }
            partial
        })
        .collect();
    let mut grad = pool::zeroed(plan.experts() * weight_len);
    grad.par_chunks_mut(weight_len.max(1))
        .enumerate()
        .for_each(|(e, grad_e)| {
            for ((_, _), partial) in chunks.iter().zip(&partials).filter(|((c, _), _)| *c == e) {
                for (g, &p) in grad_e.iter_mut().zip(partial) {
                    *g += p;
                }
            }
        });
    grad
}

/// [`expert_weight_gradients`] on the direct stride-1 kernel: tasks (expert, channel block, run
/// of `(ci, tap)` tiles) own their entries of `∂W_e` and add `w[a] · ∂L/∂y[t(a)] ⋆ x[t(a)]`
/// over the expert's assignments in order.
fn direct_expert_weight_gradients(
    conv: &Conv2dGeometry,
    grad_out: &[f32],
    tokens: &[f32],
    routing: &[f32],
    plan: &RoutingPlan,
) -> Vec<f32> {
    let weight_len = conv.weight_len();
    let (in_len, out_len) = (conv.input_len(), conv.output_len());
    let min_tasks = (4 * rayon::current_num_threads()).div_ceil(plan.experts().max(1));
    let per_expert = direct::grad_tasks(conv, min_tasks);
    let tasks: Vec<(usize, &direct::GradTask)> = (0..plan.experts())
        .flat_map(|e| per_expert.iter().map(move |t| (e, t)))
        .collect();
    let mut grad = pool::zeroed(plan.experts() * weight_len);
    let grad_ptr = SendPtr(grad.as_mut_ptr());
    tasks
        .par_iter()
        .for_each_init(Vec::new, |buffer, (expert, task)| {
            let ptr = grad_ptr; // the whole `SendPtr`, not its raw field
            for &assignment in plan.assignments_of(*expert) {
                let token = plan.token_of(assignment);
                let dy = &grad_out[token * out_len..][..out_len];
                let x = &tokens[token * in_len..][..in_len];
                // SAFETY: `direct::usable(conv)` holds; each task owns its entries of expert
                // `expert`'s gradient, and `grad` outlives the loop.
                unsafe {
                    let grad_e = ptr.0.add(expert * weight_len);
                    task.accumulate(conv, dy, x, routing[assignment], grad_e, buffer);
                }
            }
        });
    grad
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expert 0 has assignments 0, 2, 3 (three tokens of `positions` columns each).
    fn plan() -> RoutingPlan {
        RoutingPlan::new(&[0.0, 1.0, 0.0, 0.0], 4, 1, 2).unwrap()
    }

    #[test]
    fn small_tokens_share_tiles_and_large_ones_are_split() {
        // 40 positions, a memory bound of 87 columns: whole tokens, two per tile.
        let tiles = ColumnTiles::new(&plan(), 40, 3000, 1);
        let first = &tiles.tiles[0];
        assert_eq!((first.expert, first.columns.clone()), (0, 0..80));
        let segments = tiles.segments(&plan(), first);
        assert_eq!(segments.len(), 2);
        assert_eq!((segments[1].token, segments[1].offset), (2, 40));
        // 1000 positions with a 455-column memory bound: each token in 3 tiles of 334.
        let tiles = ColumnTiles::new(&plan(), 1000, 576, 1);
        let expert0: Vec<_> = tiles.tiles.iter().filter(|t| t.expert == 0).collect();
        assert_eq!(expert0.len(), 9);
        let segments = tiles.segments(&plan(), expert0[4]);
        assert_eq!(segments.len(), 1);
        assert_eq!(
            (segments[0].token, segments[0].positions.clone()),
            (2, 334..668)
        );
    }
}
