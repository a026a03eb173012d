//! The budget constraint (`BudgetConstraint`): `L = λ·w·(E[C]/C_all − μ)²` on the batch mean of
//! the expected FLOPs, on from `step_rate ≥ unupdate_rate` with the warm-up ramp
//! `w = min(1, (step_rate − unupdate_rate)/0.02)` (1 without warm-up).

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Width of the warm-up ramp in training progress (the original's 0.02).
pub const WARM_UP_SPAN: f64 = 0.02;

/// The original's `MODEL.BUDGET` keys.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetConfig {
    /// `CONSTRAIN`: whether the loss is used at all.
    pub constrain: bool,
    /// `LOSS_WEIGHT` (λ).
    pub loss_weight: f32,
    /// `LOSS_MU` (μ): the target share of the full cost.
    pub mu: f32,
    /// `FLOPS_ALL` (C_all, MFLOPs): the normaliser.
    pub flops_all: f32,
    /// `UNUPDATE_RATE`: share of training before the loss starts.
    pub unupdate_rate: f32,
    /// `WARM_UP`: ramp the weight over [`WARM_UP_SPAN`] after the start.
    pub warm_up: bool,
}

impl Default for BudgetConfig {
    /// Off (Dynamic-Raw), with Dynamic-A's constants.
    fn default() -> Self {
        BudgetConfig {
            constrain: false,
            loss_weight: 0.8,
            mu: 0.1,
            flops_all: 26300.0,
            unupdate_rate: 0.4,
            warm_up: true,
        }
    }
}

impl BudgetConfig {
    /// Checks the constants.
    pub fn validate(&self) -> Result<()> {
        if self.constrain && (self.flops_all.is_nan() || self.flops_all <= 0.0) {
            return Err(Error::invalid(
                "budget",
                format!("flops_all = {}: must be positive", self.flops_all),
            ));
        }
        Ok(())
    }

    /// The weight `w` at training progress `step_rate` (step / total steps), `None` while
    /// the loss is off.
    pub fn ramp(&self, step_rate: f64) -> Option<f64> {
        let start = f64::from(self.unupdate_rate);
        if !self.constrain || step_rate < start {
            return None;
        }
        Some(if self.warm_up {
            ((step_rate - start) / WARM_UP_SPAN).min(1.0)
        } else {
            1.0
        })
    }

    /// The loss on the expected FLOPs `[B]` (MFLOPs) at `step_rate`, `None` while off.
    pub fn loss(&self, expected: &Tensor, step_rate: f64) -> Result<Option<Tensor>> {
        let Some(w) = self.ramp(step_rate) else {
            return Ok(None);
        };
        let share = expected.mean_all()?.div_scalar(self.flops_all)?;
        let loss = share
            .sub_scalar(self.mu)?
            .square()?
            .mul_scalar(self.loss_weight * w as f32)?;
        Ok(Some(loss))
    }
}
