//! Learning-rate schedules: a pure function of (base lr, step), and a scheduler that applies it
//! to every group of an optimizer, each from its own base lr.

use super::checkpoint::{encode_scalar, StateReader};
use super::Optimizer;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::BTreeMap;
use std::f64::consts::PI;

/// A learning-rate schedule: the lr at step `t` given a group's base lr. Matches PyTorch's
/// closed forms (PolynomialLR, CosineAnnealingLR, LinearLR chained by SequentialLR).
#[derive(Clone, Debug, PartialEq)]
pub enum LrSchedule {
    /// `base`.
    Constant,
    /// `base · (1 − min(t, T)/T)^power` (PolynomialLR).
    Poly {
        /// `T`: the step at which the lr reaches 0 (and stays).
        total_steps: u64,
        /// The exponent (0.9 is the segmentation default).
        power: f64,
    },
    /// `min + (base − min) · (1 + cos(π·min(t, T)/T)) / 2` (CosineAnnealingLR for t ≤ T; past
    /// T it stays at `min`, where PyTorch's would rise again).
    Cosine {
        /// `T`: the step at which the lr reaches `min_lr`.
        total_steps: u64,
        /// The final lr (absolute, the same for every group, like `eta_min`).
        min_lr: f64,
    },
    /// Linear warm-up `base · (s + (1 − s)·t/W)` for t < W, then `then` evaluated at `t − W`
    /// (so `then` starts from `base`; give it the steps that remain after the warm-up). This is
    /// `SequentialLR([LinearLR(start_factor=s, total_iters=W), then], milestones=[W])`.
    Warmup {
        /// `W`: warm-up steps.
        steps: u64,
        /// `s`: the fraction of the base lr at step 0, in (0, 1].
        start_factor: f64,
        /// The schedule after the warm-up.
        then: Box<LrSchedule>,
    },
}

impl LrSchedule {
    /// Poly decay to 0 over `total_steps` with power 0.9.
    pub fn poly(total_steps: u64) -> Self {
        LrSchedule::Poly {
            total_steps,
            power: 0.9,
        }
    }

    /// Cosine annealing from the base lr to `min_lr` over `total_steps`.
    pub fn cosine(total_steps: u64, min_lr: f64) -> Self {
        LrSchedule::Cosine {
            total_steps,
            min_lr,
        }
    }

    /// This schedule after a linear warm-up of `steps` steps from `start_factor · base`.
    pub fn with_warmup(self, steps: u64, start_factor: f64) -> Self {
        LrSchedule::Warmup {
            steps,
            start_factor,
            then: Box::new(self),
        }
    }

    /// Checks the arguments (positive step counts, finite values, start factor in (0, 1]).
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::invalid("LrSchedule", msg));
        match self {
            LrSchedule::Constant => Ok(()),
            LrSchedule::Poly { total_steps, power } => {
                if *total_steps == 0 || !power.is_finite() || *power < 0.0 {
                    return fail(format!(
                        "poly needs total_steps > 0 and a finite power ≥ 0, got {total_steps} and {power}"
                    ));
                }
                Ok(())
            }
            LrSchedule::Cosine {
                total_steps,
                min_lr,
            } => {
                if *total_steps == 0 || !min_lr.is_finite() || *min_lr < 0.0 {
                    return fail(format!(
                        "cosine needs total_steps > 0 and a finite min_lr ≥ 0, got {total_steps} and {min_lr}"
                    ));
                }
                Ok(())
            }
            LrSchedule::Warmup {
                steps,
                start_factor,
                then,
            } => {
                if *steps == 0 || !(*start_factor > 0.0 && *start_factor <= 1.0) {
                    return fail(format!(
                        "warm-up needs steps > 0 and start_factor in (0, 1], got {steps} and {start_factor}"
                    ));
                }
                then.validate()
            }
        }
    }

    /// The learning rate at step `step` for a group whose base lr is `base`.
    pub fn lr(&self, base: f64, step: u64) -> f64 {
        match self {
            LrSchedule::Constant => base,
            LrSchedule::Poly { total_steps, power } => {
                let t = step.min(*total_steps) as f64;
                base * (1.0 - t / *total_steps as f64).powf(*power)
            }
            LrSchedule::Cosine {
                total_steps,
                min_lr,
            } => {
                let t = step.min(*total_steps) as f64;
                min_lr + (base - min_lr) * (1.0 + (PI * t / *total_steps as f64).cos()) / 2.0
            }
            LrSchedule::Warmup {
                steps,
                start_factor,
                then,
            } => {
                if step < *steps {
                    base * (start_factor + (1.0 - start_factor) * step as f64 / *steps as f64)
                } else {
                    then.lr(base, step - steps)
                }
            }
        }
    }
}

