//! Normalisations: batch norm over the channel axis 1 of NCHW (or `[N, C]`) input, as
//! `torch.nn.functional.batch_norm`, and layer norm over the last axis ([`layer_norm`]).
//!
//! Batch norm: `y = (x − μ_c) / √(σ²_c + eps) · w_c + b_c`. Training uses the batch statistics
//! (biased variance) and updates the running statistics in place; evaluation uses the running
//! ones.

mod cpu_kernel;
mod cuda_kernel;
pub mod layer_norm;

pub use layer_norm::{LayerNormForward, LayerNormGrads, RowLayout};

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::ops::activation::ChannelLayout;
use crate::tensor::{Storage, Tensor};

/// Arguments of [`Tensor::batch_norm2d`] (the state of a `BatchNorm2d` module).
#[derive(Clone, Copy, Debug)]
pub struct BatchNormArgs<'a> {
    /// Running mean `[C]`: read in evaluation, updated in place in training.
    pub running_mean: Option<&'a Tensor>,
    /// Running (unbiased) variance `[C]`: read in evaluation, updated in place in training.
    pub running_var: Option<&'a Tensor>,
    /// Affine scale `[C]` (none: 1).
    pub weight: Option<&'a Tensor>,
    /// Affine shift `[C]` (none: 0).
    pub bias: Option<&'a Tensor>,
    /// Batch statistics (true) or running statistics (false).
    pub training: bool,
    /// Weight of the new batch statistic in the running average.
    pub momentum: f32,
    /// Added to the variance before the square root.
    pub eps: f32,
}

impl Default for BatchNormArgs<'_> {
    /// Training, no running statistics or affine parameters, PyTorch's momentum 0.1 and eps 1e-5.
    fn default() -> Self {
        BatchNormArgs {
            running_mean: None,
            running_var: None,
            weight: None,
            bias: None,
            training: true,
            momentum: 0.1,
            eps: 1e-5,
        }
    }
}

/// Gradients from [`NormBackend::batch_norm_backward`], each `[C]` except `input`.
pub struct BatchNormGrads {
    /// Gradient of the input.
    pub input: Storage,
    /// `Σ g · x̂` per channel.
    pub weight: Storage,
    /// `Σ g` per channel.
    pub bias: Storage,
}

/// Kernels of this family. The input is seen as `[N, C, S]` through a [`ChannelLayout`].
pub trait NormBackend {
    /// Per-channel mean and biased variance `(μ, Σ (x − μ)² / M)` with `M = N · S`.
    fn batch_norm_statistics(
        &self,
        x: &Storage,
        layout: ChannelLayout,
    ) -> Result<(Storage, Storage)>;

    /// `(x − mean_c) / √(var_c + eps) · w_c + b_c` (`w = 1`, `b = 0` when absent).
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_forward(
        &self,
        x: &Storage,
        mean: &Storage,
        var: &Storage,
        weight: Option<&Storage>,
        bias: Option<&Storage>,
        layout: ChannelLayout,
        eps: f32,
    ) -> Result<Storage>;

    /// With `x̂ = (x − μ) · r`, `r = 1/√(var + eps)`: grad bias `Σ g`, grad weight `Σ g · x̂`,
    /// and grad input `w · r · (g − Σ g / M − x̂ · Σ g x̂ / M)` when `training` (the
    /// statistics depend on x) or `w · r · g` with fixed statistics.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward(
        &self,
        x: &Storage,
        grad_out: &Storage,
        mean: &Storage,
        var: &Storage,
        weight: Option<&Storage>,
        layout: ChannelLayout,
        eps: f32,
        training: bool,
    ) -> Result<BatchNormGrads>;

    /// Layer norm of each row of `[rows, dim]`: `y = (x − μ) · r · w + b` with the row's mean
    /// `μ`, biased variance `σ²` and `r = 1/√(σ² + eps)`; also returns `μ` and `r` per row
    /// for the backward.
    fn layer_norm_forward(
        &self,
        x: &Storage,
        weight: Option<&Storage>,
        bias: Option<&Storage>,
        layout: RowLayout,
        eps: f32,
    ) -> Result<LayerNormForward>;

    /// With `x̂ = (x − μ) · r` and `ĝ = g · w`: grad input `r · (ĝ − mean(ĝ) − x̂ · mean(ĝ x̂))`
    /// (means over the row), grad weight `Σ_rows g · x̂`, grad bias `Σ_rows g`.
    fn layer_norm_backward(
        &self,
        x: &Storage,
        grad_out: &Storage,
        statistics: &LayerNormForward,
        weight: Option<&Storage>,
        layout: RowLayout,
    ) -> Result<LayerNormGrads>;
}

