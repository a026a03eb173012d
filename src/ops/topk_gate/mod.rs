//! Fused top-k gating of the MoE router (moe.md §1.4): softmax over the experts, the choice of
//! `k` experts per token (ties to the lower index, optional per-expert capacity), the
//! renormalised routing weights and per-expert counts, in one forward kernel; and the weights'
//! backward.
//!
//! For logits `[T, E]`: `p = softmax(logits)` per token, `idx[t, 0..k]` the chosen experts in
//! descending order of score, and
//! `w[t, j] = p[t, idx[t, j]] / (Σ_j' p[t, idx[t, j']] + eps)`. The 0/1 choice is a constant, so
//! gradients flow through `p` only. With `k = 1` and straight-through the forward weight is
//! exactly 1 and the backward treats it as `p[t, idx[t, 0]]`.
//!
//! Two graph nodes come out of the single forward: `probs` (input: the logits; backward: the
//! softmax family's kernel) and `weights` (input: `probs`; backward:
//! [`TopkGateBackend::routing_weights_backward`]), so losses on `probs` (balancing) and on the
//! layer output (through `weights`) both reach the logits.

mod cpu_kernel;
mod cuda_kernel;

use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// How the experts are chosen and weighted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TopkGateParams {
    /// Experts per token, `1 ≤ k ≤ E`.
    pub k: usize,
    /// Only with `k = 1`: forward weight exactly 1, backward as if the weight were `p`.
    pub straight_through: bool,
    /// Most assignments an expert takes (tokens are served in order, overflow goes to the
    /// next-best expert with room); 0 = no limit.
    pub capacity: usize,
    /// Added to the denominator of the renormalised weights (moe.md: 1e-5).
    pub eps: f32,
}

impl TopkGateParams {
    /// The layer's defaults for `k`: straight-through when `k = 1`, no capacity, eps 1e-5.
    pub fn new(k: usize) -> TopkGateParams {
        TopkGateParams {
            k,
            straight_through: k == 1,
            capacity: 0,
            eps: 1e-5,
        }
    }

    /// True when the weights use the straight-through estimator (`k = 1` and asked for).
    pub fn uses_straight_through(&self) -> bool {
        self.k == 1 && self.straight_through
    }
}

/// The routing of `T` tokens to `E` experts.
pub struct TopkGate {
    /// `[T, E]` `softmax(logits)`, differentiable (the balancing losses use it).
    pub probs: Tensor,
    /// `[T, k]` chosen experts (exact integers in f32), best first; no gradient.
    pub indices: Tensor,
    /// `[T, k]` routing weight of each chosen expert, differentiable through `probs`.
    pub weights: Tensor,
    /// `[E]` assignments per expert (`k` per token); no gradient.
    pub counts: Tensor,
    /// `[E]` tokens whose first choice `indices[t, 0]` is each expert (after any capacity
    /// re-assignment; the Switch loss's `f_e` and the TEC statistic); no gradient.
    pub top1_counts: Tensor,
}

/// The storages of one fused forward, shapes as in [`TopkGate`].
pub struct TopkGateStorages {
    /// `[T, E]` softmax of the logits.
    pub probs: Storage,
    /// `[T, k]` chosen experts.
    pub indices: Storage,
    /// `[T, k]` routing weights.
    pub weights: Storage,
    /// `[E]` assignments per expert.
    pub counts: Storage,
    /// `[E]` first choices per expert.
    pub top1_counts: Storage,
}

/// Kernels of this family. `tokens = T`, `experts = E`; all tensors row-major.
pub trait TopkGateBackend {
    /// Everything of the forward in one call: `probs = softmax(logits)` (stable, per token),
    /// the choice made on `selection` (or on `probs` when `None`), the weights and both count
    /// vectors (see the module doc).
    fn topk_gate_forward(
        &self,
        logits: &Storage,
        selection: Option<&Storage>,
        tokens: usize,
        experts: usize,
        params: TopkGateParams,
    ) -> Result<TopkGateStorages>;

