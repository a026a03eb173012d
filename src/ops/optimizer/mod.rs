//! Fused optimizer updates (SGD with momentum / nesterov / weight decay, Adam / AdamW), one
//! kernel call per parameter.
//!
//! Each update follows the operation order of PyTorch's single-tensor (non-foreach, non-fused)
//! path. Hyper-parameters are f64 like Python floats; the scalar math PyTorch does in Python
//! (bias corrections, step size) happens in f64 in [`SgdHyper::scalars`] /
//! [`AdamHyper::scalars`], and the results are rounded to f32 where PyTorch hands them to a
//! tensor op, so every backend runs the same f32 element formula. `a + b·c` steps are fused
//! multiply-adds, as in PyTorch's compiled CPU kernels (and CUDA's default contraction): SGD then
//! matches PyTorch bit for bit and Adam to an ulp.

mod cpu_kernel;
mod cuda_kernel;

use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// Hyper-parameters of one SGD update (`torch.optim.SGD`).
#[derive(Clone, Copy, Debug)]
pub struct SgdHyper {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (0: plain SGD, no buffer).
    pub momentum: f64,
    /// Dampening of the gradient added to the momentum buffer.
    pub dampening: f64,
    /// L2 penalty added to the gradient: `g + wd·p`.
    pub weight_decay: f64,
    /// Nesterov momentum: step along `g + momentum·buf` instead of `buf`.
    pub nesterov: bool,
}

/// The f32 scalars of an SGD update, as PyTorch's tensor ops receive them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdScalars {
    /// `weight_decay`
    pub weight_decay: f32,
    /// `momentum`
    pub momentum: f32,
    /// `1 − dampening`
    pub grad_scale: f32,
    /// `−lr`
    pub neg_lr: f32,
}

impl SgdHyper {
    /// Rounds the hyper-parameters to the f32 scalars the element formula uses.
    pub fn scalars(&self) -> SgdScalars {
        SgdScalars {
            weight_decay: self.weight_decay as f32,
            momentum: self.momentum as f32,
            grad_scale: (1.0 - self.dampening) as f32,
            neg_lr: (-self.lr) as f32,
        }
    }
}

/// Hyper-parameters of one Adam / AdamW update (`torch.optim.Adam` / `AdamW`).
#[derive(Clone, Copy, Debug)]
pub struct AdamHyper {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Weight decay: L2 on the gradient (Adam) or decoupled `p·(1 − lr·wd)` (AdamW).
    pub weight_decay: f64,
    /// AdamW's decoupled weight decay.
    pub decoupled_weight_decay: bool,
    /// Normalise by the running maximum of the second moment.
    pub amsgrad: bool,
    /// This parameter's step count, including the current step (1 on the first update).
    pub step: u64,
}

/// The f32 scalars of an Adam update, as PyTorch's tensor ops receive them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamScalars {
    /// `weight_decay` added to the gradient (0 for AdamW).
    pub grad_weight_decay: f32,
    /// `1 − lr·wd` the parameter is scaled by first (1 for Adam).
    pub param_scale: f32,
    /// `1 − β1`, the lerp weight of the first moment.
    pub one_minus_beta1: f32,
    /// `β2`
    pub beta2: f32,
    /// `1 − β2`
    pub one_minus_beta2: f32,
    /// `sqrt(1 − β2^t)`
    pub bias_correction2_sqrt: f32,
    /// `eps`
    pub eps: f32,
    /// `−lr / (1 − β1^t)`
    pub neg_step_size: f32,
    /// Whether to keep and use the running maximum of the second moment.
    pub amsgrad: bool,
}

impl AdamHyper {
    /// PyTorch's Python-side scalar math in f64 (`beta ** step`, `** 0.5`), rounded to f32.
    pub fn scalars(&self) -> AdamScalars {
        let step = self.step as f64;
        let bias_correction1 = 1.0 - self.beta1.powf(step);
        let bias_correction2 = 1.0 - self.beta2.powf(step);
        let decoupled = self.decoupled_weight_decay && self.weight_decay != 0.0;
        AdamScalars {
            grad_weight_decay: if self.decoupled_weight_decay {
                0.0
            } else {
                self.weight_decay as f32
            },
            param_scale: if decoupled {
                (1.0 - self.lr * self.weight_decay) as f32
            } else {
                1.0
            },
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            bias_correction2_sqrt: bias_correction2.powf(0.5) as f32,
            eps: self.eps as f32,
            neg_step_size: (-(self.lr / bias_correction1)) as f32,
            amsgrad: self.amsgrad,
        }
    }
}

/// Adam's per-parameter buffers (on the parameter's device, with its element count).
#[derive(Clone)]
pub struct AdamMoments {
    /// First moment `m`.
    pub exp_avg: Storage,
    /// Second moment `v`.
    pub exp_avg_sq: Storage,
    /// Running maximum of `v` (amsgrad only).
    pub max_exp_avg_sq: Option<Storage>,
}

/// Kernels of this family: one fused pass per parameter tensor, returning new storages.
pub trait OptimizerBackend {
    /// SGD: `g = grad + wd·p`; with momentum, `buf = g` on the first step (`momentum_buffer`
    /// None) else `buf = momentum·buf + (1 − dampening)·g`, then `g = nesterov ? g +
    /// momentum·buf : buf`; `p = p − lr·g`. Returns the new parameter and (with momentum) buffer.
    fn sgd_update(
        &self,
        hyper: SgdHyper,
        param: &Storage,
        grad: &Storage,
        momentum_buffer: Option<&Storage>,
    ) -> Result<(Storage, Option<Storage>)>;

