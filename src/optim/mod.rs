//! Optimizers and learning-rate schedules, numerically faithful to `torch.optim`.
//!
//! - [`Sgd`] and [`Adam`] (AdamW through [`AdamOptions::adamw`]) over named parameter groups
//!   ([`ParamGroup`]); each parameter's update is one fused kernel call
//!   ([`crate::ops::optimizer`]).
//! - [`LrScheduler`] applies an [`LrSchedule`] (constant, poly, cosine, linear warm-up) to every
//!   group, each from its own base lr.
//! - `state_tensors` / `load_state` turn optimizer and scheduler state into named tensors, so one
//!   safetensors file holds model, optimizer and scheduler; resuming is bit-identical.
//!
//! ```no_run
//! # use moeseg::{Tensor, Result};
//! # use moeseg::optim::*;
//! # fn demo(params: Vec<(String, Tensor)>, loss: impl Fn() -> Result<Tensor>) -> Result<()> {
//! let mut opt = Sgd::with_params(params, SgdOptions { momentum: 0.9, ..SgdOptions::new(0.01) })?;
//! let mut sched = LrScheduler::new(LrSchedule::poly(1000).with_warmup(50, 0.1), &mut opt)?;
//! for _ in 0..1000 {
//!     opt.zero_grad();
//!     loss()?.backward()?;
//!     opt.step()?;
//!     sched.step(&mut opt)?;
//! }
//! # Ok(()) }
//! ```

mod adam;
mod checkpoint;
mod clip;
mod schedule;
mod sgd;

pub use adam::{Adam, AdamOptions, AdamState};
pub use checkpoint::{decode_scalar, encode_scalar};
pub use clip::clip_grad_norm;
pub use schedule::{LrSchedule, LrScheduler};
pub use sgd::{Sgd, SgdOptions, SgdState};

use crate::autograd::NoGradGuard;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use checkpoint::StateReader;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Prefix of every optimizer key in a checkpoint.
const STATE_PREFIX: &str = "optim.";

/// What every optimizer offers (object safe, so schedulers and training loops take
/// `&mut dyn Optimizer`).
pub trait Optimizer {
    /// One update of every parameter that has a gradient (others are skipped, like PyTorch),
    /// without recording in the autograd graph.
    fn step(&mut self) -> Result<()>;

    /// Drops every parameter's gradient (`zero_grad(set_to_none=True)`).
    fn zero_grad(&self);

    /// The current learning rate of each group.
    fn lrs(&self) -> Vec<f64>;

    /// Sets the learning rate of group `group`.
    fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()>;

    /// Sets the learning rate of every group.
    fn set_lr(&mut self, lr: f64) -> Result<()> {
        (0..self.lrs().len()).try_for_each(|g| self.set_group_lr(g, lr))
    }

    /// Hyper-parameters of each group (`optim.group.<i>.<name>`) and each parameter's step
    /// count and buffers (`optim.state.<param name>.step`, `.momentum_buffer`, `.exp_avg`, ...).
    fn state_tensors(&self) -> Vec<(String, Tensor)>;

    /// Restores what [`Optimizer::state_tensors`] wrote (other keys, such as the model's, are
    /// ignored). Every group and parameter must be present with buffers of the right shape,
    /// and no `optim.` key may be left over; errors name the offending key. On error nothing
    /// changes.
    fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()>;
}

/// Named parameters sharing hyper-parameters (`optimizer.param_groups[i]`). Names are the
/// state-dict names (`backbone.layer1.0.conv1.weight`) and key the optimizer state.
#[derive(Clone, Debug)]
pub struct ParamGroup<O> {
    /// The parameters, by state-dict name.
    pub params: Vec<(String, Tensor)>,
    /// The group's hyper-parameters ([`SgdOptions`], [`AdamOptions`]).
    pub options: O,
}

impl<O> ParamGroup<O> {
    /// A group of `params` with `options`.
    pub fn new(params: Vec<(String, Tensor)>, options: O) -> Self {
        ParamGroup { params, options }
    }
}

/// The per-optimizer part of a [`GroupOptimizer`]: a group's hyper-parameters, which also
/// know the per-parameter state and the update.
pub trait GroupOptions: Clone + fmt::Debug {
    /// Buffers of one parameter (empty before its first step).
    type State: Default + Clone;

