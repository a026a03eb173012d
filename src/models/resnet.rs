//! ResNet-50/101 backbone with torchvision key names (DeepLabv3+, PSPNet).
//!
//! Keys: `conv1`, `bn1`, `layer1..layer4.{i}` bottlenecks with `conv1/bn1/conv2/bn2/conv3/bn3`
//! and `downsample.{0,1}` (no `fc`), so a torchvision ImageNet checkpoint loads into
//! `backbone.` ([`super::load_imagenet_backbone`]). The stride and the per-block dilation of each
//! stage are configurable ([`ResNetConfig`]):
//!
//! - DeepLabv3+ (jfzhang95/pytorch-deeplab-xception), output stride 16: layer4 stride 1 with
//!   multi-grid dilations `(1, 2, 4) × 2 = (2, 4, 8)`, its first block included;
//! - PSPNet (hszhao/semseg), output stride 8: layer3 and layer4 stride 1, every `conv2` of
//!   layer3 dilated 2 and of layer4 dilated 4, first blocks included;
//! - torchvision's `replace_stride_with_dilation`, which differs in the first block of a
//!   dilated stage: it keeps the *previous* stage's dilation there.
//!
//! The stride sits on the 3×3 `conv2` (ResNet v1.5) and on the 1×1 `downsample.0`; the
//! downsample conv is never dilated.

use crate::error::{Error, Result};
use crate::nn::init::FanMode;
use crate::nn::ConvOptions;
use crate::nn::{BatchNorm2d, Conv2d, MaxPool2d, Module, Sequential};
use crate::ops::interpolate::{InterpolateMode, Resize};
use crate::ops::pool::MaxPool2dParams;
use crate::tensor::Tensor;
use std::any::Any;

/// Output channels of a bottleneck per unit of its width (`Bottleneck.expansion`).
pub const EXPANSION: usize = 4;

/// Implements [`Module::children`] and [`Module::child_mut`] for a struct whose sub-modules
/// are fields named as PyTorch registers them, listed in registration order.
macro_rules! field_children {
    ($($field:ident),+ $(,)?) => {
        fn children(&self) -> Vec<(String, &dyn $crate::nn::Module)> {
            vec![$((stringify!($field).to_string(), &self.$field as &dyn $crate::nn::Module)),+]
        }

        fn child_mut(&mut self, name: &str) -> Option<&mut dyn $crate::nn::Module> {
            match name {
                $(stringify!($field) => Some(&mut self.$field),)+
                _ => None,
            }
        }
    };
}
pub(crate) use field_children;

/// The options of the backbone's convs: bias-free, size-preserving padding, re-initialised as
/// the ResNet originals do (kaiming-normal, fan-out).
fn backbone() -> ConvOptions {
    ConvOptions::new()
        .same()
        .no_bias()
        .kaiming_normal(FanMode::FanOut)
}

/// `F.interpolate(x, size, mode='bilinear', align_corners=True)`, the resize every
/// ResNet-based head here uses.
pub fn resize_bilinear_aligned(x: &Tensor, size: [usize; 2]) -> Result<Tensor> {
    x.interpolate(
        Resize::Size(size),
        InterpolateMode::Bilinear {
            align_corners: true,
        },
    )
}

/// `[H, W]` of an NCHW tensor, or an error naming `op`.
pub fn spatial_size(op: &'static str, x: &Tensor) -> Result<[usize; 2]> {
    match x.dims() {
        [_, _, h, w] => Ok([*h, *w]),
        _ => Err(Error::shape(
            op,
            format!("expected an NCHW input, got shape {}", x.shape()),
        )),
    }
}

/// The ResNet bottleneck (torchvision `Bottleneck`, v1.5):
/// `relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + identity)`, where `conv2` is the
/// 3×3 conv carrying the stride and dilation, and `identity = downsample(x)` (1×1 conv with the
/// stride, then BN) when the stride or the channel count changes.
pub struct Bottleneck {
    /// 1×1 `in → width`.
    pub conv1: Conv2d,
    /// BN after `conv1`.
    pub bn1: BatchNorm2d,
    /// 3×3 `width → width`, stride and dilation (padding = dilation).
    pub conv2: Conv2d,
    /// BN after `conv2`.
    pub bn2: BatchNorm2d,
    /// 1×1 `width → 4·width`.
    pub conv3: Conv2d,
    /// BN after `conv3` (its output is added to the identity).
    pub bn3: BatchNorm2d,
    /// `Sequential(1×1 conv with the stride, BN)` when the shape changes.
    pub downsample: Option<Sequential>,
}

