//! MobileNetV3-Large backbone with torchvision key names (LR-ASPP), and the two building pieces
//! the ERFNet, U-Net and LR-ASPP files share: [`Block`] (named, replaceable parts with a data
//! flow of their own) and [`conv_bn_act`] (torchvision's `Conv2dNormActivation` layers).
//!
//! `mobilenet_v3_large().features` is a `Sequential` of 17 modules: `0` = 3×3 s2 conv 3→16 +
//! BN + Hardswish, `1..=15` = inverted residual blocks (`{i}.block.{j}`), `16` = 1×1 conv
//! 160→960 + BN + Hardswish. Its BNs use eps 0.001 and momentum 0.01.

use crate::error::{Error, Result};
use crate::nn::init::{self, FanMode};
use crate::nn::{ActivationLayer, AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Module, Sequential};
use crate::ops::activation::Activation;
use crate::ops::conv::Conv2dParams;
use crate::tensor::Tensor;
use std::any::Any;

/// How a [`Block`] computes its output from its input and its parts.
pub type Flow = Box<dyn Fn(&Block, &Tensor) -> Result<Tensor> + Send + Sync>;

/// A module made of named parts (each boxed, so any conv in it can be replaced by path, e.g. by
/// a PatchConvMoE) and a data flow: `nn.Sequential(OrderedDict(...))` when built with
/// [`Block::sequential`], or any `forward` that calls its parts by name.
pub struct Block {
    type_name: &'static str,
    parts: Vec<(&'static str, Box<dyn Module>)>,
    flow: Flow,
}

impl Block {
    /// An empty block whose forward is `flow`.
    pub fn new(
        type_name: &'static str,
        flow: impl Fn(&Block, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
    ) -> Self {
        Block {
            type_name,
            parts: Vec::new(),
            flow: Box::new(flow),
        }
    }

    /// An empty block whose forward applies its parts in order.
    pub fn sequential(type_name: &'static str) -> Self {
        Block::new(type_name, |block, input| {
            let mut x = input.clone();
            for (_, part) in &block.parts {
                x = part.forward(&x)?;
            }
            Ok(x)
        })
    }

    /// Appends the part `name` (registration order is state-dict order).
    pub fn with(mut self, name: &'static str, part: impl Module) -> Self {
        self.parts.push((name, Box::new(part)));
        self
    }

    /// The part `name`.
    pub fn part(&self, name: &str) -> Result<&dyn Module> {
        self.parts
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| m.as_ref())
            .ok_or_else(|| {
                Error::invalid("Block", format!("{} has no part `{name}`", self.type_name))
            })
    }

    /// `part(name).forward(input)`.
    pub fn apply(&self, name: &str, input: &Tensor) -> Result<Tensor> {
        self.part(name)?.forward(input)
    }
}

impl Module for Block {
    fn type_name(&self) -> &'static str {
        self.type_name
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        (self.flow)(self, input)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.parts
            .iter()
            .map(|(n, m)| (n.to_string(), m.as_ref()))
            .collect()
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        self.parts
            .iter_mut()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| m.as_mut() as &mut dyn Module)
    }

    fn replace_child(&mut self, name: &str, module: Box<dyn Module>) -> Result<Box<dyn Module>> {
        let type_name = self.type_name;
        let slot = self
            .parts
            .iter_mut()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| {
                Error::invalid(
                    "replace_module",
                    format!("{type_name} has no child `{name}`"),
                )
            })?;
        Ok(std::mem::replace(&mut slot.1, module))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The layers of torchvision's `Conv2dNormActivation`: conv, BN and (when given) the
/// activation, to put in a `Sequential` (keys `.0`, `.1`, `.2`).
pub fn conv_bn_act(
    conv: Conv2d,
    bn: BatchNorm2d,
    activation: Option<Activation>,
) -> Vec<Box<dyn Module>> {
    let mut layers: Vec<Box<dyn Module>> = vec![Box::new(conv), Box::new(bn)];
    layers.extend(activation.map(|a| Box::new(ActivationLayer(a)) as Box<dyn Module>));
    layers
}

