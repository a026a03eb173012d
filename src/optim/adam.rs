//! Adam and AdamW (`torch.optim.Adam` / `AdamW`), with optional amsgrad.

use super::checkpoint::read_flag;
use super::{check_non_negative, GroupOptimizer, GroupOptions};
use crate::error::Result;
use crate::ops::optimizer::{adam_update, AdamHyper, AdamMomentTensors};
use crate::tensor::Tensor;

/// Adam / AdamW over parameter groups. Per parameter at step t: AdamW first decays `p ← p·(1 −
/// lr·wd)`, Adam adds `wd·p` to the gradient; `m = β1·m + (1−β1)·g`, `v = β2·v + (1−β2)·g²`
/// (amsgrad: `v̂ = max(v̂, v)`), `p ← p − lr/(1−β1^t) · m / (sqrt(v̂)/sqrt(1−β2^t) + eps)`.
pub type Adam = GroupOptimizer<AdamOptions>;

/// Hyper-parameters of an Adam / AdamW group (PyTorch's names and defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamOptions {
    /// Learning rate.
    pub lr: f64,
    /// `(β1, β2)`: decay rates of the first and second moments.
    pub betas: (f64, f64),
    /// Added to the denominator for stability.
    pub eps: f64,
    /// Weight decay: L2 on the gradient, or decoupled (AdamW).
    pub weight_decay: f64,
    /// AdamW: decay the parameter directly, `p·(1 − lr·wd)`, instead of the gradient.
    pub decoupled_weight_decay: bool,
    /// Normalise by the running maximum of the second moment.
    pub amsgrad: bool,
}

impl AdamOptions {
    /// Adam with learning rate `lr` and PyTorch's other defaults (betas (0.9, 0.999), eps 1e-8,
    /// no weight decay).
    pub fn new(lr: f64) -> Self {
        AdamOptions {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            amsgrad: false,
        }
    }

    /// AdamW with learning rate `lr` and `torch.optim.AdamW`'s defaults (weight decay 1e-2).
    pub fn adamw(lr: f64) -> Self {
        AdamOptions {
            weight_decay: 1e-2,
            decoupled_weight_decay: true,
            ..Self::new(lr)
        }
    }
}

impl Default for AdamOptions {
    /// `torch.optim.Adam`'s defaults (lr 1e-3).
    fn default() -> Self {
        Self::new(1e-3)
    }
}

/// One parameter's Adam state, created (zeros) at its first step.
#[derive(Clone, Default)]
pub struct AdamState {
    /// The moments, once the parameter has been updated.
    pub moments: Option<AdamMomentTensors>,
}

const EXP_AVG: &str = "exp_avg";
const EXP_AVG_SQ: &str = "exp_avg_sq";
const MAX_EXP_AVG_SQ: &str = "max_exp_avg_sq";

impl GroupOptions for AdamOptions {
    type State = AdamState;
    const NAME: &'static str = "Adam";

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn validate(&self) -> std::result::Result<(), String> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("eps", self.eps)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        for (i, beta) in [self.betas.0, self.betas.1].into_iter().enumerate() {
            if !(0.0..1.0).contains(&beta) {
                return Err(format!(
                    "beta parameter at index {i} must be in [0, 1), got {beta}"
                ));
            }
        }
        Ok(())
    }

    fn update(
        &self,
        param: &Tensor,
        grad: &Tensor,
        step: u64,
        state: &AdamState,
    ) -> Result<(Tensor, AdamState)> {
        let hyper = AdamHyper {
            lr: self.lr,
            beta1: self.betas.0,
            beta2: self.betas.1,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decoupled_weight_decay: self.decoupled_weight_decay,
            amsgrad: self.amsgrad,
            step,
        };
        let mut moments = match &state.moments {
            Some(m) => m.clone(),
            None => AdamMomentTensors::zeros(param, self.amsgrad)?,
        };
        // amsgrad switched on after some steps: the running maximum starts at zero.
        if self.amsgrad && moments.max_exp_avg_sq.is_none() {
            moments.max_exp_avg_sq = Some(param.zeros_like()?);
        }
        let (values, moments) = adam_update(hyper, param, grad, &moments)?;
        Ok((
            values,
            AdamState {
                moments: Some(moments),
            },
        ))
    }

    fn to_scalars(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("lr", self.lr),
            ("beta1", self.betas.0),
            ("beta2", self.betas.1),
            ("eps", self.eps),
            ("weight_decay", self.weight_decay),
            (
                "decoupled_weight_decay",
                self.decoupled_weight_decay as u8 as f64,
            ),
            ("amsgrad", self.amsgrad as u8 as f64),
        ]
    }

    fn from_scalars(read: &mut dyn FnMut(&'static str) -> Result<f64>) -> Result<Self> {
        Ok(AdamOptions {
            lr: read("lr")?,
            betas: (read("beta1")?, read("beta2")?),
            eps: read("eps")?,
            weight_decay: read("weight_decay")?,
            decoupled_weight_decay: read_flag(read, "decoupled_weight_decay")?,
            amsgrad: read_flag(read, "amsgrad")?,
        })
    }

    fn state_buffers(state: &AdamState) -> Vec<(&'static str, Tensor)> {
        let Some(m) = &state.moments else {
            return Vec::new();
        };
        let mut out = vec![
            (EXP_AVG, m.exp_avg.clone()),
            (EXP_AVG_SQ, m.exp_avg_sq.clone()),
        ];
        if let Some(max) = &m.max_exp_avg_sq {
            out.push((MAX_EXP_AVG_SQ, max.clone()));
        }
        out
    }

    fn restore_state(
        &self,
        _step: u64,
        read: &mut dyn FnMut(&'static str) -> Result<Tensor>,
    ) -> Result<AdamState> {
        let moments = AdamMomentTensors {
            exp_avg: read(EXP_AVG)?,
            exp_avg_sq: read(EXP_AVG_SQ)?,
            max_exp_avg_sq: match self.amsgrad {
                true => Some(read(MAX_EXP_AVG_SQ)?),
                false => None,
            },
        };
        Ok(AdamState {
            moments: Some(moments),
        })
    }
}
