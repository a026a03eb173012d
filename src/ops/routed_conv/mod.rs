//! Sparse expert dispatch (moe.md §1.5): each token is convolved only by the k experts its
//! router picked, and the k results are mixed with the routing weights:
//!
//! `y[t] = Σ_j w[t, j] · conv_{e(t, j)}(tokens[t])`, `e(t, j) = indices[t, j]`,
//!
//! where `conv_e` is expert `e`'s VALID (unpadded), stride-1 convolution with its own bias.
//!
//! Two forms, chosen by the backend ([`RoutedConvBackend::routed_conv_mixes_weights`]):
//!
//! - **Weight mixing** (the CPU backend's default): a convolution is linear in its weights, so
//!   `y[t] = conv(tokens[t]; Σ_j w[t, j]·W_e, Σ_j w[t, j]·b_e)` — one convolution per token
//!   with its mixed expert instead of k, the token gradient likewise, and the parameter
//!   gradients from the per-token weight gradient `G_t` (`∂W_e = Σ w·G_t`, `∂w = ⟨W_e, G_t⟩ +
//!   ⟨b_e, S_t⟩`). Same values up to f32 rounding, at about 1/k of the arithmetic.
//! - **Slot outputs** (the CUDA backend, and the CPU under
//!   [`crate::backend::cpu::with_portable_kernels`]), described below.
//!
//! The slot-output form runs as two kernels: [`RoutedConvBackend::routed_conv_expert_outputs`] computes the
//! *slot outputs* `s[t, j] = conv_{e(t, j)}(tokens[t])` (bias included, no routing weight), and
//! [`RoutedConvBackend::routed_conv_combine`] mixes them in slot order (0, 1, …), so the result
//! does not depend on how the experts' work was scheduled. The slot outputs are kept from the
//! forward (only when the routing weights need a gradient) for `∂L/∂w[t, j] = ⟨∂L/∂y[t],
//! s[t, j]⟩`; the other gradients have their own kernels and never materialise per-expert copies
//! of the tokens.

mod cpu;
mod cuda_kernel;
mod plan;

pub use plan::RoutingPlan;

use crate::error::{Error, Result};
use crate::ops::conv::{Conv2dGeometry, Conv2dParams};
use crate::tensor::{Storage, Tensor};

/// Hyper-parameters shared by every expert's convolution (stride 1, no padding), per axis
/// `[height, width]` for the dilation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutedConvParams {
    /// Spacing between kernel taps.
    pub dilation: [usize; 2],
    /// Channel groups of each expert's convolution.
    pub groups: usize,
}

impl Default for RoutedConvParams {
    /// No dilation, one group.
    fn default() -> Self {
        RoutedConvParams {
            dilation: [1, 1],
            groups: 1,
        }
    }
}

/// Every size of one routed convolution, validated: `tokens [tokens, in_channels, token_size]`,
/// `experts` stacked weights `[experts, out_channels, in_channels/groups, kernel]`, routing
/// `[tokens, slots]`, output `[tokens, out_channels, out_size]` with `out_size = token_size −
/// dilation·(kernel − 1)`. Plain numbers only, so kernels on any device can take it as is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutedConvGeometry {
    /// Tokens `T`.
    pub tokens: usize,
    /// Experts per token `k` (slots of the routing tensors).
    pub slots: usize,
    /// Experts `E`.
    pub experts: usize,
    /// Channels of a token.
    pub in_channels: usize,
    /// `[th, tw]` of a token (patch plus halo).
    pub token_size: [usize; 2],
    /// Channels of an expert's output.
    pub out_channels: usize,
    /// `[kh, kw]` of the experts' kernels.
    pub kernel: [usize; 2],
    /// `[height, width]` of one token's output.
    pub out_size: [usize; 2],
    /// Dilation and groups.
    pub params: RoutedConvParams,
}

impl RoutedConvGeometry {
    /// The convolution one expert applies to one token (batch 1, stride 1, no padding).
    pub fn token_conv(&self) -> Conv2dGeometry {
        Conv2dGeometry {
            batch: 1,
            in_channels: self.in_channels,
            in_size: self.token_size,
            out_channels: self.out_channels,
            kernel: self.kernel,
            out_size: self.out_size,
            params: Conv2dParams {
                stride: [1, 1],
                padding: [0; 4],
                dilation: self.params.dilation,
                groups: self.params.groups,
            },
        }
    }

