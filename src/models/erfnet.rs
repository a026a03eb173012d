//! ERFNet as Eromera/erfnet_pytorch `train/erfnet.py` (see `../shared/spec/networks.md`):
//! output stride 8, factorised 3×1 / 1×3 residual blocks, BN eps 1e-3, convs with bias.
//!
//! `encoder` = `initial_block` DownsamplerBlock(3, 16), `layers` (DownsamplerBlock(16, 64),
//! 5× non_bottleneck_1d(64), DownsamplerBlock(64, 128), 8× non_bottleneck_1d(128) dilated
//! 2, 4, 8, 16, 2, 4, 8, 16), `output_conv` (1×1 128 → classes: not in the full network's
//! forward, only in [`Erfnet::forward_encoder_only`]); `decoder` = `layers` (UpsamplerBlock(128, 64), 2× nb1d(64), UpsamplerBlock(64, 16),
//! 2× nb1d(16)), `output_conv` (2×2 s2 transposed conv). Inputs must have a height and width
//! divisible by 8 (each DownsamplerBlock concatenates a stride-2 conv with a 2×2 max pool).

use super::mobilenetv3::Block;
use super::{ModelConfig, SegNet};
use crate::error::{Error, Result};
use crate::nn::ConvOptions;
use crate::nn::{BatchNorm2d, Conv2d, ConvTranspose2d, Dropout2d, MaxPool2d, Module, Sequential};
use crate::ops::conv::{Conv2dParams, ConvTranspose2dParams};
use crate::ops::pool::MaxPool2dParams;
use crate::tensor::Tensor;
use std::any::Any;

/// ERFNet's BatchNorm: eps 1e-3, PyTorch's default momentum 0.1.
fn erfnet_bn(channels: usize) -> Result<BatchNorm2d> {
    BatchNorm2d::with_options(channels, 1e-3, Some(0.1), true, true)
}

/// `DownsamplerBlock(in, out)`: `relu(bn(cat[conv3×3 s2 (in→out−in), maxpool2×2](x)))`; parts
/// `conv`, `pool`, `bn`. Height and width must be even.
pub fn downsampler_block(in_channels: usize, out_channels: usize) -> Result<Block> {
    if out_channels <= in_channels {
        return Err(Error::invalid(
            "DownsamplerBlock",
            format!("out channels {out_channels} must exceed in channels {in_channels}"),
        ));
    }
    let conv = Conv2d::new(
        in_channels,
        out_channels - in_channels,
        3,
        ConvOptions::new().stride(2).padding(1),
    )?;
    let block = Block::new("DownsamplerBlock", |b, x| {
        x.expect_rank("DownsamplerBlock", "input", 4)?;
        let [height, width] = [x.dims()[2], x.dims()[3]];
        if height % 2 != 0 || width % 2 != 0 {
            return Err(Error::shape(
                "DownsamplerBlock",
                format!(
                    "input {} has an odd height or width: ERFNet needs a height and width \
                     divisible by 8",
                    x.shape()
                ),
            ));
        }
        let joined = Tensor::cat(&[&b.apply("conv", x)?, &b.apply("pool", x)?], 1)?;
        b.apply("bn", &joined)?.relu()
    });
    Ok(block
        .with("conv", conv)
        .with("pool", MaxPool2d(MaxPool2dParams::new(2)))
        .with("bn", erfnet_bn(out_channels)?))
}

/// `non_bottleneck_1d(c, p, d)`: conv3x1_1 → ReLU → conv1x3_1 → bn1 → ReLU → conv3x1_2
/// (dilation (d, 1)) → ReLU → conv1x3_2 (dilation (1, d)) → bn2 → Dropout2d(p) → + input →
/// ReLU.
pub fn non_bottleneck_1d(channels: usize, dropout: f32, dilation: usize) -> Result<Block> {
    // A (3, 1) or (1, 3) conv with "same" padding along its long axis.
    let factorised = |vertical: bool, d: usize| -> Result<Conv2d> {
        let (kernel, params) = if vertical {
            let params = Conv2dParams {
                stride: [1, 1],
                padding: [d, d, 0, 0],
                dilation: [d, 1],
                groups: 1,
            };
            ([3, 1], params)
        } else {
            let params = Conv2dParams {
                stride: [1, 1],
                padding: [0, 0, d, d],
                dilation: [1, d],
                groups: 1,
            };
            ([1, 3], params)
        };
        Conv2d::with_params(channels, channels, kernel, params, true)
    };
    let block = Block::new("non_bottleneck_1d", |b, x| {
        let y = b.apply("conv3x1_1", x)?.relu()?;
        let y = b.apply("conv1x3_1", &y)?;
        let y = b.apply("bn1", &y)?.relu()?;
        let y = b.apply("conv3x1_2", &y)?.relu()?;
        let y = b.apply("conv1x3_2", &y)?;
        let y = b.apply("bn2", &y)?;
        // Dropout2d with p = 0 is the identity, as the original's `if p != 0` skip.
        let y = b.apply("dropout", &y)?;
        y.add(x)?.relu()
    });
    Ok(block
        .with("conv3x1_1", factorised(true, 1)?)
        .with("conv1x3_1", factorised(false, 1)?)
        .with("bn1", erfnet_bn(channels)?)
        .with("conv3x1_2", factorised(true, dilation)?)
        .with("conv1x3_2", factorised(false, dilation)?)
        .with("bn2", erfnet_bn(channels)?)
        .with("dropout", Dropout2d::new(dropout)?))
}

