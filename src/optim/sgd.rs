//! Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay
//! (`torch.optim.SGD`).

use super::checkpoint::read_flag;
use super::{check_non_negative, GroupOptimizer, GroupOptions};
use crate::error::Result;
use crate::ops::optimizer::{sgd_update, SgdHyper};
use crate::tensor::Tensor;

/// SGD over parameter groups. Per parameter: `g = grad + wd·p`; with momentum `buf = g` on the
/// first step, else `buf = momentum·buf + (1 − dampening)·g`, and `g = nesterov ? g +
/// momentum·buf : buf`; then `p = p − lr·g`.
pub type Sgd = GroupOptimizer<SgdOptions>;

/// Hyper-parameters of an SGD group (PyTorch's names and defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdOptions {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (0: no momentum buffer).
    pub momentum: f64,
    /// Dampening of the gradient entering the momentum buffer.
    pub dampening: f64,
    /// L2 penalty: `wd·p` is added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum (needs momentum > 0 and dampening 0).
    pub nesterov: bool,
}

impl SgdOptions {
    /// Plain SGD with learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        SgdOptions {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }

    fn hyper(&self) -> SgdHyper {
        SgdHyper {
            lr: self.lr,
            momentum: self.momentum,
            dampening: self.dampening,
            weight_decay: self.weight_decay,
            nesterov: self.nesterov,
        }
    }
}

impl Default for SgdOptions {
    /// PyTorch's defaults (lr 1e-3).
    fn default() -> Self {
        Self::new(1e-3)
    }
}

/// One parameter's SGD state: the momentum buffer once a step with momentum has run.
#[derive(Clone, Debug, Default)]
pub struct SgdState {
    /// `buf` of the update formula.
    pub momentum_buffer: Option<Tensor>,
}

const MOMENTUM_BUFFER: &str = "momentum_buffer";

impl GroupOptions for SgdOptions {
    type State = SgdState;
    const NAME: &'static str = "SGD";

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn validate(&self) -> std::result::Result<(), String> {
        check_non_negative("lr", self.lr)?;
        check_non_negative("momentum", self.momentum)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        if !self.dampening.is_finite() {
            return Err(format!("dampening must be finite, got {}", self.dampening));
        }
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(format!(
                "Nesterov momentum requires a momentum > 0 and zero dampening, got momentum {} and dampening {}",
                self.momentum, self.dampening
            ));
        }
        Ok(())
    }

    fn update(
        &self,
        param: &Tensor,
        grad: &Tensor,
        _step: u64,
        state: &SgdState,
    ) -> Result<(Tensor, SgdState)> {
        let (values, momentum_buffer) =
            sgd_update(self.hyper(), param, grad, state.momentum_buffer.as_ref())?;
        Ok((values, SgdState { momentum_buffer }))
    }

    fn to_scalars(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("lr", self.lr),
            ("momentum", self.momentum),
            ("dampening", self.dampening),
            ("weight_decay", self.weight_decay),
            ("nesterov", self.nesterov as u8 as f64),
        ]
    }

    fn from_scalars(read: &mut dyn FnMut(&'static str) -> Result<f64>) -> Result<Self> {
        Ok(SgdOptions {
            lr: read("lr")?,
            momentum: read("momentum")?,
            dampening: read("dampening")?,
            weight_decay: read("weight_decay")?,
            nesterov: read_flag(read, "nesterov")?,
        })
    }

    fn state_buffers(state: &SgdState) -> Vec<(&'static str, Tensor)> {
        state
            .momentum_buffer
            .iter()
            .map(|b| (MOMENTUM_BUFFER, b.clone()))
            .collect()
    }

    fn restore_state(
        &self,
        _step: u64,
        read: &mut dyn FnMut(&'static str) -> Result<Tensor>,
    ) -> Result<SgdState> {
        // Every step with momentum leaves a buffer.
        let momentum_buffer = match self.momentum != 0.0 {
            true => Some(read(MOMENTUM_BUFFER)?),
            false => None,
        };
        Ok(SgdState { momentum_buffer })
    }
}
