//! SoftConvMoE: soft routing (moe.md §5) of the patch tokens of a replaced convolution — the
//! Soft-MoE idea on PatchConvMoE's tokens (moe.md §1.1–1.2), which no other implementation has.
//!
//! The layer replaces a stride-1, size-preserving conv by path exactly like PatchConvMoE: the
//! map is cut into the same grid of patches, each token a patch with the conv's halo. Then, per
//! image (`m` = patches per image, `n` experts, `p` slots per expert, `S = n·p` slots):
//!
//! 1. **Router.** Each token is described by its channel means (the token's global average
//!    pool, halo included: the descriptor PatchConvMoE's `gap_linear` gate reads). A flattened
//!    patch would tie the router to one patch size, while a grid's patch size follows the input
//!    size (training crops vs. whole evaluation images). Logits `L = x̂·(scale·φ̂)`, `[m, S]`,
//!    with `φ: [C, n, p]` initialised N(0, 1/C), `x̂`, `φ̂` L2-normalised over the channels and
//!    `scale` a learnable scalar (init 1); with `normalize = false` neither is normalised and
//!    there is no `scale`, as in the `soft-moe` package.
//! 2. **Dispatch / combine.** `D = softmax over the m tokens` per slot, `Cw = softmax over the
//!    S slots` per token.
//! 3. **Slots** are convex combinations of the image's *raw* tokens, `X̃ = Dᵀ·X` over the whole
//!    haloed token tensors (the paper's and vmoe's router; the package's normalised-slot mode
//!    would rescale the pixels the conv sees, so it is not offered here).
//! 4. **Experts.** Expert `j` (a copy of the replaced conv, applied without padding) runs on its
//!    `p` slots; all `B·S` slots go through one routed-conv call (the slot's expert, weight 1).
//! 5. **Combine** `Y = Cw·Ỹ` per token, then the patches are reassembled and cropped.
//!
//! The cost is set by the number of slots, not the number of experts: `B·S` patch convolutions
//! (the replaced conv on `B·m` patches costs the same when `S = m`), plus the routing products.
//! No top-k, nothing dropped, no balancing loss. State-dict keys `phi`, `scale`,
//! `experts.{j}.weight|bias` (the package's names and order). With one expert, one slot per
//! patch and the routing forced to the identity ([`SoftConvMoE::set_routing_override`]) the
//! layer is exactly the replaced conv. Routing diagnostics (vmoe's, as for the token layer) are
//! recorded while [`SoftRoutingLayer::diagnostics`] is on; `moeseg routing-stats` reports them.

use crate::autograd::lock;
use crate::error::{Error, Result};
use crate::moe::patch_conv_moe::{
    conv_expert, expert_copy, replace_conv_by, size_preserving_halo, token_grid,
};
use crate::moe::soft_moe::diagnostics::{DiagnosticsRecorder, SoftRoutingLayer};
use crate::moe::soft_moe::route;
use crate::moe::{ExpertInit, Granularity};
use crate::nn::{Conv2d, Module, ModuleList, OwnTensor};
use crate::ops::conv::Conv2dParams;
use crate::ops::routed_conv::RoutedConvParams;
use crate::tensor::{with_default_rng, Tensor};
use std::any::Any;

/// Hyper-parameters of a SoftConvMoE layer.
#[derive(Clone, Copy, Debug)]
pub struct SoftConvMoeConfig {
    /// Number of experts n.
    pub num_experts: usize,
    /// Slots per expert p.
    pub slots_per_expert: usize,
    /// Token granularity (as PatchConvMoE's).
    pub granularity: Granularity,
    /// L2-normalise the token descriptors and φ, with a learnable `scale`.
    pub normalize: bool,
    /// Expert initialisation.
    pub init: ExpertInit,
}

impl Default for SoftConvMoeConfig {
    fn default() -> Self {
        SoftConvMoeConfig {
            num_experts: 8,
            slots_per_expert: 1,
            granularity: Granularity::Grid(3),
            normalize: true,
            init: ExpertInit::KaimingNormal,
        }
    }
}

