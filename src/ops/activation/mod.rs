//! Activations: relu, leaky relu, prelu, sigmoid, tanh, hardswish, hardsigmoid, gelu (exact and
//! tanh-approximated).
//!
//! The pointwise activations share one forward and one backward kernel selected by
//! [`Activation`]; their gradients follow PyTorch's conventions at the kinks (relu'(0) = 0,
//! leaky_relu'(0) = slope, hardswish'(−3) = 0 and hardswish'(3) = 1, hardsigmoid'(±3) = 0).
//! prelu has its own kernels because its slope is a learnable per-channel weight.

mod cpu_kernel;
mod cuda_kernel;

use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// A pointwise activation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `max(x, 0)`
    Relu,
    /// `x` for `x > 0`, else `negative_slope · x`
    LeakyRelu { negative_slope: f32 },
    /// `1 / (1 + e^−x)`
    Sigmoid,
    /// `tanh x`
    Tanh,
    /// `x · relu6(x + 3) / 6`
    Hardswish,
    /// `relu6(x + 3) / 6`
    Hardsigmoid,
    /// `x · Φ(x) = x/2 · (1 + erf(x/√2))`, torch's `nn.GELU()` (exact erf form)
    Gelu,
    /// `x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³)))`, torch's `nn.GELU(approximate='tanh')`
    GeluTanh,
}

impl Activation {
    /// True when the backward is cheaper from the output (sigmoid, tanh): the kernel then
    /// receives `y` instead of `x`.
    pub fn backward_from_output(self) -> bool {
        matches!(self, Activation::Sigmoid | Activation::Tanh)
    }

    fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::LeakyRelu { .. } => "leaky_relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Hardswish => "hardswish",
            Activation::Hardsigmoid => "hardsigmoid",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
        }
    }
}

/// How a prelu weight lines up with the input: the input seen as `[outer, channels, inner]`,
/// with weight `w[c]` for every element of channel `c` (`channels == 1` for a single weight).
/// Batch norm uses the same view for its per-channel statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelLayout {
    /// Product of the dimensions before the channel axis.
    pub outer: usize,
    /// Number of channels (weights).
    pub channels: usize,
    /// Product of the dimensions after the channel axis.
    pub inner: usize,
}

/// Kernels of this family.
pub trait ActivationBackend {
    /// `op(x)` for every element.
    fn activation_forward(&self, op: Activation, x: &Storage) -> Result<Storage>;

    /// `grad_out · op'(x)`; `saved` is the output `y` when [`Activation::backward_from_output`],
    /// else the input `x`.
    fn activation_backward(
        &self,
        op: Activation,
        saved: &Storage,
        grad_out: &Storage,
    ) -> Result<Storage>;

    /// `x` where `x > 0`, else `w[c] · x`.
    fn prelu_forward(
        &self,
        x: &Storage,
        weight: &Storage,
        layout: ChannelLayout,
    ) -> Result<Storage>;

    /// `(grad_x, grad_weight)`: `grad_x = g` where `x > 0` else `w[c] · g`, and
    /// `grad_weight[c] = Σ_{x ≤ 0 in channel c} x · g`.
    fn prelu_backward(
        &self,
        x: &Storage,
        weight: &Storage,
        grad_out: &Storage,
        layout: ChannelLayout,
    ) -> Result<(Storage, Storage)>;
}

impl Tensor {
    /// Applies a pointwise activation and records its backward kernel.
    pub fn activation(&self, op: Activation) -> Result<Tensor> {
        let storage = self.backend().activation_forward(op, &self.storage())?;
        let saved = if op.backward_from_output() {
            Tensor::from_storage(storage.clone(), self.shape().clone())?
        } else {
            self.detach()
        };
        Tensor::from_op(
            op.name(),
            storage,
            self.shape().clone(),
            &[self],
            move || {
                Box::new(move |g: &Tensor, _: &[bool]| {
                    let grad =
                        g.backend()
                            .activation_backward(op, &saved.storage(), &g.storage())?;
                    Ok(vec![Some(Tensor::from_storage(grad, g.shape().clone())?)])
                })
            },
        )
    }

