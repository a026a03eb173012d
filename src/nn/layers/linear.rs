//! `nn.Linear`.

use crate::error::Result;
use crate::nn::{init, Module, OwnTensor};
use crate::tensor::Tensor;
use std::any::Any;

/// `nn.Linear(in, out, bias)`: `y = x Wᵀ + b`, weight `[out, in]`, PyTorch's default init.
pub struct Linear {
    /// `[out_features, in_features]`
    pub weight: Tensor,
    /// `[out_features]`
    pub bias: Option<Tensor>,
}

impl Linear {
    /// A linear layer with PyTorch's default init.
    pub fn new(in_features: usize, out_features: usize, bias: bool) -> Result<Self> {
        let weight = init::kaiming_uniform([out_features, in_features], 5f32.sqrt())?
            .with_requires_grad(true);
        let bias = bias
            .then(|| init::default_bias(out_features, in_features))
            .transpose()?
            .map(|b| b.with_requires_grad(true));
        Ok(Linear { weight, bias })
    }
}

impl Module for Linear {
    fn type_name(&self) -> &'static str {
        "Linear"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.linear(&self.weight, self.bias.as_ref())
    }

    fn own_tensors(&self) -> Vec<OwnTensor> {
        OwnTensor::weight_and_bias(&self.weight, self.bias.as_ref())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