impl Bottleneck {
    /// A bottleneck from `in_channels` to `4·width` channels with the given stride and dilation
    /// of its 3×3 conv; the downsample path exists when `stride ≠ 1` or `in_channels ≠ 4·width`.
    pub fn new(in_channels: usize, width: usize, stride: usize, dilation: usize) -> Result<Self> {
        if in_channels == 0 || width == 0 || stride == 0 || dilation == 0 {
            return Err(Error::invalid(
                "Bottleneck",
                format!(
                    "channels, width, stride and dilation must be positive \
                     (in {in_channels}, width {width}, stride {stride}, dilation {dilation})"
                ),
            ));
        }
        let out_channels = width * EXPANSION;
        let downsample = if stride != 1 || in_channels != out_channels {
            Some(
                Sequential::default()
                    .push(Conv2d::new(
                        in_channels,
                        out_channels,
                        1,
                        backbone().stride(stride),
                    )?)
                    .push(BatchNorm2d::new(out_channels)?),
            )
        } else {
            None
        };
        Ok(Bottleneck {
            conv1: Conv2d::new(in_channels, width, 1, backbone())?,
            bn1: BatchNorm2d::new(width)?,
            conv2: Conv2d::new(
                width,
                width,
                3,
                backbone().stride(stride).dilation(dilation),
            )?,
            bn2: BatchNorm2d::new(width)?,
            conv3: Conv2d::new(width, out_channels, 1, backbone())?,
            bn3: BatchNorm2d::new(out_channels)?,
            downsample,
        })
    }
}

impl Module for Bottleneck {
    fn type_name(&self) -> &'static str {
        "Bottleneck"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let x = self.bn1.forward(&self.conv1.forward(input)?)?.relu()?;
        let x = self.bn2.forward(&self.conv2.forward(&x)?)?.relu()?;
        let x = self.bn3.forward(&self.conv3.forward(&x)?)?;
        let identity = match &self.downsample {
            Some(downsample) => downsample.forward(input)?,
            None => input.clone(),
        };
        x.add(&identity)?.relu()
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut out: Vec<(String, &dyn Module)> = vec![
            ("conv1".into(), &self.conv1),
            ("bn1".into(), &self.bn1),
            ("conv2".into(), &self.conv2),
            ("bn2".into(), &self.bn2),
            ("conv3".into(), &self.conv3),
            ("bn3".into(), &self.bn3),
        ];
        if let Some(downsample) = &self.downsample {
            out.push(("downsample".into(), downsample));
        }
        out
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        match name {
            "conv1" => Some(&mut self.conv1),
            "bn1" => Some(&mut self.bn1),
            "conv2" => Some(&mut self.conv2),
            "bn2" => Some(&mut self.bn2),
            "conv3" => Some(&mut self.conv3),
            "bn3" => Some(&mut self.bn3),
            "downsample" => self.downsample.as_mut().map(|d| d as &mut dyn Module),
            _ => None,
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Blocks per stage of ResNet-50 / ResNet-101.
fn blocks_for_depth(depth: usize) -> Result<[usize; 4]> {
    match depth {
        50 => Ok([3, 4, 6, 3]),
        101 => Ok([3, 4, 23, 3]),
        _ => Err(Error::invalid(
            "ResNet",
            format!("depth must be 50 or 101, got {depth}"),
        )),
    }
}

/// Geometry of a [`ResNet`]: stem and stage widths and, for each of `layer1..layer4`, its
/// stride (on the first block) and the dilation of each block's 3×3 conv (one entry per
/// block). The constructors give the full-width networks; tests build narrow ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Output channels of the stem conv (64).
    pub stem_channels: usize,
    /// Bottleneck width of each stage (64, 128, 256, 512); a stage outputs 4× as many channels.
    pub widths: [usize; 4],
    /// Stride of each stage's first block.
    pub strides: [usize; 4],
    /// Dilation of every block's `conv2`, per stage; the length of each is its block count.
    pub dilations: [Vec<usize>; 4],
}

impl ResNetConfig {
    /// The classification ResNet (output stride 32, no dilation).
    pub fn standard(depth: usize) -> Result<Self> {
        let blocks = blocks_for_depth(depth)?;
        Ok(ResNetConfig {
            stem_channels: 64,
            widths: [64, 128, 256, 512],
            strides: [1, 2, 2, 2],
            dilations: blocks.map(|n| vec![1; n]),
        })
    }

    /// jfzhang95's DeepLabv3+ backbone at output stride 16: layer4 stride 1 with multi-grid
    /// `(1, 2, 4)` times dilation 2, i.e. `(2, 4, 8)` on its three blocks.
    pub fn deeplab_os16(depth: usize) -> Result<Self> {
        let mut config = Self::standard(depth)?;
        config.strides[3] = 1;
        config.dilations[3] = vec![2, 4, 8];
        Ok(config)
    }

    /// hszhao/semseg's PSPNet backbone at output stride 8: layer3 and layer4 stride 1, every
    /// block of layer3 dilated 2 and every block of layer4 dilated 4.
    pub fn dilated_os8(depth: usize) -> Result<Self> {
        let mut config = Self::standard(depth)?;
        config.strides = [1, 2, 1, 1];
        for (stage, dilation) in [(2, 2), (3, 4)] {
            config.dilations[stage].fill(dilation);
        }
        Ok(config)
    }