    /// `max(x, 0)`; the gradient at 0 is 0, as in PyTorch.
    pub fn relu(&self) -> Result<Tensor> {
        self.activation(Activation::Relu)
    }

    /// `x` for `x > 0`, else `negative_slope · x` (gradient `negative_slope` at 0).
    pub fn leaky_relu(&self, negative_slope: f32) -> Result<Tensor> {
        self.activation(Activation::LeakyRelu { negative_slope })
    }

    /// The logistic function `1 / (1 + e^−x)`.
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.activation(Activation::Sigmoid)
    }

    /// Hyperbolic tangent.
    pub fn tanh(&self) -> Result<Tensor> {
        self.activation(Activation::Tanh)
    }

    /// `x · relu6(x + 3) / 6` (MobileNetV3).
    pub fn hardswish(&self) -> Result<Tensor> {
        self.activation(Activation::Hardswish)
    }

    /// `relu6(x + 3) / 6`, a piecewise-linear sigmoid.
    pub fn hardsigmoid(&self) -> Result<Tensor> {
        self.activation(Activation::Hardsigmoid)
    }

    /// `x · Φ(x)` with `Φ` the standard normal CDF (torch's `F.gelu`, exact erf form).
    pub fn gelu(&self) -> Result<Tensor> {
        self.activation(Activation::Gelu)
    }

    /// The tanh approximation of gelu (torch's `F.gelu(x, approximate='tanh')`).
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.activation(Activation::GeluTanh)
    }

    /// Parametric relu: `x` for `x > 0`, else `w[c] · x` with `weight` of shape `[C]` matching
    /// the channel axis 1 (NC or NCHW input), or `[1]` shared by all elements. Differentiable
    /// in both the input and the weight.
    pub fn prelu(&self, weight: &Tensor) -> Result<Tensor> {
        self.same_device("prelu", weight)?;
        let layout = prelu_layout(self, weight)?;
        let storage = self
            .backend()
            .prelu_forward(&self.storage(), &weight.storage(), layout)?;
        let (x, w) = (self.detach(), weight.detach());
        Tensor::from_op(
            "prelu",
            storage,
            self.shape().clone(),
            &[self, weight],
            move || {
                Box::new(move |g: &Tensor, needs: &[bool]| {
                    let (grad_x, grad_w) = g.backend().prelu_backward(
                        &x.storage(),
                        &w.storage(),
                        &g.storage(),
                        layout,
                    )?;
                    Ok(vec![
                        needs[0]
                            .then(|| Tensor::from_storage(grad_x, x.shape().clone()))
                            .transpose()?,
                        needs[1]
                            .then(|| Tensor::from_storage(grad_w, w.shape().clone()))
                            .transpose()?,
                    ])
                })
            },
        )
    }
}

/// Checks the prelu weight against the input and returns the channel layout.
fn prelu_layout(x: &Tensor, weight: &Tensor) -> Result<ChannelLayout> {
    if weight.rank() != 1 {
        return Err(Error::shape(
            "prelu",
            format!(
                "weight must have shape [C] or [1], got {} (input {})",
                weight.shape(),
                x.shape()
            ),
        ));
    }
    let count = weight.numel();
    if count == 1 {
        return Ok(ChannelLayout {
            outer: 1,
            channels: 1,
            inner: x.numel(),
        });
    }
    if x.rank() < 2 || x.dims()[1] != count {
        return Err(Error::shape(
            "prelu",
            format!(
                "weight {} needs an input with {count} channels on axis 1, got input {}",
                weight.shape(),
                x.shape()
            ),
        ));
    }
    let (outer, channels, inner) = x.shape().outer_size_inner(1);
    Ok(ChannelLayout {
        outer,
        channels,
        inner,
    })
}