    /// Elements of one expert's weight: `Cout · Cin/groups · kh · kw`.
    pub fn expert_weight_len(&self) -> usize {
        self.token_conv().weight_len()
    }

    /// Elements of the tokens tensor.
    pub fn tokens_len(&self) -> usize {
        self.tokens * self.token_conv().input_len()
    }

    /// Elements of the output `[T, Cout, oh, ow]`.
    pub fn output_len(&self) -> usize {
        self.tokens * self.token_conv().output_len()
    }

    /// Elements of the slot outputs `[T, k, Cout, oh, ow]`.
    pub fn slot_outputs_len(&self) -> usize {
        self.slots * self.output_len()
    }
}

/// Kernels of this family. `weights` is the experts' weights stacked `[E, Cout, Cin/g, kh, kw]`,
/// `biases` their biases stacked `[E, Cout]`, `indices` `[T, k]` expert ids (exact integers in
/// f32, in `0..E`), `routing_weights` `[T, k]`, `grad_out` `[T, Cout, oh, ow]`.
pub trait RoutedConvBackend {
    /// Slot outputs `s[t, j] = b_e + conv_e(tokens[t])` with `e = indices[t, j]`, shape
    /// `[T, k, Cout, oh, ow]`: every token computed only by its k experts.
    fn routed_conv_expert_outputs(
        &self,
        tokens: &Storage,
        weights: &Storage,
        biases: Option<&Storage>,
        indices: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage>;

    /// `y[t] = Σ_j w[t, j] · s[t, j]`, summed in slot order; shape `[T, Cout, oh, ow]`.
    fn routed_conv_combine(
        &self,
        slot_outputs: &Storage,
        routing_weights: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage>;

    /// `∂L/∂tokens[t] = Σ_j w[t, j] · conv_{e(t, j)}ᵀ(∂L/∂y[t])` (the adjoint of each expert's
    /// convolution), shape of the tokens.
    fn routed_conv_tokens_backward(
        &self,
        grad_out: &Storage,
        weights: &Storage,
        indices: &Storage,
        routing_weights: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage>;

    /// `∂L/∂W_e[o, c, tap] = Σ_{(t, j): e(t, j) = e} w[t, j] · Σ_p ∂L/∂y[t, o, p] ·
    /// tokens[t, c, p + tap·dilation]`, shape `[E, Cout, Cin/g, kh, kw]`; zero for an expert no
    /// token was routed to.
    fn routed_conv_expert_weights_backward(
        &self,
        grad_out: &Storage,
        tokens: &Storage,
        indices: &Storage,
        routing_weights: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage>;

    /// `∂L/∂b_e[o] = Σ_{(t, j): e(t, j) = e} w[t, j] · Σ_p ∂L/∂y[t, o, p]`, shape `[E, Cout]`.
    fn routed_conv_expert_biases_backward(
        &self,
        grad_out: &Storage,
        indices: &Storage,
        routing_weights: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage>;

    /// `∂L/∂w[t, j] = ⟨∂L/∂y[t], s[t, j]⟩` from the slot outputs kept by the forward; shape
    /// `[T, k]`.
    fn routed_conv_routing_weights_backward(
        &self,
        grad_out: &Storage,
        slot_outputs: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage>;

    /// Whether this backend runs the op by *weight mixing*
    /// ([`RoutedConvBackend::routed_conv_mixed_forward`] and
    /// [`RoutedConvBackend::routed_conv_mixed_parameter_grads`]) instead of slot outputs.
    fn routed_conv_mixes_weights(&self, _geometry: &RoutedConvGeometry) -> bool {
        false
    }

    /// `y[t] = conv(tokens[t]; W_t, b_t)` with the token's mixed expert `W_t = Σ_j w[t, j] ·
    /// W_{e(t, j)}`, `b_t = Σ_j w[t, j] · b_{e(t, j)}` (summed in slot order). A convolution is
    /// linear in its weights, so this equals the combined slot outputs, at the cost of one
    /// convolution per token instead of k.
    fn routed_conv_mixed_forward(
        &self,
        _tokens: &Storage,
        _weights: &Storage,
        _biases: Option<&Storage>,
        _indices: &Storage,
        _routing_weights: &Storage,
        _geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        Err(Error::invalid(
            OP,
            "this backend does not mix expert weights",
        ))
    }

    /// The parameter gradients of the weight-mixing form, from the per-token weight gradient
    /// `G_t[o, c, tap] = Σ_p ∂L/∂y[t, o, p] · tokens[t, c, p + tap·dilation]` and the per-token
    /// channel sums `S_t[o] = Σ_p ∂L/∂y[t, o, p]`: `∂W_e = Σ_{(t, j): e(t, j) = e} w[t, j] ·
    /// G_t`, `∂w[t, j] = ⟨W_e, G_t⟩ + ⟨b_e, S_t⟩` with `e = e(t, j)`, and `∂b_e = Σ w[t, j] ·
    /// S_t`. `needs` says which of (weights, routing weights, biases) to compute.
    #[allow(clippy::too_many_arguments)]
    fn routed_conv_mixed_parameter_grads(
        &self,
        _grad_out: &Storage,
        _tokens: &Storage,
        _weights: &Storage,
        _biases: Option<&Storage>,
        _indices: &Storage,
        _routing_weights: &Storage,
        _geometry: RoutedConvGeometry,
        _needs: [bool; 3],
    ) -> Result<[Option<Storage>; 3]> {
        Err(Error::invalid(
            OP,
            "this backend does not mix expert weights",
        ))
    }
}

const OP: &str = "dispatch_routed_conv";

impl Tensor {
    /// Sparse expert dispatch on tokens `[T, Cin, th, tw]` (each a patch with its halo):
    /// `y[t] = Σ_j routing_weights[t, j] · conv_{indices[t, j]}(tokens[t])`, where `conv_e` is a
    /// VALID, stride-1 convolution with weight `experts[e]` (`[Cout, Cin/groups, kh, kw]`,
    /// PyTorch layout), bias `biases[e]` (`[Cout]`) when given, and `params`' dilation and
    /// groups. `indices` `[T, k]` holds expert ids as exact integers in f32 and gets no
    /// gradient; `routing_weights` `[T, k]` does. The result is `[T, Cout, th − dil_h·(kh − 1),
    /// tw − dil_w·(kw − 1)]`. Each token is computed only by its k experts; an id may repeat.
    ///
    /// The indices are read on the host to validate them.
    pub fn dispatch_routed_conv(
        &self,
        experts: &[&Tensor],
        biases: Option<&[&Tensor]>,
        indices: &Tensor,
        routing_weights: &Tensor,
        params: RoutedConvParams,
    ) -> Result<Tensor> {
        let geometry =
            routed_conv_geometry(self, experts, biases, indices, routing_weights, params)?;
        let per_token = geometry.token_conv();
        if super::macs::record(
            geometry.tokens * geometry.slots * per_token.output_len() * per_token.col_rows(),
        ) {
            let shape = [
                geometry.tokens,
                geometry.out_channels,
                geometry.out_size[0],
                geometry.out_size[1],
            ];
            return Tensor::zeros(shape, &self.device());
        }
        RoutingPlan::new(
            &indices.try_to_vec()?,
            geometry.tokens,
            geometry.slots,
            geometry.experts,
        )?;
        let weights = stack(experts)?;
        let biases = biases.map(stack).transpose()?;
        self.routed_conv_stacked(
            &weights,
            biases.as_ref(),
            indices,
            routing_weights,
            geometry,
        )
    }

    /// The op itself, on stacked expert weights `[E, …]` and biases `[E, Cout]` (the stacking is
    /// a differentiable `cat`, so each expert gets its slice of the gradient).
    fn routed_conv_stacked(
        &self,
        weights: &Tensor,
        biases: Option<&Tensor>,
        indices: &Tensor,
        routing_weights: &Tensor,
        geometry: RoutedConvGeometry,
    ) -> Result<Tensor> {
        let backend = self.backend();
        let bias_storage = biases.map(Tensor::storage);
        let mixing = backend.routed_conv_mixes_weights(&geometry);
        let (out, kept_slots) = if mixing {
            let out = backend.routed_conv_mixed_forward(
                &self.storage(),
                &weights.storage(),
                bias_storage.as_ref(),
                &indices.storage(),
                &routing_weights.storage(),
                geometry,
            )?;
            (out, None)
        } else {
            let slot_outputs = backend.routed_conv_expert_outputs(
                &self.storage(),
                &weights.storage(),
                bias_storage.as_ref(),
                &indices.storage(),
                geometry,
            )?;
            let out =
                backend.routed_conv_combine(&slot_outputs, &routing_weights.storage(), geometry)?;
            // Kept only when the routing weights will need their gradient.
            (out, routing_weights.requires_grad().then_some(slot_outputs))
        };
        let out_shape = [
            geometry.tokens,
            geometry.out_channels,
            geometry.out_size[0],
            geometry.out_size[1],
        ];
        let (x, w, idx, rw) = (
            self.detach(),
            weights.detach(),
            indices.detach(),
            routing_weights.detach(),
        );
        let b = biases.map(Tensor::detach);
        let mut inputs = vec![self, weights, routing_weights];
        inputs.extend(biases);
        Tensor::from_op(OP, out, out_shape, &inputs, move || {
            Box::new(move |g: &Tensor, needs: &[bool]| {
                let backend = g.backend();
                let grad = g.storage();
                let (idx, rw_storage) = (idx.storage(), rw.storage());
                let grad_tokens = needs[0]
                    .then(|| {
                        let storage = backend.routed_conv_tokens_backward(
                            &grad,
                            &w.storage(),
                            &idx,
                            &rw_storage,
                            geometry,
                        )?;
                        Tensor::from_storage(storage, x.shape().clone())
                    })
                    .transpose()?;
                let need_biases = needs.get(3).copied().unwrap_or(false);
                let [grad_weights, grad_routing, grad_biases] = if mixing {
                    let [dw, drw, db] = backend.routed_conv_mixed_parameter_grads(
                        &grad,
                        &x.storage(),
                        &w.storage(),
                        b.as_ref().map(Tensor::storage).as_ref(),
                        &idx,
                        &rw_storage,
                        geometry,
                        [needs[1], needs[2], need_biases],
                    )?;
                    [
                        dw.map(|s| Tensor::from_storage(s, w.shape().clone()))
                            .transpose()?,
                        drw.map(|s| Tensor::from_storage(s, rw.shape().clone()))
                            .transpose()?,
                        db.map(|s| {
                            Tensor::from_storage(s, [geometry.experts, geometry.out_channels])
                        })
                        .transpose()?,
                    ]
                } else {
                    slot_parameter_grads(
                        &*backend,
                        &grad,
                        &x,
                        &w,
                        &idx,
                        &rw,
                        kept_slots.as_ref(),
                        geometry,
                        [needs[1], needs[2], need_biases],
                    )?
                };
                let mut grads = vec![grad_tokens, grad_weights, grad_routing];
                if needs.len() > 3 {
                    grads.push(grad_biases);
                }
                Ok(grads)
            })
        })
    }
}

/// The parameter gradients (weights, routing weights, biases; those `needs` asks for) of the
/// slot-output form, each by its own kernel.
#[allow(clippy::too_many_arguments)]
fn slot_parameter_grads(
    backend: &dyn crate::backend::Backend,
    grad: &Storage,
    x: &Tensor,
    w: &Tensor,
    idx: &Storage,
    rw: &Tensor,
    kept_slots: Option<&Storage>,
    geometry: RoutedConvGeometry,
    needs: [bool; 3],
) -> Result<[Option<Tensor>; 3]> {
    let rw_storage = rw.storage();
    let grad_weights = needs[0]
        .then(|| {
            let storage = backend.routed_conv_expert_weights_backward(
                grad,
                &x.storage(),
                idx,
                &rw_storage,
                geometry,
            )?;
            Tensor::from_storage(storage, w.shape().clone())
        })
        .transpose()?;
    let grad_routing = needs[1]
        .then(|| {
            let slots = kept_slots.ok_or_else(|| {
                Error::Autograd(format!(
                    "{OP}: routing weights {} did not require a gradient in the forward, so \
                     its slot outputs were not kept",
                    rw.shape()
                ))
            })?;
            let storage = backend.routed_conv_routing_weights_backward(grad, slots, geometry)?;
            Tensor::from_storage(storage, rw.shape().clone())
        })
        .transpose()?;
    let grad_biases = needs[2]
        .then(|| {
            let storage =
                backend.routed_conv_expert_biases_backward(grad, idx, &rw_storage, geometry)?;
            Tensor::from_storage(storage, [geometry.experts, geometry.out_channels])
        })
        .transpose()?;
    Ok([grad_weights, grad_routing, grad_biases])
}

/// `[E, …]` from E equally shaped tensors (a differentiable `cat` of their `unsqueeze(0)`).
fn stack(parts: &[&Tensor]) -> Result<Tensor> {
    let unsqueezed = parts
        .iter()
        .map(|t| t.unsqueeze(0))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&Tensor> = unsqueezed.iter().collect();
    Tensor::cat(&refs, 0)
}

/// Validates every argument of [`Tensor::dispatch_routed_conv`] except the index values, and
/// computes the geometry.
fn routed_conv_geometry(
    tokens: &Tensor,
    experts: &[&Tensor],
    biases: Option<&[&Tensor]>,
    indices: &Tensor,
    routing_weights: &Tensor,
    params: RoutedConvParams,
) -> Result<RoutedConvGeometry> {
    let RoutedConvParams { dilation, groups } = params;
    if dilation.contains(&0) || groups == 0 {
        return Err(Error::invalid(
            OP,
            format!("dilation {dilation:?} and groups {groups} must be positive"),
        ));
    }
    let Some(first) = experts.first() else {
        return Err(Error::invalid(OP, "needs at least one expert (E = 0)"));
    };
    tokens.expect_rank(OP, "tokens [T, Cin, th, tw]", 4)?;
    first.expect_rank(OP, "expert weight [Cout, Cin/groups, kh, kw]", 4)?;
    for (e, expert) in experts.iter().enumerate() {
        tokens.same_device(OP, expert)?;
        if expert.shape() != first.shape() {
            return Err(Error::shape(
                OP,
                format!(
                    "expert {e} has weight shape {}, expert 0 has {}: all experts must match",
                    expert.shape(),
                    first.shape()
                ),
            ));
        }
    }
    let (t, w) = (tokens.dims(), first.dims());
    let (count, in_channels, th, tw) = (t[0], t[1], t[2], t[3]);
    let (out_channels, per_group, kh, kw) = (w[0], w[1], w[2], w[3]);
    if out_channels == 0 || per_group == 0 || kh == 0 || kw == 0 {
        return Err(Error::shape(
            OP,
            format!(
                "expert weight {} must not have empty dimensions",
                first.shape()
            ),
        ));
    }
    if !in_channels.is_multiple_of(groups)
        || !out_channels.is_multiple_of(groups)
        || per_group * groups != in_channels
    {
        return Err(Error::shape(
            OP,
            format!(
                "expert weight {} does not fit tokens {} with groups {groups}: the tokens' \
                 {in_channels} channels and Cout must be divisible by {groups}, and the weight \
                 must be [Cout, Cin/groups, kh, kw]",
                first.shape(),
                tokens.shape(),
            ),
        ));
    }
    let extent = [dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1];
    if th < extent[0] || tw < extent[1] {
        return Err(Error::shape(
            OP,
            format!(
                "tokens {} are smaller than the dilated kernel {extent:?} of expert weight {} \
                 (dilation {dilation:?})",
                tokens.shape(),
                first.shape()
            ),
        ));
    }
    if let Some(biases) = biases {
        if biases.len() != experts.len() {
            return Err(Error::invalid(
                OP,
                format!(
                    "{} biases given for {} experts",
                    biases.len(),
                    experts.len()
                ),
            ));
        }
        for (e, bias) in biases.iter().enumerate() {
            tokens.same_device(OP, bias)?;
            if bias.dims() != [out_channels] {
                return Err(Error::shape(
                    OP,
                    format!(
                        "bias {e} has shape {}, expected [{out_channels}] for expert weight {}",
                        bias.shape(),
                        first.shape()
                    ),
                ));
            }
        }
    }
    tokens.same_device(OP, indices)?;
    tokens.same_device(OP, routing_weights)?;
    indices.expect_rank(OP, "indices [T, k]", 2)?;
    if indices.dims()[0] != count || routing_weights.shape() != indices.shape() {
        return Err(Error::shape(
            OP,
            format!(
                "indices {} and routing_weights {} must both be [T, k] with T = {count} tokens \
                 of {}",
                indices.shape(),
                routing_weights.shape(),
                tokens.shape()
            ),
        ));
    }
    Ok(RoutedConvGeometry {
        tokens: count,
        slots: indices.dims()[1],
        experts: experts.len(),
        in_channels,
        token_size: [th, tw],
        out_channels,
        kernel: [kh, kw],
        out_size: [th - extent[0] + 1, tw - extent[1] + 1],
        params,
    })
}
