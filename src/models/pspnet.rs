//! PSPNet on a dilated ResNet-50 (output stride 8) after hszhao/semseg (`model/pspnet.py`,
//! checked at commit 4f274c3f): the PPM, `cls` and `aux` heads have hszhao's structure, keys
//! and shapes; the backbone is torchvision's ResNet (7×7 stem, keys `backbone.conv1`, …, so
//! torchvision ImageNet weights load; the spec manifest fixes these keys) where hszhao's has a
//! deep 3×3 stem (`layer0.*`, 128 channels into layer1), so hszhao's own checkpoints do not
//! load. The backbone's dilation rule is [`PspDilation`]: hszhao's by default
//! (`[model] pspnet_dilation`, `--pspnet-dilation`).
//!
//! `backbone` → `ppm` (pyramid pooling at bins 1, 2, 3, 6, each 2048 → 512, resized back and
//! concatenated after the input: 4096 channels) → `cls` (3×3 → 512, BN, ReLU, Dropout2d 0.1,
//! 1×1 → C) → bilinear resize to the input size (`align_corners=True`). In training,
//! [`SegNet::forward_seg`] also returns the `aux` head on layer3 (same shape of head,
//! 1024 → 256 → C), resized to the input size, with loss weight 0.4.

use super::resnet::{field_children, resize_bilinear_aligned, spatial_size, ResNet, ResNetConfig};
use super::{AuxOutput, ModelConfig, SegNet, SegOutput};
use crate::error::{Error, Result};
use crate::nn::ConvOptions;
use crate::nn::{
    ActivationLayer, AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout2d, Module, ModuleList,
    Sequential, TrainingFlag,
};
use crate::tensor::Tensor;
use std::any::Any;

/// Loss weight of the auxiliary head.
pub const AUX_WEIGHT: f32 = 0.4;

/// Which rule dilates PSPNet's backbone (both give output stride 8: layer3 and layer4 at
/// stride 1, their `downsample.0` too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PspDilation {
    /// hszhao/semseg (`model/pspnet.py`): every `conv2` of layer3 dilated 2 and of layer4
    /// dilated 4, first blocks included ([`ResNetConfig::dilated_os8`]). The default.
    #[default]
    Hszhao,
    /// torchvision's `replace_stride_with_dilation=[False, True, True]`: the first block of
    /// layer3 keeps dilation 1 and that of layer4 dilation 2, the others 2 and 4
    /// ([`ResNetConfig::torchvision_dilated`]).
    Torchvision,
}

impl PspDilation {
    /// Both rules.
    pub const ALL: [PspDilation; 2] = [PspDilation::Hszhao, PspDilation::Torchvision];

    /// The configuration name (`hszhao`, `torchvision`).
    pub fn as_str(self) -> &'static str {
        match self {
            PspDilation::Hszhao => "hszhao",
            PspDilation::Torchvision => "torchvision",
        }
    }

    /// One line saying which rule is in use and how to switch.
    pub fn describe(self) -> String {
        let rule = match self {
            PspDilation::Hszhao => {
                "hszhao/semseg (layer3 / layer4 stride 1, every conv2 dilated 2 / 4, \
                 first blocks included)"
            }
            PspDilation::Torchvision => {
                "torchvision replace_stride_with_dilation=[False, True, True] (layer3 \
                 dilations 1, 2, 2, ...; layer4 2, 4, 4)"
            }
        };
        format!(
            "pspnet backbone dilation: {} = {rule}; switch with --pspnet-dilation \
             hszhao|torchvision or [model] pspnet_dilation in the training config",
            self.as_str()
        )
    }

    /// The backbone geometry under this rule.
    pub fn backbone_config(self, depth: usize) -> Result<ResNetConfig> {
        match self {
            PspDilation::Hszhao => ResNetConfig::dilated_os8(depth),
            PspDilation::Torchvision => {
                ResNetConfig::torchvision_dilated(depth, [false, true, true])
            }
        }
    }
}

impl std::fmt::Display for PspDilation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PspDilation {
    type Err = Error;

    /// `hszhao` or `torchvision`; anything else is an error naming both.
    fn from_str(name: &str) -> Result<PspDilation> {
        PspDilation::ALL
            .into_iter()
            .find(|rule| rule.as_str() == name)
            .ok_or_else(|| {
                Error::invalid(
                    "pspnet_dilation",
                    format!("unknown dilation rule `{name}`; valid: hszhao, torchvision"),
                )
            })
    }
}

/// The pyramid pooling module: for each bin `b`, `Sequential(AdaptiveAvgPool2d(b), 1×1 conv
/// (no bias), BN, ReLU)` resized back to the input size; the input and the branches are
/// concatenated in that order.
pub struct Ppm {
    /// One Sequential per bin (keys `features.{i}.1.weight`, `features.{i}.2.*`).
    pub features: ModuleList,
}

