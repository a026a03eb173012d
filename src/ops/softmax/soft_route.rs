//! Soft-MoE routing (Puigcerver et al., "From Sparse to Soft Mixtures of Experts"): from logits
//! `[batch, tokens, slots]`, the dispatch weights (softmax over the tokens, per slot) and the
//! combine weights (softmax over the slots, per token), both from one fused kernel pass.
//!
//! Both results live in one `[2, batch, tokens, slots]` buffer (dispatch, then combine) that is
//! a single node of the graph, so the backward is one kernel whatever outputs get gradients:
//! `∂logits = D ⊙ (g_D − Σ_tokens g_D ⊙ D) + C ⊙ (g_C − Σ_slots g_C ⊙ C)`.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Logits `[batch, tokens, slots]` of [`Tensor::soft_route`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteLayout {
    /// Independent routings.
    pub batch: usize,
    /// Tokens `m` (the dispatch softmax runs over them).
    pub tokens: usize,
    /// Slots `n · p` (the combine softmax runs over them).
    pub slots: usize,
}

impl RouteLayout {
    /// Elements of one of the two outputs.
    pub fn numel(&self) -> usize {
        self.batch * self.tokens * self.slots
    }
}

impl Tensor {
    /// `(dispatch, combine)` of Soft-MoE from logits `[batch, tokens, slots]`, both
    /// `[batch, tokens, slots]`: `dispatch = softmax(logits, axis 1)` (over the tokens, per
    /// slot), `combine = softmax(logits, axis 2)` (over the slots, per token). Differentiable
    /// through either or both.
    pub fn soft_route(&self) -> Result<(Tensor, Tensor)> {
        const OP: &str = "soft_route";
        let [batch, tokens, slots] = *self.dims() else {
            return Err(Error::shape(
                OP,
                format!(
                    "logits must be [batch, tokens, slots], got {}",
                    self.shape()
                ),
            ));
        };
        let layout = RouteLayout {
            batch,
            tokens,
            slots,
        };
        let storage = self.backend().soft_route_forward(&self.storage(), layout)?;
        let stacked = [2, batch, tokens, slots];
        let saved = Tensor::from_storage(storage.clone(), stacked)?;
        let routes = Tensor::from_op(OP, storage, stacked, &[self], move || {
            Box::new(move |g: &Tensor, _: &[bool]| {
                let grad =
                    g.backend()
                        .soft_route_backward(&saved.storage(), &g.storage(), layout)?;
                Ok(vec![Some(Tensor::from_storage(
                    grad,
                    [batch, tokens, slots],
                )?)])
            })
        })?;
        let half = |index: usize| routes.narrow(0, index, 1)?.squeeze(0);
        Ok((half(0)?, half(1)?))
    }
}
