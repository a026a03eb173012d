//! ENet's four block types with davidtvs/PyTorch-ENet's module names: `InitialBlock`,
//! `RegularBottleneck` (regular, dilated, asymmetric), `DownsamplingBottleneck` and
//! `UpsamplingBottleneck`. Conv–BN(–activation) groups are `nn.Sequential`s, so their keys read
//! `ext_conv1.0.weight`, `ext_conv1.1.running_mean`, `ext_conv1.2.weight` (a PReLU slope).

use crate::error::{Error, Result};
use crate::nn::{
    ActivationLayer, BatchNorm2d, Conv2d, ConvOptions, ConvTranspose2d, Dropout2d, MaxPool2d,
    MaxUnpool2d, Module, PReLU, Sequential,
};
use crate::ops::conv::{Conv2dParams, ConvTranspose2dParams};
use crate::ops::pool::{MaxPool2dParams, MaxUnpool2dParams};
use crate::tensor::Tensor;
use std::any::Any;

/// Channels of a bottleneck's extension branch: `channels / 4` (davidtvs' `internal_ratio`).
const INTERNAL_RATIO: usize = 4;

/// A block's activation: `nn.PReLU()` (one slope, init 0.25) in the encoder, `nn.ReLU()` in
/// the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockActivation {
    /// `nn.PReLU()`: one learnable slope per activation module.
    PRelu,
    /// `nn.ReLU()`.
    Relu,
}

impl BlockActivation {
    /// A fresh activation module.
    pub fn layer(self) -> Result<Box<dyn Module>> {
        Ok(match self {
            BlockActivation::PRelu => Box::new(PReLU::new(1, 0.25)?),
            BlockActivation::Relu => Box::new(ActivationLayer::relu()),
        })
    }
}

/// Which convolution sits in the middle of a [`RegularBottleneck`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegularKind {
    /// 3×3, padding 1.
    Regular,
    /// 3×3 with this dilation (and the same padding).
    Dilated(usize),
    /// 5×1 then 1×5, padding 2, each followed by BN and the activation.
    Asymmetric,
}

/// The layers of `conv → BatchNorm2d (→ activation)`.
fn conv_bn_layers(
    conv: Conv2d,
    activation: Option<BlockActivation>,
) -> Result<Vec<Box<dyn Module>>> {
    let bn = BatchNorm2d::new(conv.out_channels())?;
    let mut layers: Vec<Box<dyn Module>> = vec![Box::new(conv), Box::new(bn)];
    if let Some(activation) = activation {
        layers.push(activation.layer()?);
    }
    Ok(layers)
}

/// `nn.Sequential(conv, BatchNorm2d (, activation))`.
fn conv_bn(conv: Conv2d, activation: Option<BlockActivation>) -> Result<Sequential> {
    Ok(Sequential::new(conv_bn_layers(conv, activation)?))
}

/// The internal channel count of a bottleneck with `channels` input channels.
fn internal_channels(block: &'static str, channels: usize) -> Result<usize> {
    if channels < INTERNAL_RATIO {
        return Err(Error::invalid(
            block,
            format!("needs at least {INTERNAL_RATIO} channels, got {channels}"),
        ));
    }
    Ok(channels / INTERNAL_RATIO)
}

/// `initial_block`: `main_branch` (3×3 stride-2 conv to `out − 3` channels) ∥ `ext_branch`
/// (3×3 stride-2 max-pool, padding 1, of the 3 input channels), concatenated, `batch_norm`,
/// `out_activation`.
pub struct InitialBlock {
    /// 3×3, stride 2, padding 1, `in → out − in`.
    pub main_branch: Conv2d,
    /// 3×3 max-pool, stride 2, padding 1.
    pub ext_branch: MaxPool2d,
    /// BN over the concatenation.
    pub batch_norm: BatchNorm2d,
    /// The block's activation.
    pub out_activation: Box<dyn Module>,
}

impl InitialBlock {
    /// `InitialBlock(in_channels, out_channels)`; ENet uses 3 → 16.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        activation: BlockActivation,
    ) -> Result<Self> {
        if out_channels <= in_channels {
            return Err(Error::invalid(
                "InitialBlock",
                format!("out_channels {out_channels} must exceed in_channels {in_channels}"),
            ));
        }
        Ok(InitialBlock {
            main_branch: Conv2d::new(
                in_channels,
                out_channels - in_channels,
                3,
                ConvOptions::new().stride(2).padding(1).no_bias(),
            )?,
            ext_branch: MaxPool2d(MaxPool2dParams::new(3).stride(2).padding(1)),
            batch_norm: BatchNorm2d::new(out_channels)?,
            out_activation: activation.layer()?,
        })
    }
}

