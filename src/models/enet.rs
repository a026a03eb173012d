//! ENet (Paszke et al., 2016), weight-compatible with davidtvs/PyTorch-ENet `models/enet.py`
//! (`../shared/spec/networks.md`): the same module names, so the state dict has exactly the
//! keys of `tests/manifests/enet.tsv`, and the same forward math.
//!
//! Output stride 8. Every convolution is bias-free. The encoder (initial block, stages 1–3)
//! uses PReLU with one shared slope per activation module; the decoder (stages 4–5) uses ReLU.
//! Each bottleneck is a main branch plus an extension branch `1×1 → conv → 1×1 → Dropout2d`,
//! added and passed through the block's output activation. The downsampling bottlenecks keep
//! their max-pool indices, which the upsampling bottlenecks use to unpool (last in, first out:
//! `upsample4_0` unpools with the indices of `downsample2_0`, `upsample5_0` with those of
//! `downsample1_0`). Any input size works: odd sizes are restored exactly by the unpooling and
//! transposed convolutions, which are given the size of the map they invert.

#[path = "enet_blocks.rs"]
mod blocks;

pub use blocks::{
    BlockActivation, DownsamplingBottleneck, InitialBlock, RegularBottleneck, RegularKind,
    UpsamplingBottleneck,
};

use super::{ModelConfig, SegNet};
use crate::error::{Error, Result};
use crate::nn::{ConvTranspose2d, Module};
use crate::ops::conv::ConvTranspose2dParams;
use crate::tensor::Tensor;
use std::any::Any;

/// Dropout2d probability of stage 1 (`downsample1_0`, `regular1_*`).
const STAGE1_DROPOUT: f32 = 0.01;
/// Dropout2d probability of every later bottleneck.
const LATER_DROPOUT: f32 = 0.1;

/// One named stage of the network, in forward order.
pub enum EnetBlock {
    /// `initial_block`.
    Initial(InitialBlock),
    /// `downsample*_0`: pushes its pooling indices for the matching upsampling block.
    Down(DownsamplingBottleneck),
    /// Regular, dilated and asymmetric bottlenecks.
    Regular(RegularBottleneck),
    /// `upsample*_0`: pops the indices of the most recent downsampling block.
    Up(UpsamplingBottleneck),
}

impl EnetBlock {
    fn module(&self) -> &dyn Module {
        match self {
            EnetBlock::Initial(b) => b,
            EnetBlock::Down(b) => b,
            EnetBlock::Regular(b) => b,
            EnetBlock::Up(b) => b,
        }
    }

    fn module_mut(&mut self) -> &mut dyn Module {
        match self {
            EnetBlock::Initial(b) => b,
            EnetBlock::Down(b) => b,
            EnetBlock::Regular(b) => b,
            EnetBlock::Up(b) => b,
        }
    }
}

/// What a downsampling block leaves for its upsampling twin.
struct Skip {
    /// Max-pool indices of the downsampling block's main branch.
    indices: Tensor,
    /// `[H, W]` of the downsampling block's input (the unpooled size).
    size: [usize; 2],
}

/// The network: the blocks in forward (and state-dict) order, then `transposed_conv`.
pub struct Enet {
    /// `(name, block)` from `initial_block` to `regular5_1`.
    pub blocks: Vec<(String, EnetBlock)>,
    /// `transposed_conv`: 3×3, stride 2, padding 1, 16 → classes, output size = input size.
    pub transposed_conv: ConvTranspose2d,
}