/// torchvision's `_make_divisible(v, 8)`: `v` rounded to the nearest multiple of 8 (at least 8),
/// one step up when rounding lost more than 10 %.
pub fn make_divisible(value: usize, divisor: usize) -> usize {
    let rounded = ((value + divisor / 2) / divisor * divisor).max(divisor);
    if (rounded as f64) < 0.9 * value as f64 {
        rounded + divisor
    } else {
        rounded
    }
}

/// One row of MobileNetV3's block table (`InvertedResidualConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvertedResidualConfig {
    /// Input channels.
    pub input_channels: usize,
    /// Depthwise kernel size.
    pub kernel: usize,
    /// Channels after the 1×1 expansion.
    pub expanded_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Squeeze-and-excitation after the depthwise conv.
    pub use_se: bool,
    /// Hardswish (true) or ReLU (false).
    pub use_hardswish: bool,
    /// Stride of the depthwise conv (1 when dilated).
    pub stride: usize,
    /// Dilation of the depthwise conv.
    pub dilation: usize,
}

/// MobileNetV3-Large's 15 inverted residual blocks (torchvision's table); `dilated` gives the
/// last stage (blocks 13–15) dilation 2, keeping output stride 16.
pub fn large_block_configs(dilated: bool) -> Vec<InvertedResidualConfig> {
    let d = if dilated { 2 } else { 1 };
    // (in, kernel, expanded, out, SE, hardswish, stride, dilation)
    let rows = [
        (16, 3, 16, 16, false, false, 1, 1),
        (16, 3, 64, 24, false, false, 2, 1),
        (24, 3, 72, 24, false, false, 1, 1),
        (24, 5, 72, 40, true, false, 2, 1),
        (40, 5, 120, 40, true, false, 1, 1),
        (40, 5, 120, 40, true, false, 1, 1),
        (40, 3, 240, 80, false, true, 2, 1),
        (80, 3, 200, 80, false, true, 1, 1),
        (80, 3, 184, 80, false, true, 1, 1),
        (80, 3, 184, 80, false, true, 1, 1),
        (80, 3, 480, 112, true, true, 1, 1),
        (112, 3, 672, 112, true, true, 1, 1),
        (112, 5, 672, 160, true, true, 2, d),
        (160, 5, 960, 160, true, true, 1, d),
        (160, 5, 960, 160, true, true, 1, d),
    ];
    rows.iter()
        .map(|&(i, k, e, o, se, hs, s, dil)| InvertedResidualConfig {
            input_channels: i,
            kernel: k,
            expanded_channels: e,
            out_channels: o,
            use_se: se,
            use_hardswish: hs,
            stride: s,
            dilation: dil,
        })
        .collect()
}

/// A conv as torchvision's MobileNetV3 initialises it: weight kaiming-normal (fan-out), bias 0.
fn mobilenet_conv(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    params: Conv2dParams,
    bias: bool,
) -> Result<Conv2d> {
    let mut conv = Conv2d::with_params(in_channels, out_channels, [kernel; 2], params, bias)?;
    let shape = conv.weight.shape().clone();
    conv.weight = init::kaiming_normal(shape, FanMode::FanOut)?.with_requires_grad(true);
    if let Some(bias) = &conv.bias {
        bias.replace_data(&bias.zeros_like()?)?;
    }
    Ok(conv)
}

/// `Conv2dNormActivation` as MobileNetV3 uses it: bias-free conv with "same" padding
/// `(k−1)/2·dilation`, BN (eps 0.001, momentum 0.01), optional activation.
fn mobilenet_cna(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
    activation: Option<Activation>,
) -> Result<Sequential> {
    let padding = (kernel - 1) / 2 * dilation;
    let params = Conv2dParams::new(stride, padding, dilation, groups);
    let conv = mobilenet_conv(in_channels, out_channels, kernel, params, false)?;
    let bn = BatchNorm2d::with_options(out_channels, 0.001, Some(0.01), true, true)?;
    Ok(Sequential::new(conv_bn_act(conv, bn, activation)))
}

