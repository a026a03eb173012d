//! U-Net as milesial/Pytorch-UNet (`unet_model.py`, `unet_parts.py`) with `bilinear = False`
//! (see `../shared/spec/networks.md`).
//!
//! `inc` DoubleConv(3, 64) → `down1..down4` (2×2 max pool + DoubleConv: 128, 256, 512, 1024) →
//! `up1..up4` (2×2 s2 transposed conv halving the channels, zero-padded to the skip's size,
//! `cat[skip, up]`, DoubleConv) → `outc` 1×1 conv. Any input size works: each up block pads its
//! upsampled map to the skip connection's size.

use super::mobilenetv3::{conv_bn_act, Block};
use super::{ModelConfig, SegNet};
use crate::error::{Error, Result};
use crate::nn::ConvOptions;
use crate::nn::{BatchNorm2d, Conv2d, ConvTranspose2d, MaxPool2d, Module, Sequential};
use crate::ops::activation::Activation;
use crate::ops::conv::ConvTranspose2dParams;
use crate::ops::pool::MaxPool2dParams;
use crate::tensor::Tensor;
use std::any::Any;

/// `DoubleConv(in, out)`: part `double_conv` = Sequential(3×3 conv (no bias), BN, ReLU, 3×3 conv
/// (no bias), BN, ReLU).
pub fn double_conv(in_channels: usize, out_channels: usize) -> Result<Block> {
    let conv = |i: usize, o: usize| Conv2d::new(i, o, 3, ConvOptions::new().padding(1).no_bias());
    let relu = Some(Activation::Relu);
    let mut layers = conv_bn_act(
        conv(in_channels, out_channels)?,
        BatchNorm2d::new(out_channels)?,
        relu,
    );
    layers.extend(conv_bn_act(
        conv(out_channels, out_channels)?,
        BatchNorm2d::new(out_channels)?,
        relu,
    ));
    Ok(Block::sequential("DoubleConv").with("double_conv", Sequential::new(layers)))
}

/// `Down(in, out)`: part `maxpool_conv` = Sequential(2×2 max pool, DoubleConv).
pub fn down(in_channels: usize, out_channels: usize) -> Result<Block> {
    let layers: Vec<Box<dyn Module>> = vec![
        Box::new(MaxPool2d(MaxPool2dParams::new(2))),
        Box::new(double_conv(in_channels, out_channels)?),
    ];
    Ok(Block::sequential("Down").with("maxpool_conv", Sequential::new(layers)))
}

/// `Up(in, out, bilinear=False)`: parts `up` (2×2 s2 transposed conv in → in/2, with bias) and
/// `conv` (DoubleConv(in, out)). Its forward takes the skip connection too
/// ([`Up::forward_with_skip`]).
pub struct Up {
    parts: Block,
}

impl Up {
    /// An up block with PyTorch's default initialisation.
    pub fn new(in_channels: usize, out_channels: usize) -> Result<Self> {
        let params = ConvTranspose2dParams::new(2, 0, 0, 1, 1);
        let up = ConvTranspose2d::new(in_channels, in_channels / 2, 2, params, true)?;
        let parts = Block::new("Up", |_, x| {
            Err(Error::invalid(
                "Up",
                format!(
                    "needs the skip connection too (input {}): call forward_with_skip",
                    x.shape()
                ),
            ))
        });
        Ok(Up {
            parts: parts
                .with("up", up)
                .with("conv", double_conv(in_channels, out_channels)?),
        })
    }

