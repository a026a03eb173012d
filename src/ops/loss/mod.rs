//! Losses: fused cross-entropy over `[B, C]` or `[B, C, H, W]` logits (class axis 1) with an
//! ignore index and optional class weights, as `torch.nn.functional.cross_entropy`.
//!
//! Per position `p` with target `y`: `loss_p = w[y] · (ln Σ_c e^(x_c) − x_y)`, 0 where `y` is
//! the ignore index. The fused backward is `∂loss_p/∂x_c = w[y] · (softmax(x)_c − [c = y])`.

mod cpu_kernel;
mod cuda_kernel;

use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// How per-position losses are combined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// One loss per position, shaped like the target (0 at ignored positions).
    None,
    /// `Σ_p loss_p / Σ_p w[y_p]` over the non-ignored positions (PyTorch's weighted mean).
    /// NaN when every position is ignored, as in PyTorch.
    #[default]
    Mean,
    /// `Σ_p loss_p`.
    Sum,
}

/// Options of [`Tensor::cross_entropy`].
#[derive(Clone, Copy, Debug)]
pub struct CrossEntropyOptions<'a> {
    /// Target value that contributes neither loss nor gradient (255 here, the usual "void"
    /// label of segmentation datasets; PyTorch's default is −100).
    pub ignore_index: i64,
    /// Optional per-class weights `[C]` (constants: no gradient flows to them).
    pub weight: Option<&'a Tensor>,
    /// How per-position losses are combined.
    pub reduction: Reduction,
}

impl Default for CrossEntropyOptions<'_> {
    fn default() -> Self {
        CrossEntropyOptions {
            ignore_index: 255,
            weight: None,
            reduction: Reduction::Mean,
        }
    }
}

/// Logits seen as `[batch, classes, spatial]` (`spatial = H · W`, 1 for `[B, C]` logits);
/// targets as `[batch, spatial]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrossEntropyLayout {
    /// Batch size `B`.
    pub batch: usize,
    /// Number of classes `C`.
    pub classes: usize,
    /// Positions per sample (`H · W`).
    pub spatial: usize,
    /// Target value to skip.
    pub ignore_index: i64,
}

/// Per-position results of [`LossBackend::cross_entropy_forward`], each of `batch · spatial`
/// elements.
pub struct CrossEntropyForward {
    /// `w[y] · (lse − x_y)`, 0 at ignored positions.
    pub loss: Storage,
    /// `w[y]` (1 without class weights), 0 at ignored positions: the mean's denominator.
    pub weight: Storage,
    /// `ln Σ_c e^(x_c)`, saved for the backward.
    pub log_sum_exp: Storage,
}

/// Kernels of this family.
pub trait LossBackend {
    /// Per-position cross-entropy. Fails, naming the value, on a target that is neither an
    /// integer class in `[0, C)` nor the ignore index.
    fn cross_entropy_forward(
        &self,
        logits: &Storage,
        target: &Storage,
        weight: Option<&Storage>,
        layout: CrossEntropyLayout,
    ) -> Result<CrossEntropyForward>;

    /// `grad_x[b, c, s] = g[b, s] · w[y] · (e^(x − lse) − [c = y])`, 0 at ignored positions,
    /// for the upstream gradient `g` of the per-position losses.
    fn cross_entropy_backward(
        &self,
        logits: &Storage,
        target: &Storage,
        weight: Option<&Storage>,
        log_sum_exp: &Storage,
        grad_loss: &Storage,
        layout: CrossEntropyLayout,
    ) -> Result<Storage>;
}

impl Tensor {
    /// Cross-entropy between logits `[B, C]` / `[B, C, H, W]` (class axis 1) and a target of
    /// class indices `[B]` / `[B, H, W]` (f32 holding exact integers), fused with its
    /// log-softmax. See [`CrossEntropyOptions`] for the ignore index, class weights and
    /// reduction; `Reduction::Mean` over all-ignored targets gives NaN, as PyTorch does.
    pub fn cross_entropy(&self, target: &Tensor, options: CrossEntropyOptions) -> Result<Tensor> {
        let layout = cross_entropy_layout(self, target, options)?;
        let weight = options.weight.map(|w| w.storage());
        let forward = self.backend().cross_entropy_forward(
            &self.storage(),
            &target.storage(),
            weight.as_ref(),
            layout,
        )?;
        let (logits, saved_target) = (self.detach(), target.detach());
        let log_sum_exp = forward.log_sum_exp;
        let losses = Tensor::from_op(
            "cross_entropy",
            forward.loss,
            target.shape().clone(),
            &[self],
            move || {
                Box::new(move |g: &Tensor, _: &[bool]| {
                    let grad = g.backend().cross_entropy_backward(
                        &logits.storage(),
                        &saved_target.storage(),
                        weight.as_ref(),
                        &log_sum_exp,
                        &g.storage(),
                        layout,
                    )?;
                    Ok(vec![Some(Tensor::from_storage(
                        grad,
                        logits.shape().clone(),
                    )?)])
                })
            },
        )?;
        match options.reduction {
            Reduction::None => Ok(losses),
            Reduction::Sum => losses.sum_all(),
            Reduction::Mean => {
                let total_weight =
                    Tensor::from_storage(forward.weight, target.shape().clone())?.sum_all()?;
                losses.sum_all()?.div(&total_weight)
            }
        }
    }
}

/// Checks logits, target and class weights against each other.
fn cross_entropy_layout(
    logits: &Tensor,
    target: &Tensor,
    options: CrossEntropyOptions,
) -> Result<CrossEntropyLayout> {
    const OP: &str = "cross_entropy";
    logits.same_device(OP, target)?;
    if logits.rank() < 2 {
        return Err(Error::shape(
            OP,
            format!(
                "logits must be [B, C] or [B, C, H, W], got {}",
                logits.shape()
            ),
        ));
    }
    let dims = logits.dims();
    let expected_target: Vec<usize> = [&dims[..1], &dims[2..]].concat();
    if target.dims() != expected_target.as_slice() {
        return Err(Error::shape(
            OP,
            format!(
                "target must have shape {expected_target:?} for logits {}, got {}",
                logits.shape(),
                target.shape()
            ),
        ));
    }
    let classes = dims[1];
    if let Some(weight) = options.weight {
        logits.same_device(OP, weight)?;
        if weight.dims() != [classes] {
            return Err(Error::shape(
                OP,
                format!(
                    "class weights must have shape [{classes}] for logits {}, got {}",
                    logits.shape(),
                    weight.shape()
                ),
            ));
        }
    }
    let (batch, _, spatial) = logits.shape().outer_size_inner(1);
    Ok(CrossEntropyLayout {
        batch,
        classes,
        spatial,
        ignore_index: options.ignore_index,
    })
}