/// The dispatch and combine weights of one forward, `[B, m, S]` each (detached).
#[derive(Clone, Debug)]
pub struct SoftRouting {
    /// Softmax over tokens (axis 1) per slot.
    pub dispatch: Tensor,
    /// Softmax over slots (axis 2) per token.
    pub combine: Tensor,
}

/// The layer; see the module docs.
pub struct SoftConvMoE {
    /// Router `[C, n, p]`.
    pub phi: Tensor,
    /// Learnable logit scale `[1]` (only with `normalize`).
    pub scale: Option<Tensor>,
    /// The expert convs (each a copy of the replaced conv's geometry).
    pub experts: ModuleList,
    /// Hyper-parameters.
    pub config: SoftConvMoeConfig,
    conv_params: Conv2dParams,
    kernel: [usize; 2],
    routing_override: std::sync::Mutex<Option<SoftRouting>>,
    last: std::sync::Mutex<Option<SoftRouting>>,
    diagnostics: DiagnosticsRecorder,
}

impl SoftConvMoE {
    /// A SoftConvMoE in place of `conv` (stride 1, size preserving, as for PatchConvMoE).
    pub fn from_conv(conv: &Conv2d, config: SoftConvMoeConfig) -> Result<Self> {
        let kernel = conv.kernel_size();
        size_preserving_halo(kernel, conv.params)?;
        if config.num_experts == 0 || config.slots_per_expert == 0 {
            return Err(Error::invalid(
                "SoftConvMoE",
                format!(
                    "need at least one expert and one slot per expert, got {} experts × {} slots",
                    config.num_experts, config.slots_per_expert
                ),
            ));
        }
        let channels = conv.in_channels();
        let shape = [channels, config.num_experts, config.slots_per_expert];
        let std = 1.0 / (channels as f32).sqrt();
        let phi = with_default_rng(|rng| Tensor::randn(shape, 0.0, std, rng))?;
        let scale = config
            .normalize
            .then(|| Tensor::ones([1], &crate::Device::Cpu))
            .transpose()?
            .map(|s| s.with_requires_grad(true));
        let mut experts: Vec<Box<dyn Module>> = Vec::with_capacity(config.num_experts);
        for _ in 0..config.num_experts {
            experts.push(Box::new(expert_copy(conv, config.init)?));
        }
        Ok(SoftConvMoE {
            phi: phi.with_requires_grad(true),
            scale,
            experts: ModuleList::new(experts),
            config,
            conv_params: conv.params,
            kernel,
            routing_override: std::sync::Mutex::new(None),
            last: std::sync::Mutex::new(None),
            diagnostics: DiagnosticsRecorder::default(),
        })
    }

    /// Total slots per image `S = n·p`.
    pub fn slots(&self) -> usize {
        self.config.num_experts * self.config.slots_per_expert
    }

    /// Test hook: use these dispatch and combine weights (`[B, m, S]`) instead of the router's
    /// (`None`: the router again). E.g. identity matrices with one expert and `S = m` make the
    /// layer the replaced conv.
    pub fn set_routing_override(&self, routing: Option<SoftRouting>) {
        *lock(&self.routing_override) = routing;
    }

    /// The dispatch and combine weights of the last forward.
    pub fn last_routing(&self) -> Option<SoftRouting> {
        lock(&self.last).clone()
    }

    fn expert_conv(&self, e: usize) -> Result<&Conv2d> {
        conv_expert(&self.experts, "SoftConvMoE", e)
    }

    /// The router's dispatch and combine weights `[B, m, S]` from the tokens `[B·m, C, th, tw]`
    /// (their channel means are the descriptors).
    fn route(&self, tokens: &Tensor, batch: usize, per_image: usize) -> Result<SoftRouting> {
        let channels = self.phi.dims()[0];
        let descriptors = tokens
            .mean(&[2, 3], false)?
            .reshape_to([batch, per_image, channels])?;
        let (_, dispatch, combine) = route(&descriptors, &self.phi, self.scale.as_ref())?;
        Ok(SoftRouting { dispatch, combine })
    }
}

