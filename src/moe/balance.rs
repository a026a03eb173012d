//! Load-balancing losses of PatchConvMoE (moe.md §1.6), computed on the clean routing
//! probabilities `p: [T, E]` of all T tokens of the batch, with `P_e = mean_t p_{t,e}` and
//! `H(q) = −Σ_e q_e ln q_e`:
//!
//! - `switch`: `E·Σ_e f_e·P_e − 1`, `f_e` the share of tokens whose top-1 (argmax of the clean
//!   `p`, ties to the lower index) is `e`; `f` carries no gradient.
//! - `entropy` (default): `mean_t H(p_t) − H(P)`.
//! - `importance`: `CV²(Imp) = var_e(Imp) / (mean_e(Imp)² + 1e-10)` with
//!   `Imp_e = Σ_t w_{t,e}` over the routing weights and population variance.
//! - `column_entropy`: `−H(P)`.
//! - `none`: 0.
//!
//! All return a rank-0 tensor; the layer multiplies it by `alpha`.
//!
//! **0·log 0 = 0.** `H` is evaluated as `−Σ q·ln(max(q, 1e-12))` (a clamp inside the log):
//! exactly 0 for `q = 0`, and for `0 < q < 1e-12` it differs from `q ln q` by less than
//! `3·10⁻¹¹`. The gradient stays finite: `−(ln max(q, 1e-12) + [q ≥ 1e-12])`.
//!
//! **Switch's top-1** is the argmax of the clean `p`, not the first routed expert: the losses
//! are defined on the clean probabilities, so noise and capacity re-assignment do not change
//! them (the Switch Transformer's definition).
//!
//! **Importance's `1e-10`** guards `0/0` when no weight reaches any expert; it changes the value
//! by a relative `1e-10 / mean²` (the reference script adds the same constant).

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::fmt;
use std::str::FromStr;

/// The clamp inside the log of the entropy: `H(q) = −Σ q·ln(max(q, ENTROPY_LOG_MIN))`.
pub const ENTROPY_LOG_MIN: f32 = 1e-12;

/// Added to `mean(Imp)²` in the importance loss to avoid `0/0`.
pub const IMPORTANCE_EPS: f32 = 1e-10;

/// Which balancing loss the layer adds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BalanceLoss {
    /// `E·Σ_e f_e·P_e − 1`.
    Switch,
    /// `mean_t H(p_t) − H(P)` (the default).
    #[default]
    Entropy,
    /// `CV²` of the per-expert summed routing weights.
    Importance,
    /// `−H(P)`.
    ColumnEntropy,
    /// No balancing loss.
    None,
}

/// The routing of one batch as the losses see it.
#[derive(Clone, Copy)]
pub struct BalanceInputs<'a> {
    /// Clean softmax probabilities `[T, E]` (differentiable).
    pub probs: &'a Tensor,
    /// Routing weights `[T, k]` of the chosen experts, as used by the layer (differentiable).
    pub weights: &'a Tensor,
    /// Chosen experts `[T, k]` (exact integers in f32), in rank order.
    pub indices: &'a Tensor,
}

impl BalanceLoss {
    /// Every kind, in the order of [`BalanceLoss::NAMES`].
    pub const ALL: [BalanceLoss; 5] = [
        BalanceLoss::Switch,
        BalanceLoss::Entropy,
        BalanceLoss::Importance,
        BalanceLoss::ColumnEntropy,
        BalanceLoss::None,
    ];

    /// The configuration names.
    pub const NAMES: [&'static str; 5] =
        ["switch", "entropy", "importance", "column_entropy", "none"];

    /// The configuration name (`"entropy"`).
    pub fn name(self) -> &'static str {
        match self {
            BalanceLoss::Switch => "switch",
            BalanceLoss::Entropy => "entropy",
            BalanceLoss::Importance => "importance",
            BalanceLoss::ColumnEntropy => "column_entropy",
            BalanceLoss::None => "none",
        }
    }

