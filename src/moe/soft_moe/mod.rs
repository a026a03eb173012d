//! Soft Mixture of Experts over tokens ("From Sparse to Soft Mixtures of Experts", Puigcerver
//! et al.; `../shared/spec/moe.md` §5), weight-compatible with the reference package `soft-moe`
//! 0.0.1 (`soft_moe.SoftMoELayerWrapper`).
//!
//! Tokens `X: [b, m, d]`, `n` experts with `p` slots each (`s = n·p` slots), router
//! `phi: [d, n, p]`:
//!
//! 1. logits `L = X̂ · Φ̂` of shape `[b, m, s]`, where with `normalize = true` (the default)
//!    `X̂` is `X` L2-normalised over `d` per token and `Φ̂` is `scale` times `phi` L2-normalised
//!    over `d` per slot (PyTorch's `F.normalize`: `v / max(‖v‖₂, 1e-12)`); with `normalize = false`,
//!    `X̂ = X`, `Φ̂ = phi` and the layer has no `scale` parameter (as in the package);
//! 2. dispatch `D = softmax over the m tokens` (per image and slot) and combine
//!    `C = softmax over the s slots` (per image and token), both `[b, m, s]`, from one fused
//!    pass over the logits ([`Tensor::soft_route`]);
//! 3. slots `X̃ = Dᵀ · S`, `[b, s, d]`, where the slot source `S` is chosen by [`SlotSource`]:
//!    [`SlotSource::Normalized`] (the default, the package's behaviour: `S = X̂`, so its
//!    checkpoints reproduce) or [`SlotSource::Raw`] (the paper's Algorithm 1 and vmoe's router:
//!    `S = X`). Without normalisation both are `X`;
//! 4. expert `j` maps its `p` slots `X̃[:, j·p .. (j+1)·p]` (`[b, p, d]`) to `Ỹ_j` (`[b, p, d_out]`);
//! 5. output `Y = C · Ỹ`, `[b, m, d_out]`.
//!
//! No top-k, no token dropping, no balancing loss. Parameters are named as the package names
//! them: `phi`, `scale` (only with `normalize`), `experts.{j}.…`.
//!
//! The experts are any [`Module`] mapping `[b, p, d] → [b, p, d_out]`. When they are all
//! [`Linear`](crate::nn::Linear) layers or all timm-style [`Mlp`](crate::nn::Mlp)s of one
//! shape (the common case), the `n` expert GEMMs of each projection run as one op: on the CPU
//! [`Tensor::grouped_linear`] on the experts' own weights, elsewhere one batched matmul over
//! the stacked weights ([`experts`]); any other expert type runs expert by expert. [`SoftMoE::set_generic_experts`] forces the per-expert path (the tests compare the
//! two).
//!
//! Routing diagnostics as vmoe logs them ([`diagnostics`]) are computed on every forward while
//! [`SoftMoE::set_record_diagnostics`] is on: the last forward's
//! ([`SoftMoE::last_diagnostics`]) and all of them merged ([`SoftMoE::recorded_diagnostics`],
//! what `moeseg routing-stats` reports for the validation set).

pub mod diagnostics;
pub mod experts;

use crate::error::{Error, Result};
use crate::nn::{Module, ModuleList, OwnTensor};
use crate::tensor::{with_default_rng, Tensor};
use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};

pub use diagnostics::{DiagnosticsRecorder, Similarity, SoftRoutingDiagnostics, SoftRoutingLayer};

/// Which tokens the slots are mixed from (step 3 of the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SlotSource {
    /// The L2-normalised tokens, as the reference package `soft-moe` 0.0.1 does (default).
    #[default]
    Normalized,
    /// The raw tokens, as the paper's Algorithm 1 and vmoe's `SoftRouter` do.
    Raw,
}

/// Shape and options of a [`SoftMoE`] layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftMoeConfig {
    /// Token dimension `d`.
    pub dim: usize,
    /// Number of experts `n`.
    pub num_experts: usize,
    /// Slots per expert `p`.
    pub slots_per_expert: usize,
    /// L2-normalise tokens and `phi` for the logits and learn `scale` (the package's default).
    pub normalize: bool,
    /// Where the slots come from.
    pub slot_source: SlotSource,
}

impl SoftMoeConfig {
    /// `d`, `n`, `p` with the package's defaults (`normalize = true`, slots from the
    /// normalised tokens).
    pub fn new(dim: usize, num_experts: usize, slots_per_expert: usize) -> Self {
        SoftMoeConfig {
            dim,
            num_experts,
            slots_per_expert,
            normalize: true,
            slot_source: SlotSource::Normalized,
        }
    }