/// `UpsamplerBlock(in, out)`: `relu(bn(convT3×3 s2 p1 op1(x)))`, doubling height and width;
/// parts `conv`, `bn`.
pub fn upsampler_block(in_channels: usize, out_channels: usize) -> Result<Block> {
    let params = ConvTranspose2dParams::new(2, 1, 1, 1, 1);
    let conv = ConvTranspose2d::new(in_channels, out_channels, 3, params, true)?;
    let block = Block::new("UpsamplerBlock", |b, x| {
        let y = b.apply("conv", x)?;
        b.apply("bn", &y)?.relu()
    });
    Ok(block
        .with("conv", conv)
        .with("bn", erfnet_bn(out_channels)?))
}

/// ERFNet's encoder; its forward gives the 128-channel features at 1/8 (`predict=False`), as
/// the full network uses it.
pub fn encoder(num_classes: usize) -> Result<Block> {
    let mut layers: Vec<Box<dyn Module>> = vec![Box::new(downsampler_block(16, 64)?)];
    for _ in 0..5 {
        layers.push(Box::new(non_bottleneck_1d(64, 0.03, 1)?));
    }
    layers.push(Box::new(downsampler_block(64, 128)?));
    for _ in 0..2 {
        for dilation in [2, 4, 8, 16] {
            layers.push(Box::new(non_bottleneck_1d(128, 0.3, dilation)?));
        }
    }
    let block = Block::new("Encoder", |b, x| {
        let y = b.apply("initial_block", x)?;
        b.apply("layers", &y)
    });
    Ok(block
        .with("initial_block", downsampler_block(3, 16)?)
        .with("layers", Sequential::new(layers))
        .with(
            "output_conv",
            Conv2d::new(128, num_classes, 1, ConvOptions::new())?,
        ))
}

/// ERFNet's decoder: 128 channels at 1/8 to `num_classes` logits at full size.
pub fn decoder(num_classes: usize) -> Result<Block> {
    let layers: Vec<Box<dyn Module>> = vec![
        Box::new(upsampler_block(128, 64)?),
        Box::new(non_bottleneck_1d(64, 0.0, 1)?),
        Box::new(non_bottleneck_1d(64, 0.0, 1)?),
        Box::new(upsampler_block(64, 16)?),
        Box::new(non_bottleneck_1d(16, 0.0, 1)?),
        Box::new(non_bottleneck_1d(16, 0.0, 1)?),
    ];
    let output_conv = ConvTranspose2d::new(
        16,
        num_classes,
        2,
        ConvTranspose2dParams::new(2, 0, 0, 1, 1),
        true,
    )?;
    Ok(Block::sequential("Decoder")
        .with("layers", Sequential::new(layers))
        .with("output_conv", output_conv))
}

/// ERFNet (`Net(num_classes)`): children `encoder` and `decoder`.
pub struct Erfnet {
    /// Features at 1/8 (children `initial_block`, `layers`, `output_conv`).
    pub encoder: Block,
    /// Upsampling to logits (children `layers`, `output_conv`).
    pub decoder: Block,
}

impl Erfnet {
    /// ERFNet with PyTorch's default initialisation.
    pub fn new(num_classes: usize) -> Result<Self> {
        Ok(Erfnet {
            encoder: encoder(num_classes)?,
            decoder: decoder(num_classes)?,
        })
    }

    /// The encoder's own logits at 1/8 through `encoder.output_conv` (the original's
    /// `forward(input, only_encode=True)`, used to pre-train the encoder).
    pub fn forward_encoder_only(&self, input: &Tensor) -> Result<Tensor> {
        let features = self.encoder.forward(input)?;
        self.encoder.apply("output_conv", &features)
    }
}

impl Module for Erfnet {
    fn type_name(&self) -> &'static str {
        "ERFNet"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        self.decoder.forward(&self.encoder.forward(input)?)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("encoder".to_string(), &self.encoder),
            ("decoder".to_string(), &self.decoder),
        ]
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        match name {
            "encoder" => Some(&mut self.encoder),
            "decoder" => Some(&mut self.decoder),
            _ => None,
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl SegNet for Erfnet {}

/// Builds ERFNet with fresh weights.
pub fn build(config: &ModelConfig) -> Result<Box<dyn SegNet>> {
    Ok(Box::new(Erfnet::new(config.num_classes)?))
}