    /// The loss of one batch as a rank-0 tensor (before `alpha`).
    pub fn compute(self, inputs: BalanceInputs<'_>) -> Result<Tensor> {
        let num_experts = check_inputs(&inputs)?;
        let probs = inputs.probs;
        match self {
            BalanceLoss::Switch => switch_loss(probs, num_experts),
            BalanceLoss::Entropy => {
                // mean_t H(p_t) − H(P)
                let per_token = entropy(probs, 1)?.mean_all()?;
                per_token.sub(&entropy(&probs.mean(&[0], false)?, 0)?)
            }
            BalanceLoss::Importance => importance_loss(&inputs, num_experts),
            BalanceLoss::ColumnEntropy => entropy(&probs.mean(&[0], false)?, 0)?.neg(),
            BalanceLoss::None => Tensor::zeros(Vec::<usize>::new(), &probs.device()),
        }
    }
}

impl fmt::Display for BalanceLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BalanceLoss {
    type Err = Error;

    /// Parses a configuration name; an unknown name is an error listing the valid ones.
    fn from_str(name: &str) -> Result<BalanceLoss> {
        BalanceLoss::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| {
                Error::invalid(
                    "moe balance loss",
                    format!(
                        "unknown balancing loss `{name}`; valid losses: {}",
                        BalanceLoss::NAMES.join(", ")
                    ),
                )
            })
    }
}

/// Entropy along `axis`: `H(q) = −Σ q·ln(max(q, 1e-12))` (0·log 0 = 0, see the module doc).
pub fn entropy(q: &Tensor, axis: isize) -> Result<Tensor> {
    let log_q = q.clamp(ENTROPY_LOG_MIN, f32::INFINITY)?.log()?;
    q.mul(&log_q)?.sum(&[axis], false)?.neg()
}

/// `E·Σ_e f_e·P_e − 1` with `f_e` the top-1 share (no gradient).
fn switch_loss(probs: &Tensor, num_experts: usize) -> Result<Tensor> {
    let tokens = probs.dims()[0];
    let top1_share = no_grad(|| -> Result<Tensor> {
        let top1 = probs.argmax(1, true)?; // [T, 1], ties to the lower index
        let ones = top1.ones_like()?;
        Tensor::zeros([tokens, num_experts], &probs.device())?
            .scatter_add(1, &top1, &ones)?
            .mean(&[0], false)
    })?
    .detach();
    let mean_probs = probs.mean(&[0], false)?;
    top1_share
        .mul(&mean_probs)?
        .sum_all()?
        .mul_scalar(num_experts as f32)?
        .sub_scalar(1.0)
}

/// `var_e(Imp) / (mean_e(Imp)² + 1e-10)` with `Imp_e = Σ_t w_{t,e}` (population variance).
fn importance_loss(inputs: &BalanceInputs<'_>, num_experts: usize) -> Result<Tensor> {
    let tokens = inputs.probs.dims()[0];
    let importance = Tensor::zeros([tokens, num_experts], &inputs.probs.device())?
        .scatter_add(1, inputs.indices, inputs.weights)?
        .sum(&[0], false)?; // [E]
    let mean = importance.mean_all()?;
    let variance = importance.sub(&mean)?.square()?.mean_all()?;
    variance.div(&mean.square()?.add_scalar(IMPORTANCE_EPS)?)
}

/// Checks `probs [T, E]` (T > 0) and `weights`, `indices` both `[T, k]` with `1 ≤ k ≤ E`;
/// returns E. Index values are checked by `scatter_add`.
fn check_inputs(inputs: &BalanceInputs<'_>) -> Result<usize> {
    let op = "moe balance loss";
    inputs.probs.expect_rank(op, "probs", 2)?;
    let (tokens, experts) = (inputs.probs.dims()[0], inputs.probs.dims()[1]);
    if tokens == 0 || experts == 0 {
        return Err(Error::shape(
            op,
            format!(
                "probs must have at least one token and one expert, got shape {}",
                inputs.probs.shape()
            ),
        ));
    }
    for (name, t) in [("weights", inputs.weights), ("indices", inputs.indices)] {
        t.expect_rank(op, name, 2)?;
        let k = t.dims()[1];
        if t.dims()[0] != tokens || k == 0 || k > experts {
            return Err(Error::shape(
                op,
                format!(
                    "{name} must be [T = {tokens}, k] with 1 ≤ k ≤ E = {experts}, got shape {} \
                     (probs {})",
                    t.shape(),
                    inputs.probs.shape()
                ),
            ));
        }
    }
    if inputs.weights.shape() != inputs.indices.shape() {
        return Err(Error::shape(
            op,
            format!(
                "weights {} and indices {} must have the same shape",
                inputs.weights.shape(),
                inputs.indices.shape()
            ),
        ));
    }
    Ok(experts)
}