impl Tensor {
    /// Batch normalisation of `[N, C, H, W]` (or `[N, C]`) input over all axes but 1.
    ///
    /// In training the batch statistics normalise, and when running statistics are given they
    /// are updated in place (with [`Tensor::replace_data`], outside the graph):
    /// `running = (1 − momentum) · running + momentum · batch`, with the unbiased batch
    /// variance for `running_var`, as PyTorch. Evaluation needs the running statistics.
    /// Differentiable in the input, weight and bias.
    pub fn batch_norm2d(&self, args: BatchNormArgs) -> Result<Tensor> {
        const OP: &str = "batch_norm2d";
        let layout = batch_norm_layout(self, &args)?;
        let (mean, var) = if args.training {
            let count = layout.outer * layout.inner;
            if count <= 1 {
                return Err(Error::shape(
                    OP,
                    format!(
                        "expected more than 1 value per channel when training, got input {}",
                        self.shape()
                    ),
                ));
            }
            let (mean, var) = self
                .backend()
                .batch_norm_statistics(&self.storage(), layout)?;
            if let (Some(running_mean), Some(running_var)) = (args.running_mean, args.running_var) {
                update_running_stats(running_mean, running_var, &mean, &var, count, &args)?;
            }
            (mean, var)
        } else {
            match (args.running_mean, args.running_var) {
                (Some(m), Some(v)) => (m.storage(), v.storage()),
                _ => {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "evaluation needs running_mean and running_var (input {})",
                            self.shape()
                        ),
                    ))
                }
            }
        };
        let weight = args.weight.map(|w| w.storage());
        let bias = args.bias.map(|b| b.storage());
        let storage = self.backend().batch_norm_forward(
            &self.storage(),
            &mean,
            &var,
            weight.as_ref(),
            bias.as_ref(),
            layout,
            args.eps,
        )?;

        // Graph inputs: x, then the affine parameters that are present.
        let mut inputs = vec![self];
        inputs.extend(args.weight);
        inputs.extend(args.bias);
        let (has_weight, has_bias) = (args.weight.is_some(), args.bias.is_some());
        let x = self.detach();
        let (eps, training) = (args.eps, args.training);
        Tensor::from_op(OP, storage, self.shape().clone(), &inputs, move || {
            Box::new(move |g: &Tensor, needs: &[bool]| {
                let grads = g.backend().batch_norm_backward(
                    &x.storage(),
                    &g.storage(),
                    &mean,
                    &var,
                    weight.as_ref(),
                    layout,
                    eps,
                    training,
                )?;
                let channels = [layout.channels];
                let mut out = vec![needs[0]
                    .then(|| Tensor::from_storage(grads.input, x.shape().clone()))
                    .transpose()?];
                if has_weight {
                    out.push(
                        needs[1]
                            .then(|| Tensor::from_storage(grads.weight, channels))
                            .transpose()?,
                    );
                }
                if has_bias {
                    out.push(
                        needs[out.len()]
                            .then(|| Tensor::from_storage(grads.bias, channels))
                            .transpose()?,
                    );
                }
                Ok(out)
            })
        })
    }
}

/// `running ← (1 − m) · running + m · batch`, with the unbiased variance `var · M / (M − 1)`.
fn update_running_stats(
    running_mean: &Tensor,
    running_var: &Tensor,
    mean: &Storage,
    var: &Storage,
    count: usize,
    args: &BatchNormArgs,
) -> Result<()> {
    no_grad(|| {
        let channels = [running_mean.numel()];
        let momentum = args.momentum;
        let mean = Tensor::from_storage(mean.clone(), channels)?;
        let unbiased = Tensor::from_storage(var.clone(), channels)?
            .mul_scalar(count as f32 / (count - 1) as f32)?;
        let blend = |running: &Tensor, batch: &Tensor| -> Result<Tensor> {
            running
                .mul_scalar(1.0 - momentum)?
                .add(&batch.mul_scalar(momentum)?)
        };
        running_mean.replace_data(&blend(running_mean, &mean)?)?;
        running_var.replace_data(&blend(running_var, &unbiased)?)
    })
}

/// Checks the input rank and every `[C]` parameter; returns the `[N, C, S]` layout.
fn batch_norm_layout(x: &Tensor, args: &BatchNormArgs) -> Result<ChannelLayout> {
    const OP: &str = "batch_norm2d";
    if x.rank() != 2 && x.rank() != 4 {
        return Err(Error::shape(
            OP,
            format!("input must be [N, C, H, W] or [N, C], got {}", x.shape()),
        ));
    }
    let channels = x.dims()[1];
    let parameters = [
        ("running_mean", args.running_mean),
        ("running_var", args.running_var),
        ("weight", args.weight),
        ("bias", args.bias),
    ];
    for (name, parameter) in parameters {
        let Some(parameter) = parameter else { continue };
        x.same_device(OP, parameter)?;
        if parameter.dims() != [channels] {
            return Err(Error::shape(
                OP,
                format!(
                    "{name} must have shape [{channels}] for input {}, got {}",
                    x.shape(),
                    parameter.shape()
                ),
            ));
        }
    }
    if args.running_mean.is_some() != args.running_var.is_some() {
        return Err(Error::invalid(
            OP,
            "running_mean and running_var must be given together",
        ));
    }
    if args.eps.is_nan() || args.eps < 0.0 || !(0.0..=1.0).contains(&args.momentum) {
        return Err(Error::invalid(
            OP,
            format!(
                "eps must be ≥ 0 and momentum in [0, 1], got eps {} and momentum {}",
                args.eps, args.momentum
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