impl Module for InitialBlock {
    fn type_name(&self) -> &'static str {
        "InitialBlock"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let main = self.main_branch.forward(input)?;
        let ext = self.ext_branch.forward(input)?;
        let out = self.batch_norm.forward(&Tensor::cat(&[&main, &ext], 1)?)?;
        self.out_activation.forward(&out)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("main_branch".into(), &self.main_branch as &dyn Module),
            ("ext_branch".into(), &self.ext_branch),
            ("batch_norm".into(), &self.batch_norm),
            ("out_activation".into(), self.out_activation.as_ref()),
        ]
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        match name {
            "main_branch" => Some(&mut self.main_branch),
            "batch_norm" => Some(&mut self.batch_norm),
            "out_activation" => Some(self.out_activation.as_mut()),
            _ => None,
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The extension branch shared by the regular and downsampling bottlenecks:
/// `ext_conv1 → ext_conv2 → ext_conv3 → ext_regul`.
fn extension(convs: [&Sequential; 3], regul: &Dropout2d, input: &Tensor) -> Result<Tensor> {
    let mut x = input.clone();
    for seq in convs {
        x = seq.forward(&x)?;
    }
    regul.forward(&x)
}

/// Children and mutable children of the blocks with `ext_conv1..3`, `ext_regul` and
/// `out_activation` (regular and downsampling bottlenecks).
macro_rules! extension_children {
    ($($first:ident),*) => {
        fn children(&self) -> Vec<(String, &dyn Module)> {
            vec![
                $((stringify!($first).into(), &self.$first as &dyn Module),)*
                ("ext_conv1".into(), &self.ext_conv1 as &dyn Module),
                ("ext_conv2".into(), &self.ext_conv2),
                ("ext_conv3".into(), &self.ext_conv3),
                ("ext_regul".into(), &self.ext_regul),
                ("out_activation".into(), self.out_activation.as_ref()),
            ]
        }

        fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
            match name {
                "ext_conv1" => Some(&mut self.ext_conv1),
                "ext_conv2" => Some(&mut self.ext_conv2),
                "ext_conv3" => Some(&mut self.ext_conv3),
                "out_activation" => Some(self.out_activation.as_mut()),
                _ => None,
            }
        }
    };
}

/// `RegularBottleneck`: `x + ext(x)`, then the activation; `ext` = `ext_conv1` (1×1 to
/// channels/4, BN, act) → `ext_conv2` (see [`RegularKind`]) → `ext_conv3` (1×1 back, BN, act)
/// → `ext_regul` (Dropout2d).
pub struct RegularBottleneck {
    /// 1×1 projection, BN, activation.
    pub ext_conv1: Sequential,
    /// The main convolution(s), each with BN and activation.
    pub ext_conv2: Sequential,
    /// 1×1 expansion, BN, activation.
    pub ext_conv3: Sequential,
    /// Dropout2d.
    pub ext_regul: Dropout2d,
    /// Applied after the addition.
    pub out_activation: Box<dyn Module>,
}

impl RegularBottleneck {
    /// A bottleneck on `channels` channels with `dropout` channel-dropout probability.
    pub fn new(
        channels: usize,
        kind: RegularKind,
        dropout: f32,
        activation: BlockActivation,
    ) -> Result<Self> {
        let inner = internal_channels("RegularBottleneck", channels)?;
        let act = Some(activation);
        let ext_conv2 = match kind {
            RegularKind::Regular => conv_bn(
                Conv2d::new(inner, inner, 3, ConvOptions::new().padding(1).no_bias())?,
                act,
            )?,
            RegularKind::Dilated(d) => conv_bn(
                Conv2d::new(
                    inner,
                    inner,
                    3,
                    ConvOptions::new().padding(d).dilation(d).no_bias(),
                )?,
                act,
            )?,
            RegularKind::Asymmetric => {
                let geometry = |padding| Conv2dParams {
                    padding,
                    ..Conv2dParams::default()
                };
                // Padding is [top, bottom, left, right].
                let tall =
                    Conv2d::with_params(inner, inner, [5, 1], geometry([2, 2, 0, 0]), false)?;
                let wide =
                    Conv2d::with_params(inner, inner, [1, 5], geometry([0, 0, 2, 2]), false)?;
                let mut layers = conv_bn_layers(tall, act)?;
                layers.extend(conv_bn_layers(wide, act)?);
                Sequential::new(layers)
            }
        };
        Ok(RegularBottleneck {
            ext_conv1: conv_bn(
                Conv2d::new(channels, inner, 1, ConvOptions::new().no_bias())?,
                act,
            )?,
            ext_conv2,
            ext_conv3: conv_bn(
                Conv2d::new(inner, channels, 1, ConvOptions::new().no_bias())?,
                act,
            )?,
            ext_regul: Dropout2d::new(dropout)?,
            out_activation: activation.layer()?,
        })
    }
}