/// Applies an [`LrSchedule`] to an optimizer: remembers each group's base lr (its lr when the
/// scheduler was made) and the step, and sets every group's lr after each [`LrScheduler::step`].
#[derive(Clone, Debug)]
pub struct LrScheduler {
    schedule: LrSchedule,
    base_lrs: Vec<f64>,
    step: u64,
}

/// Prefix of the scheduler's keys in a checkpoint.
const SCHEDULER_PREFIX: &str = "scheduler.";

impl LrScheduler {
    /// Takes the optimizer's current lrs as base lrs and sets the step-0 lrs (as PyTorch's
    /// schedulers do on construction).
    pub fn new(schedule: LrSchedule, optimizer: &mut dyn Optimizer) -> Result<Self> {
        schedule.validate()?;
        let scheduler = LrScheduler {
            schedule,
            base_lrs: optimizer.lrs(),
            step: 0,
        };
        scheduler.apply(optimizer)?;
        Ok(scheduler)
    }

    /// Advances one step and sets the optimizer's lrs (call after `optimizer.step()`).
    pub fn step(&mut self, optimizer: &mut dyn Optimizer) -> Result<()> {
        self.step += 1;
        self.apply(optimizer)
    }

    /// The number of steps taken.
    pub fn current_step(&self) -> u64 {
        self.step
    }

    /// Each group's base lr.
    pub fn base_lrs(&self) -> &[f64] {
        &self.base_lrs
    }

    /// Each group's lr at the current step.
    pub fn lrs(&self) -> Vec<f64> {
        self.base_lrs
            .iter()
            .map(|&base| self.schedule.lr(base, self.step))
            .collect()
    }

    fn apply(&self, optimizer: &mut dyn Optimizer) -> Result<()> {
        let groups = optimizer.lrs().len();
        if groups != self.base_lrs.len() {
            return Err(Error::invalid(
                "LrScheduler",
                format!(
                    "the optimizer has {groups} groups, the scheduler was made for {}",
                    self.base_lrs.len()
                ),
            ));
        }
        for (group, lr) in self.lrs().into_iter().enumerate() {
            optimizer.set_group_lr(group, lr)?;
        }
        Ok(())
    }

    /// `scheduler.step` and `scheduler.base_lr.<group>`, exactly encoded (see
    /// [`super::encode_scalar`]).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            format!("{SCHEDULER_PREFIX}step"),
            encode_scalar(self.step as f64),
        )];
        for (group, &base) in self.base_lrs.iter().enumerate() {
            out.push((
                format!("{SCHEDULER_PREFIX}base_lr.{group}"),
                encode_scalar(base),
            ));
        }
        out
    }

    /// Restores the step and base lrs (one per group this scheduler has); the optimizer's own
    /// lrs come back with its state. Errors name the missing or unexpected key.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let mut reader = StateReader::new(tensors);
        let step = reader.count(&format!("{SCHEDULER_PREFIX}step"))?;
        let base_lrs = (0..self.base_lrs.len())
            .map(|g| reader.scalar(&format!("{SCHEDULER_PREFIX}base_lr.{g}")))
            .collect::<Result<Vec<f64>>>()?;
        reader.finish(SCHEDULER_PREFIX)?;
        self.step = step;
        self.base_lrs = base_lrs;
        Ok(())
    }
}