    /// Adam / AdamW: `p ← p·(1 − lr·wd)` (AdamW) or `g ← g + wd·p` (Adam); `m = lerp(m, g,
    /// 1 − β1)`; `v = β2·v + (1 − β2)·g²`; `v̂ = amsgrad ? max(v_max, v) : v`;
    /// `p ← p − lr/(1 − β1^t) · m / (sqrt(v̂)/sqrt(1 − β2^t) + eps)`.
    fn adam_update(
        &self,
        hyper: AdamHyper,
        param: &Storage,
        grad: &Storage,
        moments: &AdamMoments,
    ) -> Result<(Storage, AdamMoments)>;
}

/// Checks that an optimizer operand has the parameter's shape and device.
fn check_operand(op: &'static str, param: &Tensor, what: &str, other: &Tensor) -> Result<()> {
    if other.shape() != param.shape() {
        return Err(Error::shape(
            op,
            format!(
                "{what} has shape {} but the parameter has {}",
                other.shape(),
                param.shape()
            ),
        ));
    }
    param.same_device(op, other).map(|_| ())
}

/// One SGD step on `param` (see [`OptimizerBackend::sgd_update`]); returns the new parameter
/// values and momentum buffer. Not differentiable.
pub fn sgd_update(
    hyper: SgdHyper,
    param: &Tensor,
    grad: &Tensor,
    momentum_buffer: Option<&Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    const OP: &str = "sgd_update";
    check_operand(OP, param, "the gradient", grad)?;
    if let Some(buf) = momentum_buffer {
        check_operand(OP, param, "the momentum buffer", buf)?;
    }
    let (new_param, new_buf) = param.backend().sgd_update(
        hyper,
        &param.storage(),
        &grad.storage(),
        momentum_buffer.map(|b| b.storage()).as_ref(),
    )?;
    let shape = param.shape().clone();
    let new_buf = match new_buf {
        Some(b) => Some(Tensor::from_storage(b, shape.clone())?),
        None => None,
    };
    Ok((Tensor::from_storage(new_param, shape)?, new_buf))
}

/// Adam's buffers of one parameter as tensors.
#[derive(Clone)]
pub struct AdamMomentTensors {
    /// First moment `m`.
    pub exp_avg: Tensor,
    /// Second moment `v`.
    pub exp_avg_sq: Tensor,
    /// Running maximum of `v` (amsgrad only).
    pub max_exp_avg_sq: Option<Tensor>,
}

impl AdamMomentTensors {
    /// Zero moments for `param` (the state before the first step).
    pub fn zeros(param: &Tensor, amsgrad: bool) -> Result<AdamMomentTensors> {
        Ok(AdamMomentTensors {
            exp_avg: param.zeros_like()?,
            exp_avg_sq: param.zeros_like()?,
            max_exp_avg_sq: if amsgrad {
                Some(param.zeros_like()?)
            } else {
                None
            },
        })
    }
}

/// One Adam / AdamW step on `param` (see [`OptimizerBackend::adam_update`]); returns the new
/// parameter values and moments. `moments.max_exp_avg_sq` must be present when `hyper.amsgrad`.
pub fn adam_update(
    hyper: AdamHyper,
    param: &Tensor,
    grad: &Tensor,
    moments: &AdamMomentTensors,
) -> Result<(Tensor, AdamMomentTensors)> {
    const OP: &str = "adam_update";
    check_operand(OP, param, "the gradient", grad)?;
    check_operand(OP, param, "exp_avg", &moments.exp_avg)?;
    check_operand(OP, param, "exp_avg_sq", &moments.exp_avg_sq)?;
    match (&moments.max_exp_avg_sq, hyper.amsgrad) {
        (Some(max), _) => check_operand(OP, param, "max_exp_avg_sq", max)?,
        (None, true) => {
            return Err(Error::invalid(
                OP,
                "amsgrad needs the max_exp_avg_sq buffer",
            ));
        }
        (None, false) => {}
    }
    if hyper.step == 0 {
        return Err(Error::invalid(OP, "the step count starts at 1"));
    }
    let storages = AdamMoments {
        exp_avg: moments.exp_avg.storage(),
        exp_avg_sq: moments.exp_avg_sq.storage(),
        max_exp_avg_sq: moments.max_exp_avg_sq.as_ref().map(Tensor::storage),
    };
    let (new_param, new) =
        param
            .backend()
            .adam_update(hyper, &param.storage(), &grad.storage(), &storages)?;
    let shape = param.shape().clone();
    let tensor = |s: Storage| Tensor::from_storage(s, shape.clone());
    let max_exp_avg_sq = match hyper.amsgrad {
        true => new.max_exp_avg_sq.map(tensor).transpose()?,
        false => None,
    };
    Ok((
        tensor(new_param)?,
        AdamMomentTensors {
            exp_avg: tensor(new.exp_avg)?,
            exp_avg_sq: tensor(new.exp_avg_sq)?,
            max_exp_avg_sq,
        },
    ))
}