impl Ppm {
    /// A PPM from `in_channels` with `reduction` channels per branch at the given bins; its
    /// output has `in_channels + bins.len()·reduction` channels.
    pub fn new(in_channels: usize, reduction: usize, bins: &[usize]) -> Result<Self> {
        if bins.is_empty() || bins.contains(&0) {
            return Err(Error::invalid(
                "PPM",
                format!("bins must be positive and non-empty, got {bins:?}"),
            ));
        }
        let features = bins
            .iter()
            .map(|&bin| -> Result<Box<dyn Module>> {
                Ok(Box::new(
                    Sequential::default()
                        .push(AdaptiveAvgPool2d([bin, bin]))
                        .push(Conv2d::new(
                            in_channels,
                            reduction,
                            1,
                            ConvOptions::new().no_bias(),
                        )?)
                        .push(BatchNorm2d::new(reduction)?)
                        .push(ActivationLayer::relu()),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Ppm {
            features: ModuleList::new(features),
        })
    }
}

impl Module for Ppm {
    fn type_name(&self) -> &'static str {
        "PPM"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let size = spatial_size("PPM", input)?;
        let mut parts = vec![input.clone()];
        for branch in &self.features.items {
            parts.push(resize_bilinear_aligned(&branch.forward(input)?, size)?);
        }
        let refs: Vec<&Tensor> = parts.iter().collect();
        Tensor::cat(&refs, 1)
    }

    field_children!(features);

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// PSPNet's classifier heads (`cls` and `aux`): 3×3 conv `in → mid` (no bias, padding 1) → BN
/// → ReLU → Dropout2d 0.1 → 1×1 conv `mid → num_classes` (bias); index 4 is the classifier.
pub fn psp_head(in_channels: usize, mid_channels: usize, num_classes: usize) -> Result<Sequential> {
    Ok(Sequential::default()
        .push(Conv2d::new(
            in_channels,
            mid_channels,
            3,
            ConvOptions::new().padding(1).no_bias(),
        )?)
        .push(BatchNorm2d::new(mid_channels)?)
        .push(ActivationLayer::relu())
        .push(Dropout2d::new(0.1)?)
        .push(Conv2d::new(
            mid_channels,
            num_classes,
            1,
            ConvOptions::new(),
        )?))
}

/// PSPNet (state-dict keys `backbone.*`, `ppm.*`, `cls.*`, `aux.*`).
pub struct PspNet {
    /// Dilated ResNet-50, output stride 8.
    pub backbone: ResNet,
    /// Pyramid pooling on the layer4 output.
    pub ppm: Ppm,
    /// Main classifier on the PPM output.
    pub cls: Sequential,
    /// Auxiliary classifier on the layer3 output (training only).
    pub aux: Sequential,
    training: TrainingFlag,
}

impl PspNet {
    /// The full-width network: hszhao's dilated ResNet-`depth` (50 or 101; every block of
    /// layer3 dilated 2, of layer4 dilated 4), PPM 2048 → 4·512 at bins 1, 2, 3, 6, `cls`
    /// 4096 → 512 → C, `aux` 1024 → 256 → C.
    pub fn new(depth: usize, num_classes: usize) -> Result<Self> {
        Self::with_dilation(depth, num_classes, PspDilation::Hszhao)
    }

    /// [`PspNet::new`] with the backbone dilated by `dilation`'s rule (the parameters and
    /// their shapes do not depend on it).
    pub fn with_dilation(depth: usize, num_classes: usize, dilation: PspDilation) -> Result<Self> {
        Ok(Self::from_parts(
            ResNet::new(&dilation.backbone_config(depth)?)?,
            Ppm::new(2048, 512, &[1, 2, 3, 6])?,
            psp_head(4096, 512, num_classes)?,
            psp_head(1024, 256, num_classes)?,
        ))
    }

    /// A PSPNet from its parts (e.g. narrow ones for tests); `ppm` must take the backbone's
    /// layer4 output, `cls` the PPM output and `aux` the layer3 output.
    pub fn from_parts(backbone: ResNet, ppm: Ppm, cls: Sequential, aux: Sequential) -> Self {
        PspNet {
            backbone,
            ppm,
            cls,
            aux,
            training: TrainingFlag::default(),
        }
    }

    /// Main logits and, when `with_aux`, the auxiliary logits, both at the input size.
    fn run(&self, input: &Tensor, with_aux: bool) -> Result<(Tensor, Option<Tensor>)> {
        let size = spatial_size("PSPNet", input)?;
        let [_, _, layer3, layer4] = self.backbone.forward_stages(input)?;
        let logits = self.cls.forward(&self.ppm.forward(&layer4)?)?;
        let logits = resize_bilinear_aligned(&logits, size)?;
        let aux = if with_aux {
            Some(resize_bilinear_aligned(&self.aux.forward(&layer3)?, size)?)
        } else {
            None
        };
        Ok((logits, aux))
    }
}

impl Module for PspNet {
    fn type_name(&self) -> &'static str {
        "PSPNet"
    }

    /// The main logits (the auxiliary head is not evaluated).
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        Ok(self.run(input, false)?.0)
    }

    field_children!(backbone, ppm, cls, aux);

    fn set_own_training(&self, training: bool) {
        self.training.set(training);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl SegNet for PspNet {
    /// Main logits; in training mode also the `aux` head's logits (weight 0.4).
    fn forward_seg(&self, input: &Tensor) -> Result<SegOutput> {
        let (logits, aux) = self.run(input, self.training.get())?;
        let aux = aux
            .map(|logits| AuxOutput {
                name: "aux",
                logits,
                weight: AUX_WEIGHT,
            })
            .into_iter()
            .collect();
        Ok(SegOutput { logits, aux })
    }
}

/// Builds PSPNet with fresh weights (ResNet-50 by default; `config.backbone_depth` 101 gives
/// hszhao's ResNet-101 variant with the same heads), dilated by `config.pspnet_dilation`.
pub fn build(config: &ModelConfig) -> Result<Box<dyn SegNet>> {
    Ok(Box::new(PspNet::with_dilation(
        config.backbone_depth,
        config.num_classes,
        config.pspnet_dilation,
    )?))
}
