//! Helpers of the top-k expert selection (moe.md §1.4) that do not need the fused kernel:
//! the noisy selection scores and the per-expert capacity.

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::tensor::{Rng, Tensor};

/// Floor of the per-token standard deviation in [`noisy_selection`], so a uniform `p`
/// (std 0) gives large but finite equal scores instead of `inf`/`NaN`.
pub const SELECTION_STD_MIN: f32 = 1e-6;

/// Noisy top-k selection scores (training only), `s_{t,e} = p_{t,e} / σ_t + N(0, noise_std²)`.
///
/// `σ_t = max(std_e p_{t,e}, 1e-6)` is the population standard deviation of token `t`'s
/// probabilities over the E experts (`torch.std(p, dim=1, unbiased=False)`), so the noise is
/// measured in units of the spread of each token's own probabilities. The scores only choose
/// the experts (the weights use the clean `p`), so the result carries no gradient. The noise is
/// drawn from `rng` in row-major order.
pub fn noisy_selection(probs: &Tensor, noise_std: f32, rng: &mut Rng) -> Result<Tensor> {
    let op = "noisy_selection";
    probs.expect_rank(op, "probs", 2)?;
    if !(noise_std.is_finite() && noise_std >= 0.0) {
        return Err(Error::invalid(
            op,
            format!("noise_std must be finite and ≥ 0, got {noise_std}"),
        ));
    }
    let noise: Vec<f32> = (0..probs.numel())
        .map(|_| rng.normal(0.0, noise_std))
        .collect();
    let scores = no_grad(|| -> Result<Tensor> {
        let mean = probs.mean(&[1], true)?;
        let std = probs
            .sub(&mean)?
            .square()?
            .mean(&[1], true)?
            .sqrt()?
            .clamp(SELECTION_STD_MIN, f32::INFINITY)?;
        let noise = Tensor::from_vec_on(noise, probs.shape().clone(), &probs.device())?;
        probs.div(&std)?.add(&noise)
    })?;
    Ok(scores.detach())
}

/// Per-expert capacity `ceil(k·T/E · capacity_factor)`: how many tokens one expert may take
/// before the next-best expert with room gets the overflow.
///
/// With `capacity_factor ≥ 1` the total capacity `E·capacity` covers all `k·T` assignments.
/// Computed in f64 so the ceiling is exact for integer `k·T/E`.
pub fn capacity(k: usize, tokens: usize, experts: usize, capacity_factor: f32) -> Result<usize> {
    let op = "moe capacity";
    if experts == 0 || k == 0 || k > experts {
        return Err(Error::invalid(
            op,
            format!("needs 1 ≤ k ≤ E, got k = {k}, E = {experts}"),
        ));
    }
    if !(capacity_factor.is_finite() && capacity_factor > 0.0) {
        return Err(Error::invalid(
            op,
            format!("capacity_factor must be finite and > 0, got {capacity_factor}"),
        ));
    }
    let exact = (k * tokens) as f64 / experts as f64 * capacity_factor as f64;
    Ok(exact.ceil() as usize)
}