impl Module for RegularBottleneck {
    fn type_name(&self) -> &'static str {
        "RegularBottleneck"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let convs = [&self.ext_conv1, &self.ext_conv2, &self.ext_conv3];
        let ext = extension(convs, &self.ext_regul, input)?;
        self.out_activation.forward(&input.add(&ext)?)
    }

    extension_children!();

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `DownsamplingBottleneck`: main = `main_max1` (2×2 stride-2 max-pool, indices kept) with
/// zero channels appended up to `out`; ext = `ext_conv1` (2×2 stride 2 to in/4, BN, act) →
/// `ext_conv2` (3×3, BN, act) → `ext_conv3` (1×1 to `out`, BN, act) → Dropout2d; the sum goes
/// through the activation.
pub struct DownsamplingBottleneck {
    /// 2×2 max-pool, stride 2.
    pub main_max1: MaxPool2d,
    /// 2×2 stride-2 projection, BN, activation.
    pub ext_conv1: Sequential,
    /// 3×3 conv, BN, activation.
    pub ext_conv2: Sequential,
    /// 1×1 expansion, BN, activation.
    pub ext_conv3: Sequential,
    /// Dropout2d.
    pub ext_regul: Dropout2d,
    /// Applied after the addition.
    pub out_activation: Box<dyn Module>,
}

impl DownsamplingBottleneck {
    /// `in_channels → out_channels` at half the resolution.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        dropout: f32,
        activation: BlockActivation,
    ) -> Result<Self> {
        let inner = internal_channels("DownsamplingBottleneck", in_channels)?;
        if out_channels < in_channels {
            return Err(Error::invalid(
                "DownsamplingBottleneck",
                format!("out_channels {out_channels} must be at least in_channels {in_channels}"),
            ));
        }
        let act = Some(activation);
        Ok(DownsamplingBottleneck {
            main_max1: MaxPool2d(MaxPool2dParams::new(2)),
            ext_conv1: conv_bn(
                Conv2d::new(
                    in_channels,
                    inner,
                    2,
                    ConvOptions::new().stride(2).no_bias(),
                )?,
                act,
            )?,
            ext_conv2: conv_bn(
                Conv2d::new(inner, inner, 3, ConvOptions::new().padding(1).no_bias())?,
                act,
            )?,
            ext_conv3: conv_bn(
                Conv2d::new(inner, out_channels, 1, ConvOptions::new().no_bias())?,
                act,
            )?,
            ext_regul: Dropout2d::new(dropout)?,
            out_activation: activation.layer()?,
        })
    }

    /// The block's output and the max-pool indices of its main branch (for the unpooling of
    /// the matching [`UpsamplingBottleneck`]).
    pub fn forward_with_indices(&self, input: &Tensor) -> Result<(Tensor, Tensor)> {
        let (main, indices) = self.main_max1.forward_with_indices(input)?;
        let convs = [&self.ext_conv1, &self.ext_conv2, &self.ext_conv3];
        let ext = extension(convs, &self.ext_regul, input)?;
        let extra = ext.dims()[1].checked_sub(main.dims()[1]).ok_or_else(|| {
            Error::shape(
                "DownsamplingBottleneck",
                format!(
                    "main branch {} is wider than the extension {}",
                    main.shape(),
                    ext.shape()
                ),
            )
        })?;
        // Zero channels after the pooled ones: `(before, after)` pairs for W, H, C.
        let main = main.pad(&[0, 0, 0, 0, 0, extra], 0.0)?;
        let out = self.out_activation.forward(&main.add(&ext)?)?;
        Ok((out, indices))
    }
}

