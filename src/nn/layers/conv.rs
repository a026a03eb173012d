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

/// Padding of a [`ConvOptions`] conv.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPadding {
    /// The same number of zeros on every side.
    Symmetric(usize),
    /// `dilation·(kernel − 1)/2` on every side: the map size is kept at stride 1 (odd kernels).
    Same,
}

/// `nn.Conv2d`'s keyword arguments for a square kernel, with PyTorch's defaults (stride 1, no
/// padding, dilation 1, one group, a bias, PyTorch's initialisation), set by chaining:
/// `Conv2d::new(64, 64, 3, ConvOptions::new().same().no_bias())`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvOptions {
    /// Step between output positions.
    pub stride: usize,
    /// Zeros around the input.
    pub padding: ConvPadding,
    /// Spacing between kernel taps.
    pub dilation: usize,
    /// Channel groups.
    pub groups: usize,
    /// Whether the conv has a bias.
    pub bias: bool,
    /// `kaiming_normal_(mode, relu)` after PyTorch's initialisation (the original ResNets' and
    /// the DeepLab heads' re-initialisation), or `None` to keep PyTorch's.
    pub kaiming_normal: Option<init::FanMode>,
}

impl Default for ConvOptions {
    fn default() -> Self {
        ConvOptions {
            stride: 1,
            padding: ConvPadding::Symmetric(0),
            dilation: 1,
            groups: 1,
            bias: true,
            kaiming_normal: None,
        }
    }
}

impl ConvOptions {
    /// PyTorch's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stride `stride` on both axes.
    pub fn stride(self, stride: usize) -> Self {
        ConvOptions { stride, ..self }
    }

    /// `padding` zeros on every side.
    pub fn padding(self, padding: usize) -> Self {
        ConvOptions {
            padding: ConvPadding::Symmetric(padding),
            ..self
        }
    }

    /// Size-preserving padding, `dilation·(kernel − 1)/2`.
    pub fn same(self) -> Self {
        ConvOptions {
            padding: ConvPadding::Same,
            ..self
        }
    }

    /// Dilation `dilation` on both axes.
    pub fn dilation(self, dilation: usize) -> Self {
        ConvOptions { dilation, ..self }
    }

    /// `groups` channel groups.
    pub fn groups(self, groups: usize) -> Self {
        ConvOptions { groups, ..self }
    }

    /// A bias or not.
    pub fn bias(self, bias: bool) -> Self {
        ConvOptions { bias, ..self }
    }

    /// No bias.
    pub fn no_bias(self) -> Self {
        self.bias(false)
    }

    /// Re-initialise the weight with `kaiming_normal_(mode, relu)`.
    pub fn kaiming_normal(self, mode: init::FanMode) -> Self {
        ConvOptions {
            kaiming_normal: Some(mode),
            ..self
        }
    }
}

impl Conv2d {
    /// A square-kernel conv (`nn.Conv2d(in, out, kernel, **options)`).
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        options: ConvOptions,
    ) -> Result<Self> {
        let padding = match options.padding {
            ConvPadding::Symmetric(p) => p,
            ConvPadding::Same => options.dilation * kernel.saturating_sub(1) / 2,
        };
        let params = Conv2dParams::new(options.stride, padding, options.dilation, options.groups);
        let conv = Self::with_params(
            in_channels,
            out_channels,
            [kernel, kernel],
            params,
            options.bias,
        )?;
        if let Some(mode) = options.kaiming_normal {
            let shape = conv.weight.shape().clone();
            conv.weight
                .replace_data(&init::kaiming_normal(shape, mode)?)?;
        }
        Ok(conv)
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
