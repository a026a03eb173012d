//! CPU kernels of the top-k gate. The forward runs per token in parallel (softmax, choice,
//! weights) except the choice under a capacity, which serves tokens one after another because
//! each token's room depends on the tokens before it.

use super::{TopkGateBackend, TopkGateParams, TopkGateStorages};
use crate::backend::cpu::{buffer_cache, CpuBackend, PAR_CHUNK};
use crate::error::{Error, Result};
use crate::tensor::Storage;
use rayon::prelude::*;

impl TopkGateBackend for CpuBackend {
    fn topk_gate_forward(
        &self,
        logits: &Storage,
        selection: Option<&Storage>,
        tokens: usize,
        experts: usize,
        params: TopkGateParams,
    ) -> Result<TopkGateStorages> {
        let logits = logits.as_cpu("topk_gate")?;
        let selection = selection.map(|s| s.as_cpu("topk_gate")).transpose()?;
        let k = params.k;
        if k == 0 || k > experts {
            return Err(Error::invalid(
                "topk_gate",
                format!("k = {k} must be between 1 and E = {experts}"),
            ));
        }
        let rows_per_task = (PAR_CHUNK / experts).max(1);

        let mut probs = buffer_cache::uninit(tokens * experts);
        probs
            .par_chunks_mut(experts)
            .zip(logits.par_chunks(experts))
            .with_min_len(rows_per_task)
            .for_each(|(p, x)| softmax_row(x, p));

        let scores: &[f32] = selection.unwrap_or(&probs);
        let mut indices = buffer_cache::uninit(tokens * k);
        if params.capacity == 0 {
            indices
                .par_chunks_mut(k)
                .zip(scores.par_chunks(experts))
                .with_min_len(rows_per_task)
                .for_each(|(chosen, row)| choose_experts(row, chosen, |_| true));
        } else {
            choose_with_capacity(scores, &mut indices, experts, params);
        }

        let mut weights = buffer_cache::uninit(tokens * k);
        weights
            .par_chunks_mut(k)
            .zip(indices.par_chunks(k))
            .zip(probs.par_chunks(experts))
            .with_min_len(rows_per_task)
            .for_each(|((w, chosen), p)| {
                if params.uses_straight_through() {
                    w.fill(1.0);
                } else {
                    let denominator = chosen_sum(p, chosen) + params.eps;
                    for (w, &e) in w.iter_mut().zip(chosen) {
                        *w = p[e as usize] / denominator;
                    }
                }
            });

        let mut counts = vec![0.0f32; experts];
        let mut top1_counts = vec![0.0f32; experts];
        for chosen in indices.chunks(k) {
            top1_counts[chosen[0] as usize] += 1.0;
            for &e in chosen {
                counts[e as usize] += 1.0;
            }
        }
        Ok(TopkGateStorages {
            probs: Storage::cpu(probs),
            indices: Storage::cpu(indices),
            weights: Storage::cpu(weights),
            counts: Storage::cpu(counts),
            top1_counts: Storage::cpu(top1_counts),
        })
    }

    fn routing_weights_backward(
        &self,
        grad_weights: &Storage,
        probs: &Storage,
        indices: &Storage,
        tokens: usize,
        experts: usize,
        params: TopkGateParams,
    ) -> Result<Storage> {
        let op = "routing_weights_backward";
        let (g, probs, indices) = (
            grad_weights.as_cpu(op)?,
            probs.as_cpu(op)?,
            indices.as_cpu(op)?,
        );
        let k = params.k;
        let mut out = buffer_cache::zeroed(tokens * experts);
        if k == 0 || experts == 0 {
            return Ok(Storage::cpu(out));
        }
        out.par_chunks_mut(experts)
            .zip(probs.par_chunks(experts))
            .zip(g.par_chunks(k).zip(indices.par_chunks(k)))
            .with_min_len((PAR_CHUNK / experts).max(1))
            .for_each(|((grad_p, p), (g, chosen))| {
                if params.uses_straight_through() {
                    grad_p[chosen[0] as usize] = g[0];
                    return;
                }
                let denominator = chosen_sum(p, chosen) + params.eps;
                let g_dot_w: f32 = g
                    .iter()
                    .zip(chosen)
                    .map(|(&g, &e)| g * (p[e as usize] / denominator))
                    .sum();
                for (&g, &e) in g.iter().zip(chosen) {
                    grad_p[e as usize] = (g - g_dot_w) / denominator;
                }
            });
        Ok(Storage::cpu(out))
    }
}