impl Module for DownsamplingBottleneck {
    fn type_name(&self) -> &'static str {
        "DownsamplingBottleneck"
    }

    /// The output without the indices.
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_indices(input)?.0)
    }

    extension_children!(main_max1);

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `UpsamplingBottleneck`: main = `main_conv1` (1×1 to `out`, BN) → `main_unpool1` (2×2
/// max-unpool with the indices of the matching downsampling block); ext = `ext_conv1` (1×1 to
/// in/4, BN, act) → `ext_tconv1` (2×2 stride-2 transposed conv) → `ext_tconv1_bnorm` →
/// `ext_tconv1_activation` → `ext_conv2` (1×1 to `out`, BN, **no activation**, as upstream)
/// → Dropout2d; the sum goes through the activation.
pub struct UpsamplingBottleneck {
    /// 1×1 conv to `out`, BN.
    pub main_conv1: Sequential,
    /// 2×2 max-unpool.
    pub main_unpool1: MaxUnpool2d,
    /// 1×1 projection, BN, activation.
    pub ext_conv1: Sequential,
    /// 2×2 stride-2 transposed conv.
    pub ext_tconv1: ConvTranspose2d,
    /// BN after the transposed conv.
    pub ext_tconv1_bnorm: BatchNorm2d,
    /// Activation after that BN.
    pub ext_tconv1_activation: Box<dyn Module>,
    /// 1×1 expansion, BN (no activation: keys `.0`, `.1`).
    pub ext_conv2: Sequential,
    /// Dropout2d.
    pub ext_regul: Dropout2d,
    /// Applied after the addition.
    pub out_activation: Box<dyn Module>,
}

impl UpsamplingBottleneck {
    /// `in_channels → out_channels` at twice the resolution.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        dropout: f32,
        activation: BlockActivation,
    ) -> Result<Self> {
        let inner = internal_channels("UpsamplingBottleneck", in_channels)?;
        let act = Some(activation);
        let tconv = ConvTranspose2dParams::new(2, 0, 0, 1, 1);
        Ok(UpsamplingBottleneck {
            main_conv1: conv_bn(
                Conv2d::new(in_channels, out_channels, 1, ConvOptions::new().no_bias())?,
                None,
            )?,
            main_unpool1: MaxUnpool2d(MaxUnpool2dParams::new(2)),
            ext_conv1: conv_bn(
                Conv2d::new(in_channels, inner, 1, ConvOptions::new().no_bias())?,
                act,
            )?,
            ext_tconv1: ConvTranspose2d::new(inner, inner, 2, tconv, false)?,
            ext_tconv1_bnorm: BatchNorm2d::new(inner)?,
            ext_tconv1_activation: activation.layer()?,
            // Like `main_conv1`, the expansion ends at its BN: the activation comes after the
            // addition only (davidtvs/PyTorch-ENet `UpsamplingBottleneck.ext_conv2`).
            ext_conv2: conv_bn(
                Conv2d::new(inner, out_channels, 1, ConvOptions::new().no_bias())?,
                None,
            )?,
            ext_regul: Dropout2d::new(dropout)?,
            out_activation: activation.layer()?,
        })
    }

    /// The forward pass: unpools with `indices` (of the matching downsampling block's max-pool)
    /// to `output_size` `[H, W]` (that block's input size).
    pub fn forward_with_indices(
        &self,
        input: &Tensor,
        indices: &Tensor,
        output_size: [usize; 2],
    ) -> Result<Tensor> {
        let main = self.main_conv1.forward(input)?;
        let main = self
            .main_unpool1
            .forward_with_indices(&main, indices, Some(output_size))?;
        let ext = self.ext_conv1.forward(input)?;
        let ext = self.ext_tconv1.forward_with_size(&ext, Some(output_size))?;
        let ext = self.ext_tconv1_bnorm.forward(&ext)?;
        let ext = self.ext_tconv1_activation.forward(&ext)?;
        let ext = self.ext_regul.forward(&self.ext_conv2.forward(&ext)?)?;
        self.out_activation.forward(&main.add(&ext)?)
    }
}

impl Module for UpsamplingBottleneck {
    fn type_name(&self) -> &'static str {
        "UpsamplingBottleneck"
    }

    /// Needs the indices of a downsampling block: call
    /// [`UpsamplingBottleneck::forward_with_indices`].
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        Err(Error::invalid(
            "UpsamplingBottleneck",
            format!(
                "needs max-pool indices: call forward_with_indices (input {})",
                input.shape()
            ),
        ))
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("main_conv1".into(), &self.main_conv1 as &dyn Module),
            ("main_unpool1".into(), &self.main_unpool1),
            ("ext_conv1".into(), &self.ext_conv1),
            ("ext_tconv1".into(), &self.ext_tconv1),
            ("ext_tconv1_bnorm".into(), &self.ext_tconv1_bnorm),
            (
                "ext_tconv1_activation".into(),
                self.ext_tconv1_activation.as_ref(),
            ),
            ("ext_conv2".into(), &self.ext_conv2),
            ("ext_regul".into(), &self.ext_regul),
            ("out_activation".into(), self.out_activation.as_ref()),
        ]
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        match name {
            "main_conv1" => Some(&mut self.main_conv1),
            "ext_conv1" => Some(&mut self.ext_conv1),
            "ext_tconv1" => Some(&mut self.ext_tconv1),
            "ext_tconv1_bnorm" => Some(&mut self.ext_tconv1_bnorm),
            "ext_conv2" => Some(&mut self.ext_conv2),
            _ => None,
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
