//! Pooling layers: `nn.MaxPool2d` (optionally with indices), `nn.MaxUnpool2d`,
//! `nn.AvgPool2d`, `nn.AdaptiveAvgPool2d`.

use crate::error::{Error, Result};
use crate::nn::Module;
use crate::ops::pool::{AvgPool2dParams, MaxPool2dParams, MaxUnpool2dParams};
use crate::tensor::Tensor;
use std::any::Any;

/// `nn.MaxPool2d`.
#[derive(Clone, Copy, Debug)]
pub struct MaxPool2d(pub MaxPool2dParams);

impl MaxPool2d {
    /// The pooled values and the flat `h·W + w` index of each maximum in its plane
    /// (`return_indices=True`, for `MaxUnpool2d`).
    pub fn forward_with_indices(&self, input: &Tensor) -> Result<(Tensor, Tensor)> {
        input.max_pool2d_with_indices(self.0)
    }
}

impl Module for MaxPool2d {
    fn type_name(&self) -> &'static str {
        "MaxPool2d"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.max_pool2d(self.0)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `nn.MaxUnpool2d`: needs the indices of a `MaxPool2d`, so its forward is
/// [`MaxUnpool2d::forward_with_indices`].
#[derive(Clone, Copy, Debug)]
pub struct MaxUnpool2d(pub MaxUnpool2dParams);

impl MaxUnpool2d {
    /// Places each value at its index in a zero map of `output_size` (default
    /// `(in − 1)·stride − 2·padding + kernel`).
    pub fn forward_with_indices(
        &self,
        input: &Tensor,
        indices: &Tensor,
        output_size: Option<[usize; 2]>,
    ) -> Result<Tensor> {
        input.max_unpool2d(indices, self.0, output_size)
    }
}

impl Module for MaxUnpool2d {
    fn type_name(&self) -> &'static str {
        "MaxUnpool2d"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        Err(Error::invalid(
            "MaxUnpool2d",
            format!(
                "needs the indices of a max pool: call forward_with_indices (input {})",
                input.shape()
            ),
        ))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `nn.AvgPool2d`.
#[derive(Clone, Copy, Debug)]
pub struct AvgPool2d(pub AvgPool2dParams);

impl Module for AvgPool2d {
    fn type_name(&self) -> &'static str {
        "AvgPool2d"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.avg_pool2d(self.0)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `nn.AdaptiveAvgPool2d(output_size)`.
#[derive(Clone, Copy, Debug)]
pub struct AdaptiveAvgPool2d(pub [usize; 2]);

impl Module for AdaptiveAvgPool2d {
    fn type_name(&self) -> &'static str {
        "AdaptiveAvgPool2d"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.adaptive_avg_pool2d(self.0)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