    /// Total number of slots `s = n·p`.
    pub fn slots(&self) -> usize {
        self.num_experts * self.slots_per_expert
    }
}

/// The Soft-MoE layer (`SoftMoELayerWrapper`); see the module documentation.
pub struct SoftMoE {
    /// Router `[d, n, p]`, initialised N(0, 1/d).
    pub phi: Tensor,
    /// Learnable scale `[1]` of the normalised router (present only with `normalize`), init 1.
    pub scale: Option<Tensor>,
    /// The `n` experts (`experts.{j}.…`).
    pub experts: ModuleList,
    config: SoftMoeConfig,
    generic_experts: AtomicBool,
    /// The last recorded forward's diagnostics and the merge of all since recording began.
    diagnostics: DiagnosticsRecorder,
}

impl SoftMoE {
    /// A layer with freshly initialised router and the experts `make_expert(j)` builds, for
    /// `j` in `0..n`.
    pub fn new(
        config: SoftMoeConfig,
        mut make_expert: impl FnMut(usize) -> Result<Box<dyn Module>>,
    ) -> Result<Self> {
        let experts = (0..config.num_experts)
            .map(&mut make_expert)
            .collect::<Result<Vec<_>>>()?;
        Self::with_experts(config, experts)
    }

    /// A layer over the given experts (their number must be `config.num_experts`).
    pub fn with_experts(config: SoftMoeConfig, experts: Vec<Box<dyn Module>>) -> Result<Self> {
        let SoftMoeConfig {
            dim,
            num_experts,
            slots_per_expert,
            ..
        } = config;
        if dim == 0 || num_experts == 0 || slots_per_expert == 0 {
            return Err(Error::invalid(
                "SoftMoE",
                format!(
                    "dim {dim}, num_experts {num_experts} and slots_per_expert \
                     {slots_per_expert} must all be at least 1"
                ),
            ));
        }
        if experts.len() != num_experts {
            return Err(Error::invalid(
                "SoftMoE",
                format!(
                    "{} experts given for num_experts {num_experts}",
                    experts.len()
                ),
            ));
        }
        let std = 1.0 / (dim as f32).sqrt();
        let phi = with_default_rng(|rng| {
            Tensor::randn([dim, num_experts, slots_per_expert], 0.0, std, rng)
        })?
        .with_requires_grad(true);
        let scale = config
            .normalize
            .then(|| Tensor::from_vec(vec![1.0], [1]))
            .transpose()?
            .map(|t| t.with_requires_grad(true));
        Ok(SoftMoE {
            phi,
            scale,
            experts: ModuleList::new(experts),
            config,
            generic_experts: AtomicBool::new(false),
            diagnostics: DiagnosticsRecorder::default(),
        })
    }

    /// The layer's configuration.
    pub fn config(&self) -> SoftMoeConfig {
        self.config
    }

    /// Forces (`true`) the expert-by-expert path even for Linear / Mlp experts.
    pub fn set_generic_experts(&self, generic: bool) {
        self.generic_experts.store(generic, Ordering::Relaxed);
    }

    /// Turns the routing diagnostics of every following forward on or off (off by default:
    /// they copy the routing weights to the host). Turning it on clears what was recorded.
    pub fn set_record_diagnostics(&self, record: bool) {
        self.diagnostics.set_recording(record);
    }

    /// The diagnostics of the last forward run while recording was on.
    pub fn last_diagnostics(&self) -> Option<SoftRoutingDiagnostics> {
        self.diagnostics.last()
    }

    /// The diagnostics of every forward since recording was turned on, merged
    /// ([`SoftRoutingDiagnostics::merge`]).
    pub fn recorded_diagnostics(&self) -> Option<SoftRoutingDiagnostics> {
        self.diagnostics.merged()
    }

    /// Dispatch and combine weights `[b, m, s]` of `tokens` `[b, m, d]`, and the slot source.
    pub fn routing_weights(&self, tokens: &Tensor) -> Result<Routing> {
        self.check_input(tokens)?;
        let (normalized, dispatch, combine) = route(tokens, &self.phi, self.scale.as_ref())?;
        let slot_source = match self.config.slot_source {
            SlotSource::Normalized => normalized,
            SlotSource::Raw => tokens.clone(),
        };
        Ok(Routing {
            dispatch,
            combine,
            slot_source,
        })
    }

    fn check_input(&self, tokens: &Tensor) -> Result<()> {
        match *tokens.dims() {
            [_, m, d] if d == self.config.dim && m > 0 => Ok(()),
            _ => Err(Error::shape(
                "SoftMoE",
                format!(
                    "input {} must be [batch, tokens, {}] with at least one token",
                    tokens.shape(),
                    self.config.dim
                ),
            )),
        }
    }

