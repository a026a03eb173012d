//! A Vision Transformer (with or without Soft-MoE MLPs) as a segmentation network, SETR-naive
//! style (Zheng et al., "Rethinking Semantic Segmentation from a Sequence-to-Sequence
//! Perspective"): the ViT without class token runs on the image's patch tokens, its final
//! LayerNorm and a linear head (`head`) give per-token class logits, which are laid back on
//! the patch grid and resized bilinearly (`align_corners = False`) to the input's size.
//!
//! The state dict is the ViT's own (`pos_embed`, `patch_embed.proj`, `blocks.{i}…`, `norm`,
//! `head`), so timm / soft-moe encoders load by name (with another head shape). Any input size
//! of at least one patch is accepted: the positional embedding is resampled to the patch grid
//! (see [`VitConfig::dynamic_img_size`]).

use crate::error::{Error, Result};
use crate::models::vit::{GlobalPool, VisionTransformer, VitConfig};
use crate::models::SegNet;
use crate::nn::{Module, OwnTensor};
use crate::ops::interpolate::{InterpolateMode, Resize};
use crate::tensor::Tensor;
use std::any::Any;

/// The segmentation ViT; see the module documentation.
pub struct SegVit {
    /// The encoder with its per-token head.
    pub vit: VisionTransformer,
}

impl SegVit {
    /// A segmentation ViT from a ViT configuration: the class token, pooling and strict image
    /// size are turned off; `num_classes` is the number of segmentation classes.
    pub fn new(config: VitConfig) -> Result<Self> {
        if config.num_classes == 0 {
            return Err(Error::invalid("SegVit", "num_classes must be at least 1"));
        }
        let config = VitConfig {
            class_token: false,
            global_pool: GlobalPool::None,
            dynamic_img_size: true,
            ..config
        };
        Ok(SegVit {
            vit: VisionTransformer::new(config)?,
        })
    }
}

impl Module for SegVit {
    fn type_name(&self) -> &'static str {
        "SegVit"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let (tokens, [gh, gw]) = self.vit.forward_features_grid(input)?;
        let logits = self.vit.forward_head(&tokens)?; // [B, gh·gw, C]
        let (b, c) = (logits.dims()[0], logits.dims()[2]);
        let (h, w) = (input.dims()[2], input.dims()[3]);
        logits
            .reshape_to([b, gh, gw, c])?
            .permute(&[0, 3, 1, 2])?
            .interpolate(
                Resize::Size([h, w]),
                InterpolateMode::Bilinear {
                    align_corners: false,
                },
            )
    }

    fn own_tensors(&self) -> Vec<OwnTensor> {
        self.vit.own_tensors()
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.vit.children()
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        self.vit.child_mut(name)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl SegNet for SegVit {}
