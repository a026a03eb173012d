//! DeepLabv3+ on a ResNet-50/101 backbone at output stride 16, weight-compatible with
//! jfzhang95/pytorch-deeplab-xception (`modeling/deeplab.py`, `aspp.py`, `decoder.py`,
//! `backbone/resnet.py`; checked module by module at commit 9135e104). Deliberate deviations:
//! upstream builds ResNet-101 only (ResNet-50 here too, same structure), and its output
//! stride 8 variant (ASPP 12/24/36) is not offered.
//!
//! `backbone` (layer1 = low-level features, layer4 = high-level) → `aspp` (four atrous branches
//! and image pooling, 1280 → 256) → `decoder` (48-channel projection of the low-level features,
//! ASPP output resized onto them, 304 → 256 → 256 → C) → bilinear resize to the input size.
//! Every resize is bilinear with `align_corners=True`, so any input size works.

use super::resnet::{field_children, resize_bilinear_aligned, spatial_size, ResNet, ResNetConfig};
use super::{ModelConfig, SegNet};
use crate::error::{Error, Result};
use crate::nn::init::FanMode;
use crate::nn::ConvOptions;
use crate::nn::{
    ActivationLayer, AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Module, Sequential,
};
use crate::tensor::Tensor;
use std::any::Any;

/// The options of the heads' convs: bias-free, size-preserving padding, re-initialised as the
/// original does (`kaiming_normal_`, fan-in).
fn head() -> ConvOptions {
    ConvOptions::new()
        .same()
        .no_bias()
        .kaiming_normal(FanMode::FanIn)
}

/// One ASPP branch (`_ASPPModule`): `relu(bn(atrous_conv(x)))`, the conv 1×1 or 3×3 with
/// padding = dilation.
pub struct AsppBranch {
    /// The (atrous) conv, no bias.
    pub atrous_conv: Conv2d,
    /// BN after it.
    pub bn: BatchNorm2d,
}

impl AsppBranch {
    /// A `kernel`×`kernel` branch `in → out` with the given dilation.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        dilation: usize,
    ) -> Result<Self> {
        Ok(AsppBranch {
            atrous_conv: Conv2d::new(in_channels, out_channels, kernel, head().dilation(dilation))?,
            bn: BatchNorm2d::new(out_channels)?,
        })
    }
}

impl Module for AsppBranch {
    fn type_name(&self) -> &'static str {
        "_ASPPModule"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        self.bn.forward(&self.atrous_conv.forward(input)?)?.relu()
    }

    field_children!(atrous_conv, bn);

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Atrous spatial pyramid pooling: `aspp1` (1×1), `aspp2..4` (3×3 at three dilations) and
/// `global_avg_pool` (pool to 1×1, 1×1 conv, BN, ReLU, resized back), concatenated (5·out
/// channels) → `conv1` 1×1 → `bn1` → ReLU → dropout 0.5.
pub struct Aspp {
    /// 1×1 branch.
    pub aspp1: AsppBranch,
    /// 3×3 branch at the first dilation (6 at OS 16).
    pub aspp2: AsppBranch,
    /// 3×3 branch at the second dilation (12).
    pub aspp3: AsppBranch,
    /// 3×3 branch at the third dilation (18).
    pub aspp4: AsppBranch,
    /// `Sequential(AdaptiveAvgPool2d(1), 1×1 conv, BN, ReLU)`.
    pub global_avg_pool: Sequential,
    /// 1×1 projection of the concatenation.
    pub conv1: Conv2d,
    /// BN after `conv1`.
    pub bn1: BatchNorm2d,
    /// Dropout 0.5 (training only).
    pub dropout: Dropout,
}

impl Aspp {
    /// An ASPP `in → out` channels with 3×3 branches at `dilations` (`[6, 12, 18]` at OS 16).
    pub fn new(in_channels: usize, out_channels: usize, dilations: [usize; 3]) -> Result<Self> {
        let branch = |d| AsppBranch::new(in_channels, out_channels, 3, d);
        Ok(Aspp {
            aspp1: AsppBranch::new(in_channels, out_channels, 1, 1)?,
            aspp2: branch(dilations[0])?,
            aspp3: branch(dilations[1])?,
            aspp4: branch(dilations[2])?,
            global_avg_pool: Sequential::default()
                .push(AdaptiveAvgPool2d([1, 1]))
                .push(Conv2d::new(in_channels, out_channels, 1, head())?)
                .push(BatchNorm2d::new(out_channels)?)
                .push(ActivationLayer::relu()),
            conv1: Conv2d::new(5 * out_channels, out_channels, 1, head())?,
            bn1: BatchNorm2d::new(out_channels)?,
            dropout: Dropout::new(0.5)?,
        })
    }
}