impl Enet {
    /// ENet with `num_classes` outputs and PyTorch's default initialisation.
    pub fn new(num_classes: usize) -> Result<Self> {
        if num_classes == 0 {
            return Err(Error::invalid("ENet", "num_classes must be at least 1"));
        }
        use BlockActivation::{PRelu, Relu};
        use RegularKind::{Asymmetric, Dilated, Regular};
        let mut blocks = vec![
            (
                "initial_block".to_string(),
                EnetBlock::Initial(InitialBlock::new(3, 16, PRelu)?),
            ),
            down("downsample1_0", 16, 64, STAGE1_DROPOUT)?,
        ];
        for i in 1..=4 {
            blocks.push(regular(
                &format!("regular1_{i}"),
                64,
                Regular,
                STAGE1_DROPOUT,
                PRelu,
            )?);
        }
        blocks.push(down("downsample2_0", 64, 128, LATER_DROPOUT)?);
        // Stages 2 and 3 share one layout; stage 2 numbers from 1, stage 3 from 0.
        let layout = [
            ("regular", Regular),
            ("dilated", Dilated(2)),
            ("asymmetric", Asymmetric),
            ("dilated", Dilated(4)),
            ("regular", Regular),
            ("dilated", Dilated(8)),
            ("asymmetric", Asymmetric),
            ("dilated", Dilated(16)),
        ];
        for (stage, first) in [(2, 1), (3, 0)] {
            for (i, &(kind_name, kind)) in layout.iter().enumerate() {
                let name = format!("{kind_name}{stage}_{}", first + i);
                blocks.push(regular(&name, 128, kind, LATER_DROPOUT, PRelu)?);
            }
        }
        blocks.push(up("upsample4_0", 128, 64)?);
        for i in 1..=2 {
            blocks.push(regular(
                &format!("regular4_{i}"),
                64,
                Regular,
                LATER_DROPOUT,
                Relu,
            )?);
        }
        blocks.push(up("upsample5_0", 64, 16)?);
        blocks.push(regular("regular5_1", 16, Regular, LATER_DROPOUT, Relu)?);
        let transposed_conv = ConvTranspose2d::new(
            16,
            num_classes,
            3,
            ConvTranspose2dParams::new(2, 1, 0, 1, 1),
            false,
        )?;
        Ok(Enet {
            blocks,
            transposed_conv,
        })
    }

    fn block_mut(&mut self, name: &str) -> Option<&mut EnetBlock> {
        self.blocks
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b)
    }
}

fn down(name: &str, cin: usize, cout: usize, p: f32) -> Result<(String, EnetBlock)> {
    let block = DownsamplingBottleneck::new(cin, cout, p, BlockActivation::PRelu)?;
    Ok((name.to_string(), EnetBlock::Down(block)))
}

fn regular(
    name: &str,
    channels: usize,
    kind: RegularKind,
    p: f32,
    activation: BlockActivation,
) -> Result<(String, EnetBlock)> {
    let block = RegularBottleneck::new(channels, kind, p, activation)?;
    Ok((name.to_string(), EnetBlock::Regular(block)))
}

fn up(name: &str, cin: usize, cout: usize) -> Result<(String, EnetBlock)> {
    let block = UpsamplingBottleneck::new(cin, cout, LATER_DROPOUT, BlockActivation::Relu)?;
    Ok((name.to_string(), EnetBlock::Up(block)))
}

/// `[H, W]` of an NCHW tensor (checked by the caller's first op).
fn spatial_size(op: &'static str, x: &Tensor) -> Result<[usize; 2]> {
    match x.dims() {
        [_, _, h, w] => Ok([*h, *w]),
        _ => Err(Error::shape(
            op,
            format!("input must be [B, C, H, W], got {}", x.shape()),
        )),
    }
}

impl Module for Enet {
    fn type_name(&self) -> &'static str {
        "ENet"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let input_size = spatial_size("ENet", input)?;
        if input.dims()[1] != 3 {
            return Err(Error::shape(
                "ENet",
                format!("input must have 3 channels, got {}", input.shape()),
            ));
        }
        let mut skips: Vec<Skip> = Vec::new();
        let mut x = input.clone();
        for (name, block) in &self.blocks {
            x = match block {
                EnetBlock::Initial(b) => b.forward(&x)?,
                EnetBlock::Regular(b) => b.forward(&x)?,
                EnetBlock::Down(b) => {
                    let size = spatial_size("ENet", &x)?;
                    let (out, indices) = b.forward_with_indices(&x)?;
                    skips.push(Skip { indices, size });
                    out
                }
                EnetBlock::Up(b) => {
                    let skip = skips.pop().ok_or_else(|| {
                        Error::invalid(
                            "ENet",
                            format!("`{name}` has no downsampling block to undo"),
                        )
                    })?;
                    b.forward_with_indices(&x, &skip.indices, skip.size)?
                }
            };
        }
        self.transposed_conv.forward_with_size(&x, Some(input_size))
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut out: Vec<(String, &dyn Module)> = self
            .blocks
            .iter()
            .map(|(name, block)| (name.clone(), block.module()))
            .collect();
        out.push(("transposed_conv".to_string(), &self.transposed_conv));
        out
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        if name == "transposed_conv" {
            return Some(&mut self.transposed_conv);
        }
        self.block_mut(name).map(EnetBlock::module_mut)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl SegNet for Enet {}

/// Builds ENet with fresh weights.
pub fn build(config: &ModelConfig) -> Result<Box<dyn SegNet>> {
    Ok(Box::new(Enet::new(config.num_classes)?))
}