    /// The optimizer's name in errors.
    const NAME: &'static str;

    /// The learning rate.
    fn lr(&self) -> f64;

    /// Replaces the learning rate.
    fn set_lr(&mut self, lr: f64);

    /// Argument checks as PyTorch does them; the message names the bad hyper-parameter.
    fn validate(&self) -> std::result::Result<(), String>;

    /// One update of `param` at step `step` (1 on its first update): the new values and state.
    fn update(
        &self,
        param: &Tensor,
        grad: &Tensor,
        step: u64,
        state: &Self::State,
    ) -> Result<(Tensor, Self::State)>;

    /// The hyper-parameters as named numbers (flags as 0 / 1).
    fn to_scalars(&self) -> Vec<(&'static str, f64)>;

    /// Reads back what [`GroupOptions::to_scalars`] wrote; `read` fails naming a missing key.
    fn from_scalars(read: &mut dyn FnMut(&'static str) -> Result<f64>) -> Result<Self>;

    /// The named buffers of a parameter's state.
    fn state_buffers(state: &Self::State) -> Vec<(&'static str, Tensor)>;

    /// Rebuilds the state after `step` (≥ 1) updates under these options; `read` gives a
    /// buffer by name (checked to have the parameter's shape) or fails naming the key.
    fn restore_state(
        &self,
        step: u64,
        read: &mut dyn FnMut(&'static str) -> Result<Tensor>,
    ) -> Result<Self::State>;
}

/// One parameter's step count and buffers.
#[derive(Clone, Default)]
struct ParamSlot<S> {
    step: u64,
    state: S,
}

/// An optimizer over parameter groups; [`Sgd`] and [`Adam`] are this with their options.
pub struct GroupOptimizer<O: GroupOptions> {
    groups: Vec<ParamGroup<O>>,
    /// `slots[g][i]` belongs to `groups[g].params[i]`.
    slots: Vec<Vec<ParamSlot<O::State>>>,
}

impl<O: GroupOptions> GroupOptimizer<O> {
    /// An optimizer over `groups`. Fails on invalid hyper-parameters, a parameter that is not a
    /// leaf, or a name or tensor that appears twice.
    pub fn new(groups: Vec<ParamGroup<O>>) -> Result<Self> {
        if groups.is_empty() {
            return Err(Error::invalid(
                O::NAME,
                "needs at least one parameter group",
            ));
        }
        let mut names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for (g, group) in groups.iter().enumerate() {
            validate_options(&group.options, g)?;
            for (name, param) in &group.params {
                if !param.is_leaf() {
                    return Err(Error::invalid(
                        O::NAME,
                        format!("parameter `{name}` (group {g}) is not a leaf tensor"),
                    ));
                }
                if !names.insert(name.clone()) || !ids.insert(param.id()) {
                    return Err(Error::invalid(
                        O::NAME,
                        format!("parameter `{name}` (group {g}) appears more than once"),
                    ));
                }
            }
        }
        let slots = groups
            .iter()
            .map(|g| vec![ParamSlot::default(); g.params.len()])
            .collect();
        Ok(GroupOptimizer { groups, slots })
    }

    /// An optimizer with one group.
    pub fn with_params(params: Vec<(String, Tensor)>, options: O) -> Result<Self> {
        Self::new(vec![ParamGroup::new(params, options)])
    }

    /// The parameter groups.
    pub fn groups(&self) -> &[ParamGroup<O>] {
        &self.groups
    }

    /// Replaces the hyper-parameters of group `group` (validated); the state is kept.
    pub fn set_options(&mut self, group: usize, options: O) -> Result<()> {
        validate_options(&options, group)?;
        self.group_mut(group)?.options = options;
        Ok(())
    }

    /// The number of updates parameter `name` has had.
    pub fn param_step(&self, name: &str) -> Option<u64> {
        self.params()
            .find(|(_, (n, _), _)| *n == name)
            .map(|(_, _, slot)| slot.step)
    }

    fn group_mut(&mut self, group: usize) -> Result<&mut ParamGroup<O>> {
        let count = self.groups.len();
        self.groups.get_mut(group).ok_or_else(|| {
            Error::invalid(
                O::NAME,
                format!("no parameter group {group} (there are {count})"),
            )
        })
    }

    /// Every parameter with its group's options and its slot.
    fn params(&self) -> impl Iterator<Item = (&O, &(String, Tensor), &ParamSlot<O::State>)> {
        self.groups
            .iter()
            .zip(&self.slots)
            .flat_map(|(group, slots)| {
                group
                    .params
                    .iter()
                    .zip(slots)
                    .map(move |(param, slot)| (&group.options, param, slot))
            })
    }
}

fn validate_options<O: GroupOptions>(options: &O, group: usize) -> Result<()> {
    options
        .validate()
        .map_err(|msg| Error::invalid(O::NAME, format!("group {group}: {msg}")))
}

/// Checks a learning-rate-like value: finite and ≥ 0.
fn check_non_negative(what: &str, value: f64) -> std::result::Result<(), String> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(format!("{what} must be finite and ≥ 0, got {value}"))
    }
}

impl<O: GroupOptions> Optimizer for GroupOptimizer<O> {
    fn step(&mut self) -> Result<()> {
        let _no_grad = NoGradGuard::new();
        for (group, slots) in self.groups.iter().zip(&mut self.slots) {
            for ((name, param), slot) in group.params.iter().zip(slots.iter_mut()) {
                let Some(grad) = param.grad() else { continue };
                let step = slot.step + 1;
                let (values, state) = group
                    .options
                    .update(param, &grad, step, &slot.state)
                    .map_err(|e| Error::invalid(O::NAME, format!("parameter `{name}`: {e}")))?;
                param.replace_data(&values)?;
                *slot = ParamSlot { step, state };
            }
        }
        Ok(())
    }

    fn zero_grad(&self) {
        for group in &self.groups {
            for (_, param) in &group.params {
                param.clear_grad();
            }
        }
    }

    fn lrs(&self) -> Vec<f64> {
        self.groups.iter().map(|g| g.options.lr()).collect()
    }

    fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        check_non_negative("lr", lr).map_err(|msg| Error::invalid(O::NAME, msg))?;
        self.group_mut(group)?.options.set_lr(lr);
        Ok(())
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (g, group) in self.groups.iter().enumerate() {
            for (field, value) in group.options.to_scalars() {
                out.push((
                    format!("{STATE_PREFIX}group.{g}.{field}"),
                    encode_scalar(value),
                ));
            }
        }
        for (_, (name, _), slot) in self.params() {
            let key = format!("{STATE_PREFIX}state.{name}");
            out.push((format!("{key}.step"), encode_scalar(slot.step as f64)));
            for (buffer, tensor) in O::state_buffers(&slot.state) {
                out.push((format!("{key}.{buffer}"), tensor));
            }
        }
        out
    }

    fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let mut reader = StateReader::new(tensors);
        let mut options = Vec::with_capacity(self.groups.len());
        for g in 0..self.groups.len() {
            let opts = O::from_scalars(&mut |field| {
                reader.scalar(&format!("{STATE_PREFIX}group.{g}.{field}"))
            })?;
            validate_options(&opts, g)?;
            options.push(opts);
        }
        let mut slots = Vec::with_capacity(self.groups.len());
        for (group, opts) in self.groups.iter().zip(&options) {
            let mut group_slots = Vec::with_capacity(group.params.len());
            for (name, param) in &group.params {
                let key = format!("{STATE_PREFIX}state.{name}");
                let step = reader.count(&format!("{key}.step"))?;
                let state = if step == 0 {
                    O::State::default()
                } else {
                    // The state lives on the parameter's device (a checkpoint loads on the
                    // CPU).
                    opts.restore_state(step, &mut |buffer| {
                        reader
                            .buffer(&format!("{key}.{buffer}"), param.shape())?
                            .to_device(&param.device())
                    })?
                };
                group_slots.push(ParamSlot { step, state });
            }
            slots.push(group_slots);
        }
        reader.finish(STATE_PREFIX)?;
        for (group, opts) in self.groups.iter_mut().zip(options) {
            group.options = opts;
        }
        self.slots = slots;
        Ok(())
    }
}