    /// Gradient of the weights w.r.t. `probs` (`[T, E]`, zero off the chosen experts): with
    /// `S = Σ_j p[t, idx_j] + eps` and `w_j = p[t, idx_j] / S`,
    /// `grad_p[t, idx_m] = (g_m − Σ_j g_j w_j) / S`; straight-through: `grad_p[t, idx_0] = g_0`.
    fn routing_weights_backward(
        &self,
        grad_weights: &Storage,
        probs: &Storage,
        indices: &Storage,
        tokens: usize,
        experts: usize,
        params: TopkGateParams,
    ) -> Result<Storage>;
}

impl Tensor {
    /// Routes the tokens of these logits `[T, E]` (moe.md §1.4); see [`TopkGate`].
    ///
    /// `selection` (`[T, E]`, no gradient) are the scores the choice is made on (noisy top-k
    /// passes `p/std(p) + noise`); by default the choice is made on the probabilities. Per
    /// token the `k` highest scores win, in descending order, ties to the lower expert index;
    /// a NaN score counts as larger than every number (as in [`Tensor::topk`]). With a
    /// capacity `c > 0` tokens are served in order `t = 0..T`, each token's slots in rank
    /// order, each slot taking the best expert this token has not chosen yet whose count is
    /// below `c`; when no such expert is left (always when `c·E < k·T`, and in rare greedy
    /// dead ends for `k > 1`) the slot takes the best expert not chosen yet, over capacity, so
    /// no token is dropped (as the PyTorch reference in `scripts/fixtures/moe.py`).
    pub fn topk_gate(
        &self,
        params: TopkGateParams,
        selection: Option<&Tensor>,
    ) -> Result<TopkGate> {
        const OP: &str = "topk_gate";
        self.expect_rank(OP, "logits", 2)?;
        let (tokens, experts) = (self.dims()[0], self.dims()[1]);
        check_params(params, experts)?;
        if let Some(selection) = selection {
            self.same_device(OP, selection)?;
            if selection.shape() != self.shape() {
                return Err(Error::shape(
                    OP,
                    format!(
                        "selection scores have shape {}, logits {}",
                        selection.shape(),
                        self.shape()
                    ),
                ));
            }
        }
        let selection_storage = selection.map(Tensor::storage);
        let out = self.backend().topk_gate_forward(
            &self.storage(),
            selection_storage.as_ref(),
            tokens,
            experts,
            params,
        )?;

        let saved_probs = Tensor::from_storage(out.probs.clone(), [tokens, experts])?;
        let probs = Tensor::from_op(
            "topk_gate_softmax",
            out.probs,
            [tokens, experts],
            &[self],
            move || {
                Box::new(move |g: &Tensor, _: &[bool]| {
                    let grad = g.backend().softmax_backward(
                        &saved_probs.storage(),
                        &g.storage(),
                        tokens,
                        experts,
                        1,
                        false,
                    )?;
                    Ok(vec![Some(Tensor::from_storage(grad, g.shape().clone())?)])
                })
            },
        )?;
        let indices = Tensor::from_storage(out.indices, [tokens, params.k])?;
        let (saved_probs, saved_indices) = (probs.detach(), indices.clone());
        let weights = Tensor::from_op(
            "routing_weights",
            out.weights,
            [tokens, params.k],
            &[&probs],
            move || {
                Box::new(move |g: &Tensor, _: &[bool]| {
                    let grad = g.backend().routing_weights_backward(
                        &g.storage(),
                        &saved_probs.storage(),
                        &saved_indices.storage(),
                        tokens,
                        experts,
                        params,
                    )?;
                    Ok(vec![Some(Tensor::from_storage(grad, [tokens, experts])?)])
                })
            },
        )?;
        Ok(TopkGate {
            probs,
            indices,
            weights,
            counts: Tensor::from_storage(out.counts, [experts])?,
            top1_counts: Tensor::from_storage(out.top1_counts, [experts])?,
        })
    }
}

/// Checks `k` and `eps`. Any capacity is accepted: when a token finds every unchosen expert
/// full, it goes over capacity rather than being dropped.
fn check_params(params: TopkGateParams, experts: usize) -> Result<()> {
    const OP: &str = "topk_gate";
    let TopkGateParams { k, eps, .. } = params;
    if k == 0 || k > experts {
        return Err(Error::invalid(
            OP,
            format!("k = {k} must be between 1 and the number of experts E = {experts}"),
        ));
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(Error::invalid(
            OP,
            format!("eps = {eps} must be finite and non-negative"),
        ));
    }
    Ok(())
}