/// `p = e^(x − max x) / Σ e^(x − max x)`, summed in expert order as the softmax kernel does
/// (so `probs` equals `logits.softmax(-1)` bit for bit).
fn softmax_row(x: &[f32], p: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f32 = x.iter().map(|&v| (v - max).exp()).sum();
    for (p, &v) in p.iter_mut().zip(x) {
        *p = (v - max).exp() / sum;
    }
}

/// `Σ_j p[chosen[j]]` in slot order.
fn chosen_sum(p: &[f32], chosen: &[f32]) -> f32 {
    chosen.iter().map(|&e| p[e as usize]).sum()
}

/// True when score `a` ranks above `b`: larger, or NaN against a number (NaN counts as the
/// largest value, as in `Tensor::topk`).
fn ranks_above(a: f32, b: f32) -> bool {
    a > b || (a.is_nan() && !b.is_nan())
}

/// Fills `chosen` slot by slot with the highest-scoring expert of `scores` that is not chosen
/// yet and `has_room`; when every unchosen expert is full, the slot takes the highest-scoring
/// unchosen expert anyway (it goes over capacity: no token is ever dropped, moe.md §1.4, as in
/// the PyTorch reference `scripts/fixtures/moe.py`). Scanning experts in increasing order and
/// replacing only on a strictly better score sends ties to the lower index.
fn choose_experts(scores: &[f32], chosen: &mut [f32], has_room: impl Fn(usize) -> bool) {
    for slot in 0..chosen.len() {
        let best_where = |room_needed: bool| {
            let mut best: Option<usize> = None;
            for (e, &score) in scores.iter().enumerate() {
                let taken = chosen[..slot].iter().any(|&c| c as usize == e);
                if taken || (room_needed && !has_room(e)) {
                    continue;
                }
                if best.is_none_or(|b| ranks_above(score, scores[b])) {
                    best = Some(e);
                }
            }
            best
        };
        // k ≤ E is validated, so an unchosen expert always exists.
        let best = best_where(true).or_else(|| best_where(false)).unwrap_or(0);
        chosen[slot] = best as f32;
    }
}

/// The choice under a per-expert capacity: tokens in order, each slot taking the best expert
/// that still has room (overflow goes to the next-best expert with room; if none has room, to
/// the best unchosen one).
fn choose_with_capacity(
    scores: &[f32],
    indices: &mut [f32],
    experts: usize,
    params: TopkGateParams,
) {
    let mut load = vec![0usize; experts];
    for (chosen, row) in indices.chunks_mut(params.k).zip(scores.chunks(experts)) {
        choose_experts(row, chosen, |e| load[e] < params.capacity);
        for &e in chosen.iter() {
            load[e as usize] += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_gate_choice_breaks_ties_low_and_ranks_nan_first() {
        let mut chosen = [0.0; 3];
        choose_experts(&[0.5, 0.7, 0.7, 0.1], &mut chosen, |_| true);
        assert_eq!(chosen, [1.0, 2.0, 0.0]);
        choose_experts(&[0.5, f32::NAN, 0.9, f32::NAN], &mut chosen, |_| true);
        assert_eq!(chosen, [1.0, 3.0, 2.0]);
    }

    #[test]
    fn topk_gate_choice_skips_full_experts_then_falls_back_to_the_best_unchosen() {
        let mut chosen = [0.0; 2];
        choose_experts(&[0.9, 0.8, 0.1], &mut chosen, |e| e != 0);
        assert_eq!(chosen, [1.0, 2.0]);
        // Only expert 1 has room: slot 0 takes it, slot 1 falls back to the best of the rest.
        choose_experts(&[0.9, 0.8, 0.1], &mut chosen, |e| e == 1);
        assert_eq!(chosen, [1.0, 0.0]);
    }

    #[test]
    fn topk_gate_greedy_capacity_dead_end_overflows_instead_of_dropping() {
        // c·E = k·T = 6, yet the greedy order leaves token 2 only its own first choice with
        // room: its second slot goes over capacity to its best unchosen expert.
        let scores = [0.5, 0.3, 0.2, 0.5, 0.3, 0.2, 0.2, 0.3, 0.5];
        let mut indices = [0.0; 6];
        let params = TopkGateParams {
            capacity: 2,
            ..TopkGateParams::new(2)
        };
        choose_with_capacity(&scores, &mut indices, 3, params);
        assert_eq!(indices, [0.0, 1.0, 0.0, 1.0, 2.0, 1.0]);
    }
}
