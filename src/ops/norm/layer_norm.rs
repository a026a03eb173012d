//! Layer normalisation over the last axis, as `torch.nn.functional.layer_norm(x, (d,), w, b,
//! eps)`: every row of `d` elements is normalised by its own mean and biased variance,
//! `y = (x − μ) / √(σ² + eps) · w + b`, with `w`, `b` of shape `[d]`.

use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// An input seen as `[rows, dim]`: `dim` is the normalised last axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowLayout {
    /// Product of the leading dimensions.
    pub rows: usize,
    /// Length of the last axis.
    pub dim: usize,
}

/// The output of [`super::NormBackend::layer_norm_forward`] and the statistics its backward
/// reads.
#[derive(Clone)]
pub struct LayerNormForward {
    /// `[rows, dim]` normalised (and scaled, shifted) values.
    pub output: Storage,
    /// `[rows]` means.
    pub mean: Storage,
    /// `[rows]` reciprocal standard deviations `1/√(σ² + eps)`.
    pub rstd: Storage,
}

/// Gradients from [`super::NormBackend::layer_norm_backward`].
pub struct LayerNormGrads {
    /// `[rows, dim]` gradient of the input.
    pub input: Storage,
    /// `[dim]` `Σ_rows g · x̂` (computed whether or not the layer has a weight).
    pub weight: Storage,
    /// `[dim]` `Σ_rows g`.
    pub bias: Storage,
}

impl Tensor {
    /// Layer norm over the last axis (any leading shape), differentiable in the input, the
    /// weight and the bias. `weight` and `bias` (when given) have shape `[d]`, `d` the length
    /// of the last axis; `eps` is added to the biased variance.
    pub fn layer_norm(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<Tensor> {
        const OP: &str = "layer_norm";
        let layout = layer_norm_layout(self, weight, bias, eps)?;
        let weight_storage = weight.map(|w| w.storage());
        let bias_storage = bias.map(|b| b.storage());
        let forward = self.backend().layer_norm_forward(
            &self.storage(),
            weight_storage.as_ref(),
            bias_storage.as_ref(),
            layout,
            eps,
        )?;
        let output = forward.output.clone();

        // Graph inputs: x, then the affine parameters that are present.
        let mut inputs = vec![self];
        inputs.extend(weight);
        inputs.extend(bias);
        let (has_weight, has_bias) = (weight.is_some(), bias.is_some());
        let x = self.detach();
        Tensor::from_op(OP, output, self.shape().clone(), &inputs, move || {
            Box::new(move |g: &Tensor, needs: &[bool]| {
                let grads = g.backend().layer_norm_backward(
                    &x.storage(),
                    &g.storage(),
                    &forward,
                    weight_storage.as_ref(),
                    layout,
                )?;
                let mut out = vec![needs[0]
                    .then(|| Tensor::from_storage(grads.input, x.shape().clone()))
                    .transpose()?];
                let parameter_grads = [(has_weight, grads.weight), (has_bias, grads.bias)];
                for (present, grad) in parameter_grads {
                    if present {
                        let index = out.len();
                        out.push(
                            needs[index]
                                .then(|| Tensor::from_storage(grad, [layout.dim]))
                                .transpose()?,
                        );
                    }
                }
                Ok(out)
            })
        })
    }
}

/// Checks the input rank, the `[d]` parameters and eps; returns the `[rows, d]` layout.
fn layer_norm_layout(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
) -> Result<RowLayout> {
    const OP: &str = "layer_norm";
    let Some(&dim) = x.dims().last() else {
        return Err(Error::shape(
            OP,
            "needs at least one dimension, got a rank-0 tensor",
        ));
    };
    if dim == 0 {
        return Err(Error::shape(
            OP,
            format!("the normalised last axis is empty (input {})", x.shape()),
        ));
    }
    for (name, parameter) in [("weight", weight), ("bias", bias)] {
        let Some(parameter) = parameter else { continue };
        x.same_device(OP, parameter)?;
        if parameter.dims() != [dim] {
            return Err(Error::shape(
                OP,
                format!(
                    "{name} must have shape [{dim}] for input {}, got {}",
                    x.shape(),
                    parameter.shape()
                ),
            ));
        }
    }
    if eps.is_nan() || eps < 0.0 {
        return Err(Error::invalid(OP, format!("eps must be ≥ 0, got {eps}")));
    }
    Ok(RowLayout {
        rows: x.numel() / dim,
        dim,
    })
}