impl SoftRoutingLayer for SoftConvMoE {
    fn diagnostics(&self) -> &DiagnosticsRecorder {
        &self.diagnostics
    }
}

impl Module for SoftConvMoE {
    fn type_name(&self) -> &'static str {
        "SoftConvMoE"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let grid = token_grid(
            "SoftConvMoE",
            input,
            self.config.granularity,
            self.kernel,
            self.conv_params,
        )?;
        let tokens = input.patch_split(grid)?;
        let (batch, per_image, slots) = (grid.batch, grid.patches_per_image(), self.slots());
        let routing = match lock(&self.routing_override).clone() {
            Some(forced) => {
                let want = [batch, per_image, slots];
                if forced.dispatch.dims() != want || forced.combine.dims() != want {
                    return Err(Error::shape(
                        "SoftConvMoE",
                        format!(
                            "routing override of shapes {} / {} does not match [B, m, S] = {want:?}",
                            forced.dispatch.shape(),
                            forced.combine.shape()
                        ),
                    ));
                }
                forced
            }
            None => self.route(&tokens, batch, per_image)?,
        };
        let [_, channels, th, tw] = grid.token_shape();
        let flat = tokens.reshape_to([batch, per_image, channels * th * tw])?;
        let slot_tokens = routing
            .dispatch
            .transpose(1, 2)?
            .matmul(&flat)?
            .reshape_to([batch * slots, channels, th, tw])?;
        let device = input.device();
        let p = self.config.slots_per_expert;
        let expert_of_slot: Vec<f32> = (0..batch * slots)
            .map(|s| ((s % slots) / p) as f32)
            .collect();
        let indices = Tensor::from_vec_on(expert_of_slot, [batch * slots, 1], &device)?;
        let ones = Tensor::ones([batch * slots, 1], &device)?;
        let experts: Vec<&Conv2d> = (0..self.config.num_experts)
            .map(|e| self.expert_conv(e))
            .collect::<Result<_>>()?;
        let weights: Vec<&Tensor> = experts.iter().map(|c| &c.weight).collect();
        let biases: Option<Vec<&Tensor>> = experts.iter().map(|c| c.bias.as_ref()).collect();
        let routed = RoutedConvParams {
            dilation: self.conv_params.dilation,
            groups: self.conv_params.groups,
        };
        let outputs = slot_tokens.dispatch_routed_conv(
            &weights,
            biases.as_deref(),
            &indices,
            &ones,
            routed,
        )?;
        let [_, out_channels, ph, pw] = [
            outputs.dims()[0],
            outputs.dims()[1],
            outputs.dims()[2],
            outputs.dims()[3],
        ];
        let combined = routing
            .combine
            .matmul(&outputs.reshape_to([batch, slots, out_channels * ph * pw])?)?
            .reshape_to([batch * per_image, out_channels, ph, pw])?;
        self.diagnostics.observe(
            &routing.dispatch,
            &routing.combine,
            &self.phi,
            self.config.num_experts,
        )?;
        *lock(&self.last) = Some(SoftRouting {
            dispatch: routing.dispatch.detach(),
            combine: routing.combine.detach(),
        });
        combined.patch_reassemble(grid)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("experts".to_string(), &self.experts as &dyn Module)]
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        match name {
            "experts" => Some(&mut self.experts),
            _ => None,
        }
    }

    fn own_tensors(&self) -> Vec<OwnTensor> {
        let mut own = vec![OwnTensor::parameter("phi", &self.phi)];
        if let Some(scale) = &self.scale {
            own.push(OwnTensor::parameter("scale", scale));
        }
        own
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Replaces the conv at `path` of `root` by a SoftConvMoE; a path that is not a stride-1,
/// size-preserving `Conv2d` is an error naming it.
pub fn replace_conv_with_soft_moe(
    root: &mut dyn Module,
    path: &str,
    config: SoftConvMoeConfig,
) -> Result<()> {
    replace_conv_by(root, path, "SoftConvMoE", |conv| {
        Ok(Box::new(SoftConvMoE::from_conv(conv, config)?))
    })
}