    /// `conv(cat[skip, pad(up(input))])`, padding as PyTorch's `F.pad(x, [dx/2, dx − dx/2,
    /// dy/2, dy − dy/2])` with `dx`, `dy` the width and height the skip has in excess.
    pub fn forward_with_skip(&self, input: &Tensor, skip: &Tensor) -> Result<Tensor> {
        let upsampled = self.parts.apply("up", input)?;
        skip.expect_rank("Up", "skip", 4)?;
        let (up_dims, skip_dims) = (upsampled.dims(), skip.dims());
        let excess = |axis: usize| skip_dims[axis].checked_sub(up_dims[axis]);
        let (Some(dy), Some(dx)) = (excess(2), excess(3)) else {
            return Err(Error::shape(
                "Up",
                format!(
                    "the upsampled map {} is larger than the skip connection {}",
                    upsampled.shape(),
                    skip.shape()
                ),
            ));
        };
        let padded = if dx == 0 && dy == 0 {
            upsampled
        } else {
            upsampled.pad(&[dx / 2, dx - dx / 2, dy / 2, dy - dy / 2], 0.0)?
        };
        let joined = Tensor::cat(&[skip, &padded], 1)?;
        self.parts.apply("conv", &joined)
    }
}

impl Module for Up {
    fn type_name(&self) -> &'static str {
        "Up"
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

/// U-Net (`UNet(n_channels=3, n_classes, bilinear=False)`).
pub struct Unet {
    /// `inc`, `down1`..`down4`: the contracting path.
    pub contracting: [Block; 5],
    /// `up1`..`up4`: the expanding path.
    pub expanding: [Up; 4],
    /// `outc`: part `conv`, 1×1 64 → classes with bias.
    pub outc: Block,
}

/// Child names of the contracting and expanding paths, in state-dict order.
const CONTRACTING_NAMES: [&str; 5] = ["inc", "down1", "down2", "down3", "down4"];
const EXPANDING_NAMES: [&str; 4] = ["up1", "up2", "up3", "up4"];

impl Unet {
    /// U-Net on RGB input with PyTorch's default initialisation.
    pub fn new(num_classes: usize) -> Result<Self> {
        Ok(Unet {
            contracting: [
                double_conv(3, 64)?,
                down(64, 128)?,
                down(128, 256)?,
                down(256, 512)?,
                down(512, 1024)?,
            ],
            expanding: [
                Up::new(1024, 512)?,
                Up::new(512, 256)?,
                Up::new(256, 128)?,
                Up::new(128, 64)?,
            ],
            outc: Block::sequential("OutConv")
                .with("conv", Conv2d::new(64, num_classes, 1, ConvOptions::new())?),
        })
    }
}

impl Module for Unet {
    fn type_name(&self) -> &'static str {
        "UNet"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        // skips[i] is the output of contracting[i]; the deepest one feeds up1.
        let mut skips = Vec::with_capacity(self.contracting.len());
        let mut x = input.clone();
        for block in &self.contracting {
            x = block.forward(&x)?;
            skips.push(x.clone());
        }
        for (up, skip) in self.expanding.iter().zip(skips.iter().rev().skip(1)) {
            x = up.forward_with_skip(&x, skip)?;
        }
        self.outc.forward(&x)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        let contracting = CONTRACTING_NAMES
            .iter()
            .zip(&self.contracting)
            .map(|(n, m)| (n.to_string(), m as &dyn Module));
        let expanding = EXPANDING_NAMES
            .iter()
            .zip(&self.expanding)
            .map(|(n, m)| (n.to_string(), m as &dyn Module));
        contracting
            .chain(expanding)
            .chain([("outc".to_string(), &self.outc as &dyn Module)])
            .collect()
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        if name == "outc" {
            return Some(&mut self.outc);
        }
        if let Some(i) = CONTRACTING_NAMES.iter().position(|n| *n == name) {
            return Some(&mut self.contracting[i]);
        }
        let i = EXPANDING_NAMES.iter().position(|n| *n == name)?;
        Some(&mut self.expanding[i])
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl SegNet for Unet {}

/// Builds U-Net with fresh weights.
pub fn build(config: &ModelConfig) -> Result<Box<dyn SegNet>> {
    Ok(Box::new(Unet::new(config.num_classes)?))
}