    /// torchvision's `resnet(replace_stride_with_dilation=[l2, l3, l4])`: a replaced stage has
    /// stride 1 and doubles the running dilation, but its first block keeps the dilation the
    /// previous stage ended with.
    pub fn torchvision_dilated(
        depth: usize,
        replace_stride_with_dilation: [bool; 3],
    ) -> Result<Self> {
        let mut config = Self::standard(depth)?;
        let mut dilation = 1;
        for (stage, &replace) in replace_stride_with_dilation.iter().enumerate() {
            let stage = stage + 1;
            let previous = dilation;
            if replace {
                dilation *= config.strides[stage];
                config.strides[stage] = 1;
            }
            let blocks = config.dilations[stage].len();
            config.dilations[stage] = (0..blocks)
                .map(|i| if i == 0 { previous } else { dilation })
                .collect();
        }
        Ok(config)
    }

    /// Checks that every width, stride, dilation and block count is positive.
    fn validate(&self) -> Result<()> {
        let bad_width = self.stem_channels == 0 || self.widths.contains(&0);
        let bad_stride = bad_width || self.strides.contains(&0);
        let bad_dilation = self
            .dilations
            .iter()
            .any(|d| d.is_empty() || d.contains(&0));
        if bad_stride || bad_dilation {
            return Err(Error::invalid(
                "ResNet",
                format!(
                    "stem {} and widths {:?}, strides {:?} and dilations {:?} must be \
                     positive, every stage non-empty",
                    self.stem_channels, self.widths, self.strides, self.dilations
                ),
            ));
        }
        Ok(())
    }
}

/// A stage `layer{n}`: a Sequential of bottlenecks, the first with the stride.
fn make_stage(
    in_channels: usize,
    width: usize,
    stride: usize,
    dilations: &[usize],
) -> Result<Sequential> {
    let mut stage = Sequential::default();
    let mut channels = in_channels;
    for (i, &dilation) in dilations.iter().enumerate() {
        let block_stride = if i == 0 { stride } else { 1 };
        stage = stage.push(Bottleneck::new(channels, width, block_stride, dilation)?);
        channels = width * EXPANSION;
    }
    Ok(stage)
}

/// The ResNet trunk without `avgpool` and `fc`: `conv1` (7×7 s2) → `bn1` → ReLU → 3×3 s2 max
/// pool → `layer1..layer4` (at full width: widths 64, 128, 256, 512; outputs 256, 512, 1024,
/// 2048 channels).
pub struct ResNet {
    /// 7×7 stride-2 conv 3→64.
    pub conv1: Conv2d,
    /// BN after `conv1`.
    pub bn1: BatchNorm2d,
    /// 3×3 stride-2 max pool, padding 1.
    pub maxpool: MaxPool2d,
    /// Stage 1 (stride 4 overall).
    pub layer1: Sequential,
    /// Stage 2.
    pub layer2: Sequential,
    /// Stage 3.
    pub layer3: Sequential,
    /// Stage 4.
    pub layer4: Sequential,
}

impl ResNet {
    /// A ResNet with the given geometry (block counts are the lengths of its dilation lists),
    /// fresh weights initialised as torchvision does (convs kaiming-normal fan-out, BN
    /// weight 1, bias 0).
    pub fn new(config: &ResNetConfig) -> Result<Self> {
        config.validate()?;
        let mut channels = config.stem_channels;
        let mut stages = Vec::with_capacity(4);
        for ((&width, &stride), dilations) in config
            .widths
            .iter()
            .zip(&config.strides)
            .zip(&config.dilations)
        {
            stages.push(make_stage(channels, width, stride, dilations)?);
            channels = width * EXPANSION;
        }
        let [layer1, layer2, layer3, layer4]: [Sequential; 4] = stages
            .try_into()
            .map_err(|_| Error::invalid("ResNet", "expected four stages"))?;
        Ok(ResNet {
            conv1: Conv2d::new(3, config.stem_channels, 7, backbone().stride(2))?,
            bn1: BatchNorm2d::new(config.stem_channels)?,
            maxpool: MaxPool2d(MaxPool2dParams::new(3).stride(2).padding(1)),
            layer1,
            layer2,
            layer3,
            layer4,
        })
    }

    /// The outputs of `layer1..layer4`, for heads that use intermediate features (DeepLabv3+'s
    /// low-level features, PSPNet's auxiliary head).
    pub fn forward_stages(&self, input: &Tensor) -> Result<[Tensor; 4]> {
        let x = self.bn1.forward(&self.conv1.forward(input)?)?.relu()?;
        let x = self.maxpool.forward(&x)?;
        let c1 = self.layer1.forward(&x)?;
        let c2 = self.layer2.forward(&c1)?;
        let c3 = self.layer3.forward(&c2)?;
        let c4 = self.layer4.forward(&c3)?;
        Ok([c1, c2, c3, c4])
    }
}

impl Module for ResNet {
    fn type_name(&self) -> &'static str {
        "ResNet"
    }

    /// The `layer4` output.
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let [_, _, _, c4] = self.forward_stages(input)?;
        Ok(c4)
    }

    field_children!(conv1, bn1, maxpool, layer1, layer2, layer3, layer4);

    fn as_any(&self) -> &dyn Any {
        self
    }
}