    /// The experts on their slots: `[b, s, d]` → `[b, s, d_out]`.
    fn run_experts(&self, slots: &Tensor) -> Result<Tensor> {
        let stacked = if self.generic_experts.load(Ordering::Relaxed) {
            None
        } else {
            experts::StackedExperts::detect(&self.experts)
        };
        match stacked {
            Some(stacked) => stacked.forward(slots, self.config.num_experts),
            None => self.run_experts_one_by_one(slots),
        }
    }

    fn run_experts_one_by_one(&self, slots: &Tensor) -> Result<Tensor> {
        let (b, p, d) = (
            slots.dims()[0],
            self.config.slots_per_expert,
            self.config.dim,
        );
        let per_expert = slots.reshape_to([b, self.config.num_experts, p, d])?;
        let mut outputs = Vec::with_capacity(self.experts.items.len());
        for (j, expert) in self.experts.items.iter().enumerate() {
            let input = per_expert.narrow(1, j, 1)?.reshape_to([b, p, d])?;
            let out = expert.forward(&input)?;
            let d_out = match *out.dims() {
                [ob, op, d_out] if ob == b && op == p => d_out,
                _ => {
                    return Err(Error::shape(
                        "SoftMoE",
                        format!(
                            "expert {j} ({}) mapped its slots {} to {}; expected [{b}, {p}, d_out]",
                            expert.type_name(),
                            input.shape(),
                            out.shape()
                        ),
                    ))
                }
            };
            outputs.push(out.reshape_to([b, 1, p, d_out])?);
        }
        let refs: Vec<&Tensor> = outputs.iter().collect();
        let joined = Tensor::cat(&refs, 1)?;
        let d_out = joined.dims()[3];
        joined.reshape_to([b, self.config.slots(), d_out])
    }
}

/// The routing of one forward (see [`SoftMoE::routing_weights`]).
pub struct Routing {
    /// `[b, m, s]`, softmax over the tokens (axis 1).
    pub dispatch: Tensor,
    /// `[b, m, s]`, softmax over the slots (axis 2).
    pub combine: Tensor,
    /// The tokens the slots are mixed from, `[b, m, d]`.
    pub slot_source: Tensor,
}

/// `F.normalize(x, dim=axis)`'s epsilon: `x / max(‖x‖₂, 1e-12)`.
const NORMALIZE_EPS: f32 = 1e-12;

/// The soft router (steps 1–2 of the module doc), shared by [`SoftMoE`] and
/// [`crate::moe::SoftConvMoE`]: token descriptors `x [b, m, d]` and router `phi [d, n, p]`
/// give `(x̂, dispatch, combine)`, the routing weights `[b, m, n·p]`. With a `scale` (the
/// layer normalises), `x̂` and `phi` are L2-normalised over `d` and `phi` is scaled; without,
/// `x̂ = x`.
pub(crate) fn route(
    x: &Tensor,
    phi: &Tensor,
    scale: Option<&Tensor>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (normalized, phi) = match scale {
        Some(scale) => (
            x.l2_normalize(2, NORMALIZE_EPS)?,
            phi.l2_normalize(0, NORMALIZE_EPS)?.mul(scale)?,
        ),
        None => (x.clone(), phi.clone()),
    };
    let dims = phi.dims();
    let phi = phi.reshape_to([dims[0], dims[1..].iter().product::<usize>()])?;
    let (dispatch, combine) = normalized.matmul(&phi)?.soft_route()?;
    Ok((normalized, dispatch, combine))
}

impl SoftRoutingLayer for SoftMoE {
    fn diagnostics(&self) -> &DiagnosticsRecorder {
        &self.diagnostics
    }
}

impl Module for SoftMoE {
    fn type_name(&self) -> &'static str {
        "SoftMoE"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let routing = self.routing_weights(input)?;
        let slots = routing
            .dispatch
            .transpose(1, 2)?
            .matmul(&routing.slot_source)?;
        let outputs = self.run_experts(&slots)?;
        self.diagnostics.observe(
            &routing.dispatch,
            &routing.combine,
            &self.phi,
            self.config.num_experts,
        )?;
        routing.combine.matmul(&outputs)
    }

    fn own_tensors(&self) -> Vec<OwnTensor> {
        let mut own = vec![OwnTensor::parameter("phi", &self.phi)];
        own.extend(self.scale.iter().map(|s| OwnTensor::parameter("scale", s)));
        own
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("experts".to_string(), &self.experts as &dyn Module)]
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        (name == "experts").then_some(&mut self.experts as &mut dyn Module)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
