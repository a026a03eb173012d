//! `nn.Conv2d` and `nn.ConvTranspose2d`.

use crate::error::Result;
use crate::nn::{init, Module, OwnTensor};
use crate::ops::conv::{Conv2dParams, ConvTranspose2dParams};
use crate::tensor::Tensor;
use std::any::Any;

/// The group count, checked to divide both channel counts.
fn check_groups(
    layer: &'static str,
    in_channels: usize,
    out_channels: usize,
    groups: usize,
) -> Result<usize> {
    if groups == 0 || !in_channels.is_multiple_of(groups) || !out_channels.is_multiple_of(groups) {
        return Err(crate::Error::invalid(
            layer,
            format!(
                "in {in_channels} and out {out_channels} channels must divide by groups {groups}"
            ),
        ));
    }
    Ok(groups)
}

/// `nn.Conv2d`: weight `[out, in/groups, kh, kw]`, optional bias `[out]`, initialised as
/// PyTorch does (kaiming-uniform a=√5, bias U(±1/√fan_in)).
pub struct Conv2d {
    /// `[out_channels, in_channels / groups, kh, kw]`
    pub weight: Tensor,
    /// `[out_channels]`
    pub bias: Option<Tensor>,
    /// Stride, padding, dilation and groups.
    pub params: Conv2dParams,
}

impl Conv2d {
    /// A square-kernel conv with symmetric padding (`nn.Conv2d(in, out, k, stride, padding,
    /// dilation, groups, bias)`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
        groups: usize,
        bias: bool,
    ) -> Result<Self> {
        Self::with_params(
            in_channels,
            out_channels,
            [kernel, kernel],
            Conv2dParams::new(stride, padding, dilation, groups),
            bias,
        )
    }

    /// A conv with a rectangular kernel and full control of the geometry.
    pub fn with_params(
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        params: Conv2dParams,
        bias: bool,
    ) -> Result<Self> {
        let groups = check_groups("Conv2d", in_channels, out_channels, params.groups)?;
        let shape = [out_channels, in_channels / groups, kernel[0], kernel[1]];
        let weight = init::kaiming_uniform(shape, 5f32.sqrt())?.with_requires_grad(true);
        let fan_in = in_channels / groups * kernel[0] * kernel[1];
        let bias = bias
            .then(|| init::default_bias(out_channels, fan_in))
            .transpose()?
            .map(|b| b.with_requires_grad(true));
        Ok(Conv2d {
            weight,
            bias,
            params,
        })
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.weight.dims()[1] * self.params.groups
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `[kh, kw]`.
    pub fn kernel_size(&self) -> [usize; 2] {
        [self.weight.dims()[2], self.weight.dims()[3]]
    }
}

impl Module for Conv2d {
    fn type_name(&self) -> &'static str {
        "Conv2d"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.conv2d(&self.weight, self.bias.as_ref(), self.params)
    }

    fn own_tensors(&self) -> Vec<OwnTensor> {
        OwnTensor::weight_and_bias(&self.weight, self.bias.as_ref())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `nn.ConvTranspose2d`: weight `[in, out/groups, kh, kw]`, optional bias `[out]`.
pub struct ConvTranspose2d {
    /// `[in_channels, out_channels / groups, kh, kw]`
    pub weight: Tensor,
    /// `[out_channels]`
    pub bias: Option<Tensor>,
    /// Stride, padding, output padding, dilation and groups.
    pub params: ConvTranspose2dParams,
}

impl ConvTranspose2d {
    /// A square-kernel transposed conv (`nn.ConvTranspose2d(in, out, k, stride, padding,
    /// output_padding, groups, bias, dilation)`); PyTorch computes its init fan-in from
    /// `weight.size(1)·k·k`.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        params: ConvTranspose2dParams,
        bias: bool,
    ) -> Result<Self> {
        let groups = check_groups("ConvTranspose2d", in_channels, out_channels, params.groups)?;
        let shape = [in_channels, out_channels / groups, kernel, kernel];
        let weight = init::kaiming_uniform(shape, 5f32.sqrt())?.with_requires_grad(true);
        let fan_in = out_channels / groups * kernel * kernel;
        let bias = bias
            .then(|| init::default_bias(out_channels, fan_in))
            .transpose()?
            .map(|b| b.with_requires_grad(true));
        Ok(ConvTranspose2d {
            weight,
            bias,
            params,
        })
    }

    /// The forward pass with an explicit output size (`forward(x, output_size=...)`).
    pub fn forward_with_size(
        &self,
        input: &Tensor,
        output_size: Option<[usize; 2]>,
    ) -> Result<Tensor> {
        input.conv_transpose2d(&self.weight, self.bias.as_ref(), self.params, output_size)
    }
}

impl Module for ConvTranspose2d {
    fn type_name(&self) -> &'static str {
        "ConvTranspose2d"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        self.forward_with_size(input, None)
    }

    fn own_tensors(&self) -> Vec<OwnTensor> {
        OwnTensor::weight_and_bias(&self.weight, self.bias.as_ref())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
