//! `torch.nn.utils.clip_grad_norm_`: scales every gradient by `min(1, max_norm / (‖g‖₂ + 1e-6))`
//! where `‖g‖₂` is the 2-norm of all gradients together (the original dynamic-routing solver
//! clips at 5).

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Added to the norm before dividing, as PyTorch does.
pub const CLIP_EPS: f64 = 1e-6;

/// Clips the gradients of `params` in place to total 2-norm `max_norm`; returns the norm
/// before clipping. Parameters without a gradient are skipped.
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> Result<f64> {
    if max_norm.is_nan() || max_norm <= 0.0 {
        return Err(Error::invalid(
            "clip_grad_norm",
            format!("max_norm = {max_norm}: must be positive"),
        ));
    }
    let grads: Vec<Tensor> = params.iter().filter_map(|(_, p)| p.grad()).collect();
    let mut squares: Option<Tensor> = None;
    for g in &grads {
        let s = g.square()?.sum_all()?;
        squares = Some(match squares {
            Some(total) => total.add(&s)?,
            None => s,
        });
    }
    let Some(squares) = squares else {
        return Ok(0.0);
    };
    let norm = f64::from(squares.item()?).sqrt();
    let coef = max_norm / (norm + CLIP_EPS);
    if coef < 1.0 {
        for g in &grads {
            g.replace_data(&g.mul_scalar(coef as f32)?)?;
        }
    }
    Ok(norm)
}
