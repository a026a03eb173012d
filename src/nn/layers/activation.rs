//! Activation layers: `nn.ReLU`, `nn.LeakyReLU`, `nn.Sigmoid`, `nn.Tanh`, `nn.Hardswish`,
//! `nn.Hardsigmoid`, `nn.GELU` (one parameter-free type) and `nn.PReLU`.

use crate::error::Result;
use crate::nn::{Module, OwnTensor};
use crate::ops::activation::Activation;
use crate::tensor::Tensor;
use crate::Device;
use std::any::Any;

/// A parameter-free activation layer.
#[derive(Clone, Copy, Debug)]
pub struct ActivationLayer(pub Activation);

impl ActivationLayer {
    /// `nn.ReLU()`
    pub fn relu() -> Self {
        ActivationLayer(Activation::Relu)
    }

    /// `nn.Hardswish()`
    pub fn hardswish() -> Self {
        ActivationLayer(Activation::Hardswish)
    }

    /// `nn.Hardsigmoid()`
    pub fn hardsigmoid() -> Self {
        ActivationLayer(Activation::Hardsigmoid)
    }

    /// `nn.GELU()` (exact erf form)
    pub fn gelu() -> Self {
        ActivationLayer(Activation::Gelu)
    }

    /// `nn.GELU(approximate='tanh')`
    pub fn gelu_tanh() -> Self {
        ActivationLayer(Activation::GeluTanh)
    }

    /// `nn.Sigmoid()`
    pub fn sigmoid() -> Self {
        ActivationLayer(Activation::Sigmoid)
    }
}

impl Module for ActivationLayer {
    fn type_name(&self) -> &'static str {
        match self.0 {
            Activation::Relu => "ReLU",
            Activation::LeakyRelu { .. } => "LeakyReLU",
            Activation::Sigmoid => "Sigmoid",
            Activation::Tanh => "Tanh",
            Activation::Hardswish => "Hardswish",
            Activation::Hardsigmoid => "Hardsigmoid",
            Activation::Gelu | Activation::GeluTanh => "GELU",
        }
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.activation(self.0)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `nn.PReLU(num_parameters, init=0.25)`: `max(0, x) + a·min(0, x)` with one `a` per channel
/// (or one shared).
pub struct PReLU {
    /// `[num_parameters]`
    pub weight: Tensor,
}

impl PReLU {
    /// `num_parameters` slopes initialised to `init`.
    pub fn new(num_parameters: usize, init: f32) -> Result<Self> {
        Ok(PReLU {
            weight: Tensor::full([num_parameters], init, &Device::Cpu)?.with_requires_grad(true),
        })
    }
}

impl Module for PReLU {
    fn type_name(&self) -> &'static str {
        "PReLU"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.prelu(&self.weight)
    }

    fn own_tensors(&self) -> Vec<OwnTensor> {
        vec![OwnTensor::parameter("weight", &self.weight)]
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
