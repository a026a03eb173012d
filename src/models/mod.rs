//! The six segmentation networks, weight-compatible with their PyTorch originals
//! (`../shared/spec/networks.md`), their registry and MoE placement by path.
//!
//! Every network maps `[B, 3, H, W]` ImageNet-normalised RGB to logits `[B, C, H, W]`; its state
//! dict has exactly the keys, shapes and order of `../shared/manifests/<net>.tsv`.

pub mod complexity;
pub mod deeplabv3plus;
pub mod dynamic;
pub mod enet;
pub mod erfnet;
pub mod lraspp;
pub mod mobilenetv3;
pub mod placement;
pub mod pspnet;
pub mod resnet;
pub mod unet;
pub mod vit;
pub mod vit_blocks;
pub mod vit_seg;

use crate::error::{Error, Result};
use crate::nn::Module;
use crate::tensor::Tensor;
use std::fmt;
use std::str::FromStr;

pub use complexity::{complexity, Complexity};
pub use placement::{load_imagenet_backbone, place_moe, MoePlacement};

/// An auxiliary output used only by the training loss (PSPNet's `aux` head).
pub struct AuxOutput {
    /// Name of the head (`aux`).
    pub name: &'static str,
    /// Logits `[B, C, H, W]` at the input's resolution.
    pub logits: Tensor,
    /// Weight of its cross-entropy in the training loss (0.4 for PSPNet).
    pub weight: f32,
}

/// What a segmentation network's forward produces.
pub struct SegOutput {
    /// Logits `[B, C, H, W]` at the input's resolution.
    pub logits: Tensor,
    /// Auxiliary heads, only in training mode; empty otherwise.
    pub aux: Vec<AuxOutput>,
}

/// A segmentation network: a [`Module`] whose `forward` returns the logits, plus the auxiliary
/// outputs some networks use in training.
pub trait SegNet: Module {
    /// Logits and, in training mode, the auxiliary outputs.
    fn forward_seg(&self, input: &Tensor) -> Result<SegOutput> {
        Ok(SegOutput {
            logits: self.forward(input)?,
            aux: Vec::new(),
        })
    }
}

/// The networks the binary knows, by their command-line names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelName {
    /// ENet (davidtvs/PyTorch-ENet).
    Enet,
    /// ERFNet (Eromera/erfnet_pytorch).
    Erfnet,
    /// U-Net (milesial/Pytorch-UNet, bilinear = False).
    Unet,
    /// LR-ASPP on MobileNetV3-Large (torchvision).
    Lraspp,
    /// DeepLabv3+ on ResNet-50/101, output stride 16 (jfzhang95/pytorch-deeplab-xception).
    Deeplabv3plus,
    /// PSPNet on dilated ResNet-50 (hszhao/semseg).
    Pspnet,
}

impl ModelName {
    /// Every network, in the order the spec lists them.
    pub const ALL: [ModelName; 6] = [
        ModelName::Enet,
        ModelName::Erfnet,
        ModelName::Unet,
        ModelName::Lraspp,
        ModelName::Deeplabv3plus,
        ModelName::Pspnet,
    ];

    /// The command-line name (`enet`, `deeplabv3plus`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ModelName::Enet => "enet",
            ModelName::Erfnet => "erfnet",
            ModelName::Unet => "unet",
            ModelName::Lraspp => "lraspp",
            ModelName::Deeplabv3plus => "deeplabv3plus",
            ModelName::Pspnet => "pspnet",
        }
    }

    /// The default PatchConvMoE placement of the spec (E=8, k=2, g=3, 2conv_gap, entropy).
    pub fn default_moe_path(self) -> &'static str {
        match self {
            ModelName::Enet => "regular5_1.ext_conv2.0",
            ModelName::Erfnet => "decoder.layers.5.conv1x3_2",
            ModelName::Unet => "up4.conv.double_conv.3",
            ModelName::Lraspp => "classifier.high_classifier",
            ModelName::Deeplabv3plus => "decoder.last_conv.4",
            ModelName::Pspnet => "cls.4",
        }
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ModelName {
    type Err = Error;
    fn from_str(name: &str) -> Result<Self> {
        ModelName::ALL
            .into_iter()
            .find(|m| m.as_str() == name.to_ascii_lowercase())
            .ok_or_else(|| {
                let known: Vec<&str> = ModelName::ALL.iter().map(|m| m.as_str()).collect();
                Error::invalid(
                    "model",
                    format!("unknown network `{name}`; known: {}", known.join(", ")),
                )
            })
    }
}

/// Options every network takes.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Number of output classes (19 for Cityscapes / BDD100K).
    pub num_classes: usize,
    /// ResNet depth for DeepLabv3+ and PSPNet (50 or 101). Ignored by the others.
    pub backbone_depth: usize,
    /// PSPNet's backbone dilation rule (hszhao's by default). Ignored by the others.
    pub pspnet_dilation: pspnet::PspDilation,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            num_classes: 19,
            backbone_depth: 50,
            pspnet_dilation: pspnet::PspDilation::Hszhao,
        }
    }
}

/// Builds a network with freshly initialised weights (PyTorch's default initialisation of the
/// original implementation).
pub fn build(name: ModelName, config: &ModelConfig) -> Result<Box<dyn SegNet>> {
    if config.num_classes == 0 {
        return Err(Error::invalid("model", "num_classes must be at least 1"));
    }
    match name {
        ModelName::Enet => enet::build(config),
        ModelName::Erfnet => erfnet::build(config),
        ModelName::Unet => unet::build(config),
        ModelName::Lraspp => lraspp::build(config),
        ModelName::Deeplabv3plus => deeplabv3plus::build(config),
        ModelName::Pspnet => pspnet::build(config),
    }
}

/// The parts of a training loss (the parts are for logs; `total` is what `backward` runs on).
pub struct TrainingLoss {
    /// `main + aux + balance`.
    pub total: Tensor,
    /// Cross-entropy of the main logits.
    pub main: Tensor,
    /// Σ weight·cross-entropy of the auxiliary heads (`None` without any).
    pub aux: Option<Tensor>,
    /// Σ alpha·L_balance of every PatchConvMoE (`None` without any).
    pub balance: Option<Tensor>,
}

/// The training loss of one forward: pixel-wise cross-entropy of the logits against `target`
/// `[B, H, W]` (ignore index 255, mean, optional class weights), plus each auxiliary head's
/// cross-entropy times its weight, plus the weighted balancing losses of every PatchConvMoE in
/// `net`.
pub fn training_loss(
    net: &dyn SegNet,
    output: &SegOutput,
    target: &Tensor,
    class_weights: Option<&Tensor>,
) -> Result<TrainingLoss> {
    let options = crate::ops::loss::CrossEntropyOptions {
        weight: class_weights,
        ..Default::default()
    };
    let main = output.logits.cross_entropy(target, options)?;
    let mut aux: Option<Tensor> = None;
    for head in &output.aux {
        let loss = head
            .logits
            .cross_entropy(target, options)?
            .mul_scalar(head.weight)?;
        aux = Some(match aux {
            Some(sum) => sum.add(&loss)?,
            None => loss,
        });
    }
    let balance = crate::moe::balance_loss(net)?;
    let mut total = main.clone();
    for part in aux.iter().chain(balance.iter()) {
        total = total.add(part)?;
    }
    Ok(TrainingLoss {
        total,
        main,
        aux,
        balance,
    })
}