impl Module for Aspp {
    fn type_name(&self) -> &'static str {
        "ASPP"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let size = spatial_size("ASPP", input)?;
        let pooled = self.global_avg_pool.forward(input)?;
        let branches = [
            self.aspp1.forward(input)?,
            self.aspp2.forward(input)?,
            self.aspp3.forward(input)?,
            self.aspp4.forward(input)?,
            resize_bilinear_aligned(&pooled, size)?,
        ];
        let refs: Vec<&Tensor> = branches.iter().collect();
        let x = Tensor::cat(&refs, 1)?;
        let x = self.bn1.forward(&self.conv1.forward(&x)?)?.relu()?;
        self.dropout.forward(&x)
    }

    field_children!(
        aspp1,
        aspp2,
        aspp3,
        aspp4,
        global_avg_pool,
        conv1,
        bn1,
        dropout
    );

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The DeepLabv3+ decoder: low-level features → `conv1` 1×1 → `bn1` → ReLU; the ASPP output
/// resized onto them and concatenated in front; `last_conv` = 3×3 → BN → ReLU → Dropout 0.5 →
/// 3×3 → BN → ReLU → Dropout 0.1 → 1×1 (bias) to the classes.
pub struct Decoder {
    /// 1×1 projection of the low-level features.
    pub conv1: Conv2d,
    /// BN after `conv1`.
    pub bn1: BatchNorm2d,
    /// The classifier Sequential (indices 0, 1, 4, 5, 8 hold weights).
    pub last_conv: Sequential,
}

impl Decoder {
    /// A decoder for `low_channels` low-level features projected to `low_projected` (48),
    /// `aspp_channels` from the ASPP (256), `width` channels inside `last_conv` (256) and
    /// `num_classes` outputs.
    pub fn new(
        low_channels: usize,
        low_projected: usize,
        aspp_channels: usize,
        width: usize,
        num_classes: usize,
    ) -> Result<Self> {
        let last_conv = Sequential::default()
            .push(Conv2d::new(
                aspp_channels + low_projected,
                width,
                3,
                head(),
            )?)
            .push(BatchNorm2d::new(width)?)
            .push(ActivationLayer::relu())
            .push(Dropout::new(0.5)?)
            .push(Conv2d::new(width, width, 3, head())?)
            .push(BatchNorm2d::new(width)?)
            .push(ActivationLayer::relu())
            .push(Dropout::new(0.1)?)
            .push(Conv2d::new(width, num_classes, 1, head().bias(true))?);
        Ok(Decoder {
            conv1: Conv2d::new(low_channels, low_projected, 1, head())?,
            bn1: BatchNorm2d::new(low_projected)?,
            last_conv,
        })
    }

    /// Class logits at the low-level features' resolution from the ASPP output `x` and the
    /// low-level features.
    pub fn forward_features(&self, x: &Tensor, low_level: &Tensor) -> Result<Tensor> {
        let low = self.bn1.forward(&self.conv1.forward(low_level)?)?.relu()?;
        let x = resize_bilinear_aligned(x, spatial_size("Decoder", &low)?)?;
        let x = Tensor::cat(&[&x, &low], 1)?;
        self.last_conv.forward(&x)
    }
}

impl Module for Decoder {
    fn type_name(&self) -> &'static str {
        "Decoder"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        Err(Error::invalid(
            "Decoder",
            format!(
                "needs the ASPP output and the low-level features: call forward_features \
                 (input {})",
                input.shape()
            ),
        ))
    }

    field_children!(conv1, bn1, last_conv);

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// DeepLabv3+ (state-dict keys `backbone.*`, `aspp.*`, `decoder.*`).
pub struct DeepLabV3Plus {
    /// ResNet at output stride 16.
    pub backbone: ResNet,
    /// ASPP on the layer4 output.
    pub aspp: Aspp,
    /// Decoder on the ASPP output and the layer1 output.
    pub decoder: Decoder,
}

impl DeepLabV3Plus {
    /// The full-width network: ResNet-`depth` (50 or 101), ASPP 2048 → 256 at dilations
    /// 6/12/18, decoder 256 → 48, 304 → 256 → `num_classes`.
    pub fn new(depth: usize, num_classes: usize) -> Result<Self> {
        Ok(DeepLabV3Plus {
            backbone: ResNet::new(&ResNetConfig::deeplab_os16(depth)?)?,
            aspp: Aspp::new(2048, 256, [6, 12, 18])?,
            decoder: Decoder::new(256, 48, 256, 256, num_classes)?,
        })
    }
}

impl Module for DeepLabV3Plus {
    fn type_name(&self) -> &'static str {
        "DeepLab"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let size = spatial_size("DeepLab", input)?;
        let [low_level, _, _, high_level] = self.backbone.forward_stages(input)?;
        let x = self.aspp.forward(&high_level)?;
        let x = self.decoder.forward_features(&x, &low_level)?;
        resize_bilinear_aligned(&x, size)
    }

    field_children!(backbone, aspp, decoder);

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl SegNet for DeepLabV3Plus {}

/// Builds DeepLabv3+ with fresh weights (`config.backbone_depth` 50 or 101).
pub fn build(config: &ModelConfig) -> Result<Box<dyn SegNet>> {
    Ok(Box::new(DeepLabV3Plus::new(
        config.backbone_depth,
        config.num_classes,
    )?))
}