/// torchvision's `SqueezeExcitation(channels, squeeze)` with ReLU and Hardsigmoid:
/// `x · hardsigmoid(fc2(relu(fc1(avgpool(x)))))`; parts `fc1`, `fc2` (1×1 convs with bias).
pub fn squeeze_excitation(channels: usize, squeeze: usize) -> Result<Block> {
    let one = Conv2dParams::default();
    let block = Block::new("SqueezeExcitation", |b, x| {
        let s = b.apply("avgpool", x)?;
        let s = b.apply("fc1", &s)?;
        let s = b.apply("activation", &s)?;
        let s = b.apply("fc2", &s)?;
        let s = b.apply("scale_activation", &s)?;
        x.mul(&s)
    });
    Ok(block
        .with("avgpool", AdaptiveAvgPool2d([1, 1]))
        .with("fc1", mobilenet_conv(channels, squeeze, 1, one, true)?)
        .with("fc2", mobilenet_conv(squeeze, channels, 1, one, true)?)
        .with("activation", ActivationLayer::relu())
        .with("scale_activation", ActivationLayer::hardsigmoid()))
}

/// torchvision's `InvertedResidual`: part `block` = [1×1 expansion (when the width changes)],
/// depthwise k×k, [SE], 1×1 projection without activation; plus the input when the stride is
/// 1 and the width is kept.
pub fn inverted_residual(config: &InvertedResidualConfig) -> Result<Block> {
    let c = config;
    let activation = if c.use_hardswish {
        Activation::Hardswish
    } else {
        Activation::Relu
    };
    let mut layers: Vec<Box<dyn Module>> = Vec::new();
    if c.expanded_channels != c.input_channels {
        let expand = mobilenet_cna(
            c.input_channels,
            c.expanded_channels,
            1,
            1,
            1,
            1,
            Some(activation),
        )?;
        layers.push(Box::new(expand));
    }
    let stride = if c.dilation > 1 { 1 } else { c.stride };
    let depthwise = mobilenet_cna(
        c.expanded_channels,
        c.expanded_channels,
        c.kernel,
        stride,
        c.dilation,
        c.expanded_channels,
        Some(activation),
    )?;
    layers.push(Box::new(depthwise));
    if c.use_se {
        let squeeze = make_divisible(c.expanded_channels / 4, 8);
        layers.push(Box::new(squeeze_excitation(c.expanded_channels, squeeze)?));
    }
    let project = mobilenet_cna(c.expanded_channels, c.out_channels, 1, 1, 1, 1, None)?;
    layers.push(Box::new(project));

    let residual = c.stride == 1 && c.input_channels == c.out_channels;
    let block = Block::new("InvertedResidual", move |b, x| {
        let y = b.apply("block", x)?;
        if residual {
            y.add(x)
        } else {
            Ok(y)
        }
    });
    Ok(block.with("block", Sequential::new(layers)))
}

/// `mobilenet_v3_large(dilated).features` with torchvision's initialisation (convs
/// kaiming-normal fan-out, biases 0, BN 1/0).
pub fn mobilenet_v3_large_features(dilated: bool) -> Result<Sequential> {
    let configs = large_block_configs(dilated);
    let first = configs[0].input_channels;
    let last = configs[configs.len() - 1].out_channels;
    let mut layers: Vec<Box<dyn Module>> = Vec::with_capacity(configs.len() + 2);
    layers.push(Box::new(mobilenet_cna(
        3,
        first,
        3,
        2,
        1,
        1,
        Some(Activation::Hardswish),
    )?));
    for config in &configs {
        layers.push(Box::new(inverted_residual(config)?));
    }
    layers.push(Box::new(mobilenet_cna(
        last,
        6 * last,
        1,
        1,
        1,
        1,
        Some(Activation::Hardswish),
    )?));
    Ok(Sequential::new(layers))
}
