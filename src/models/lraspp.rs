//! LR-ASPP on MobileNetV3-Large as torchvision's `lraspp_mobilenet_v3_large` (see
//! `../shared/spec/networks.md`): the backbone's last stage dilated (output stride 16),
//! low-level features from block 4 (40 channels, 1/8), high-level from block 16 (960, 1/16).
//!
//! `classifier`: `cbr` (1×1 960→128, BN, ReLU) × `scale` (global average pool, 1×1 960→128,
//! sigmoid), bilinearly resized to the low-level size, then `low_classifier(low) +
//! high_classifier(·)`, bilinearly resized to the input (align_corners False). Any input size
//! works.

use super::mobilenetv3::{conv_bn_act, large_block_configs, mobilenet_v3_large_features, Block};
use super::{ModelConfig, SegNet};
use crate::error::{Error, Result};
use crate::nn::ConvOptions;
use crate::nn::{ActivationLayer, AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Module, Sequential};
use crate::ops::activation::Activation;
use crate::ops::interpolate::{InterpolateMode, Resize};
use crate::tensor::Tensor;
use std::any::Any;

/// Backbone block whose output is the low-level feature map (40 channels at 1/8).
pub const LOW_LEVEL_BLOCK: usize = 4;
/// Backbone block whose output is the high-level feature map (960 channels at 1/16).
pub const HIGH_LEVEL_BLOCK: usize = 16;
/// Channels of the head's intermediate maps.
const INTER_CHANNELS: usize = 128;

/// Bilinear resize with align_corners False to `[height, width]`.
fn resize_bilinear(x: &Tensor, size: [usize; 2]) -> Result<Tensor> {
    x.interpolate(
        Resize::Size(size),
        InterpolateMode::Bilinear {
            align_corners: false,
        },
    )
}

/// The `[height, width]` of an NCHW tensor.
fn spatial_size(op: &'static str, name: &str, x: &Tensor) -> Result<[usize; 2]> {
    x.expect_rank(op, name, 4)?;
    Ok([x.dims()[2], x.dims()[3]])
}

/// torchvision's `LRASPPHead(low_channels, high_channels, num_classes, inter_channels)`; parts
/// `cbr`, `scale`, `low_classifier`, `high_classifier`. Its forward takes both feature maps
/// ([`LrasppHead::forward_features`]).
pub struct LrasppHead {
    parts: Block,
}

impl LrasppHead {
    /// A head with PyTorch's default initialisation (BN eps 1e-5).
    pub fn new(
        low_channels: usize,
        high_channels: usize,
        num_classes: usize,
        inter_channels: usize,
    ) -> Result<Self> {
        let cbr = conv_bn_act(
            Conv2d::new(
                high_channels,
                inter_channels,
                1,
                ConvOptions::new().no_bias(),
            )?,
            BatchNorm2d::new(inter_channels)?,
            Some(Activation::Relu),
        );
        let scale = Sequential::default()
            .push(AdaptiveAvgPool2d([1, 1]))
            .push(Conv2d::new(
                high_channels,
                inter_channels,
                1,
                ConvOptions::new().no_bias(),
            )?)
            .push(ActivationLayer::sigmoid());
        let parts = Block::new("LRASPPHead", |_, x| {
            Err(Error::invalid(
                "LRASPPHead",
                format!(
                    "needs the low- and high-level features (input {}): call forward_features",
                    x.shape()
                ),
            ))
        });
        Ok(LrasppHead {
            parts: parts
                .with("cbr", Sequential::new(cbr))
                .with("scale", scale)
                .with(
                    "low_classifier",
                    Conv2d::new(low_channels, num_classes, 1, ConvOptions::new())?,
                )
                .with(
                    "high_classifier",
                    Conv2d::new(inter_channels, num_classes, 1, ConvOptions::new())?,
                ),
        })
    }

    /// `low_classifier(low) + high_classifier(resize(cbr(high) · scale(high), low size))`.
    pub fn forward_features(&self, low: &Tensor, high: &Tensor) -> Result<Tensor> {
        let low_size = spatial_size("LRASPPHead", "low", low)?;
        let x = self.parts.apply("cbr", high)?;
        let s = self.parts.apply("scale", high)?;
        let x = resize_bilinear(&x.mul(&s)?, low_size)?;
        self.parts
            .apply("low_classifier", low)?
            .add(&self.parts.apply("high_classifier", &x)?)
    }
}

impl Module for LrasppHead {
    fn type_name(&self) -> &'static str {
        "LRASPPHead"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        self.parts.forward(input)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.parts.children()
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        self.parts.child_mut(name)
    }

    fn replace_child(&mut self, name: &str, module: Box<dyn Module>) -> Result<Box<dyn Module>> {
        self.parts.replace_child(name, module)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// LR-ASPP MobileNetV3-Large: children `backbone` (torchvision's `features` keys) and
/// `classifier`.
pub struct Lraspp {
    /// `mobilenet_v3_large(dilated=True).features` (all 17 blocks).
    pub backbone: Sequential,
    /// The LR-ASPP head.
    pub classifier: LrasppHead,
}

impl Lraspp {
    /// LR-ASPP with torchvision's initialisation (no pretrained weights).
    pub fn new(num_classes: usize) -> Result<Self> {
        let backbone = mobilenet_v3_large_features(true)?;
        // Block i ≥ 1 of the features is row i − 1 of the block table; the last block is the
        // 1×1 conv to 6× the last width.
        let configs = large_block_configs(true);
        let low_channels = configs[LOW_LEVEL_BLOCK - 1].out_channels;
        let high_channels = 6 * configs[configs.len() - 1].out_channels;
        Ok(Lraspp {
            backbone,
            classifier: LrasppHead::new(low_channels, high_channels, num_classes, INTER_CHANNELS)?,
        })
    }

    /// The backbone's outputs of blocks [`LOW_LEVEL_BLOCK`] and [`HIGH_LEVEL_BLOCK`].
    pub fn features(&self, input: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut x = input.clone();
        let mut low = None;
        for (index, layer) in self.backbone.layers.iter().enumerate() {
            x = layer.forward(&x)?;
            if index == LOW_LEVEL_BLOCK {
                low = Some(x.clone());
            }
            if index == HIGH_LEVEL_BLOCK {
                break;
            }
        }
        let low = low.ok_or_else(|| {
            Error::invalid(
                "LRASPP",
                format!(
                    "the backbone has {} blocks, fewer than {}",
                    self.backbone.layers.len(),
                    LOW_LEVEL_BLOCK + 1
                ),
            )
        })?;
        Ok((low, x))
    }
}

impl Module for Lraspp {
    fn type_name(&self) -> &'static str {
        "LRASPP"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let size = spatial_size("LRASPP", "input", input)?;
        let (low, high) = self.features(input)?;
        let out = self.classifier.forward_features(&low, &high)?;
        resize_bilinear(&out, size)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("backbone".to_string(), &self.backbone),
            ("classifier".to_string(), &self.classifier),
        ]
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        match name {
            "backbone" => Some(&mut self.backbone),
            "classifier" => Some(&mut self.classifier),
            _ => None,
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl SegNet for Lraspp {}

/// Builds LR-ASPP MobileNetV3-Large with fresh weights.
pub fn build(config: &ModelConfig) -> Result<Box<dyn SegNet>> {
    Ok(Box::new(Lraspp::new(config.num_classes)?))
}
