//! Softmax and log-softmax over an axis, numerically stable (the maximum is subtracted before
//! exponentiating).
//!
//! Kernels see the input as `[outer, size, inner]` around the axis; each `(outer, inner)`
//! column is normalised over its `size` entries. The family also has Soft-MoE's fused pair of
//! softmaxes over one logits tensor ([`soft_route`]).

pub(crate) mod cpu_kernel;
mod cuda_kernel;
pub mod soft_route;

pub use soft_route::RouteLayout;

use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// Kernels of this family.
pub trait SoftmaxBackend {
    /// `softmax(x)_s = e^(x_s − m) / Σ_t e^(x_t − m)` with `m = max_t x_t` along the middle
    /// axis, or its logarithm `x_s − m − ln Σ_t e^(x_t − m)` when `log`.
    fn softmax_forward(
        &self,
        x: &Storage,
        outer: usize,
        size: usize,
        inner: usize,
        log: bool,
    ) -> Result<Storage>;

    /// Gradient from the forward output `y`: `y ⊙ (g − Σ_s g_s y_s)` for softmax,
    /// `g − e^y Σ_s g_s` for log-softmax.
    fn softmax_backward(
        &self,
        y: &Storage,
        grad_out: &Storage,
        outer: usize,
        size: usize,
        inner: usize,
        log: bool,
    ) -> Result<Storage>;

    /// Soft-MoE routing weights from logits `[batch, tokens, slots]`: one
    /// `[2, batch, tokens, slots]` buffer holding the dispatch weights (softmax over the tokens)
    /// then the combine weights (softmax over the slots), from one pass of statistics.
    fn soft_route_forward(&self, logits: &Storage, layout: RouteLayout) -> Result<Storage>;

    /// Gradient of the logits from the forward's `routes = [D; C]` and their gradient
    /// `[g_D; g_C]` (same layout): `D ⊙ (g_D − Σ_tokens g_D D) + C ⊙ (g_C − Σ_slots g_C C)`.
    fn soft_route_backward(
        &self,
        routes: &Storage,
        grad_routes: &Storage,
        layout: RouteLayout,
    ) -> Result<Storage>;
}

impl Tensor {
    /// Softmax along `axis` (negative counts from the end).
    pub fn softmax(&self, axis: isize) -> Result<Tensor> {
        self.softmax_impl("softmax", axis, false)
    }

    /// Log-softmax along `axis` (negative counts from the end); more accurate than
    /// `softmax(axis).log()` for very negative log-probabilities.
    pub fn log_softmax(&self, axis: isize) -> Result<Tensor> {
        self.softmax_impl("log_softmax", axis, true)
    }

    fn softmax_impl(&self, op: &'static str, axis: isize, log: bool) -> Result<Tensor> {
        if self.rank() == 0 {
            return Err(Error::shape(
                op,
                "needs at least one dimension, got a rank-0 tensor",
            ));
        }
        let axis = self.shape().axis(op, axis)?;
        let (outer, size, inner) = self.shape().outer_size_inner(axis);
        let storage = self
            .backend()
            .softmax_forward(&self.storage(), outer, size, inner, log)?;
        let output = Tensor::from_storage(storage.clone(), self.shape().clone())?;
        Tensor::from_op(op, storage, self.shape().clone(), &[self], move || {
            Box::new(move |g: &Tensor, _: &[bool]| {
                let grad = g.backend().softmax_backward(
                    &output.storage(),
                    &g.storage(),
                    outer,
                    size,
                    inner,
                    log,
                )?;
                Ok(vec![Some(Tensor::from_storage(grad, g.shape().clone())?)])
            })
        })
    }
}
