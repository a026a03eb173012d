//! The Vision Transformer of timm 1.0.31 (`timm.models.vision_transformer.VisionTransformer`)
//! and the Soft-MoE Vision Transformer of the reference package `soft-moe` 0.0.1
//! (`soft_moe.SoftMoEVisionTransformer`), with their state-dict names, so the packages' state
//! dicts load strictly: `cls_token`, `pos_embed`, `patch_embed.proj.{weight,bias}`,
//! `blocks.{i}.norm1|attn.qkv|attn.proj|norm2|mlp.fc1|mlp.fc2`, `norm` (or `fc_norm` with
//! average pooling), `head`; a Soft-MoE block's MLP is `blocks.{i}.mlp.phi|scale|experts.{j}.
//! fc1|fc2`.
//!
//! Structure (the packages' defaults; options the packages have but this crate does not offer:
//! dropouts / drop-path, layer scale, qk-norm, pre-norm, register tokens, `no_embed_class`,
//! dynamic image size): patch embedding, class token prepended, learned positional embedding
//! added (its length follows `img_size`), pre-norm blocks with GELU MLPs of ratio 4 and
//! LayerNorm eps 1e-6, final LayerNorm, pooling (`token`: the class token; `avg`: the mean of
//! the patch tokens followed by `fc_norm` instead of `norm`), linear head.
//!
//! Initialisation as timm's `init_weights('')`: linears N(0, 0.02²) (timm's `trunc_normal_`
//! cuts at ±2, i.e. ±100σ: a plain normal) with zero biases, `pos_embed` N(0, 0.02²),
//! `cls_token` N(0, 1e-12), LayerNorm 1/0, patch conv PyTorch's default, Soft-MoE `phi`
//! N(0, 1/d) and `scale` 1.

use crate::error::{Error, Result};
use crate::models::vit_blocks::{Attention, Block, PatchEmbed, LAYER_NORM_EPS};
use crate::moe::{SlotSource, SoftMoE, SoftMoeConfig};
use crate::nn::{LayerNorm, Linear, Mlp, Module, OwnTensor, Sequential};
use crate::ops::activation::Activation;
use crate::ops::interpolate::{InterpolateMode, Resize};
use crate::tensor::{with_default_rng, Tensor};
use std::any::Any;

/// How the token sequence becomes one feature vector (`global_pool`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalPool {
    /// The class token (`"token"`, the default; needs `class_token`).
    Token,
    /// The mean of the patch tokens (`"avg"`), normalised by `fc_norm`.
    Avg,
    /// No pooling (`""`): the head is applied to every token, `[B, N, num_classes]` (the
    /// segmentation use).
    None,
}

/// Which blocks get a Soft-MoE MLP (`moe_layer_index`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoeLayers {
    /// This block and every later one (an int in the package).
    From(usize),
    /// Exactly these blocks (a list in the package).
    List(Vec<usize>),
}

impl MoeLayers {
    /// Parses `6` (from block 6 on) or `0,2,5` (those blocks); `[0, 2]` brackets allowed.
    pub fn parse(text: &str) -> Result<Self> {
        let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
        let bad = || {
            Error::invalid(
                "moe_layer_index",
                format!("`{text}`: expected a block index like 6 or a list like 0,2,5"),
            )
        };
        let values: Vec<usize> = inner
            .split(',')
            .map(|p| p.trim().parse::<usize>().map_err(|_| bad()))
            .collect::<Result<_>>()?;
        match (text.contains(',') || text.contains('['), values.as_slice()) {
            (false, [one]) => Ok(MoeLayers::From(*one)),
            (true, list) if !list.is_empty() => Ok(MoeLayers::List(list.to_vec())),
            _ => Err(bad()),
        }
    }

    /// Whether block `i` is a Soft-MoE block.
    pub fn contains(&self, i: usize) -> bool {
        match self {
            MoeLayers::From(first) => i >= *first,
            MoeLayers::List(list) => list.contains(&i),
        }
    }

    /// The package's asserts: an int in `0..depth`, a non-empty list of indices in `0..depth`.
    fn check(&self, depth: usize) -> Result<()> {
        let ok = match self {
            MoeLayers::From(first) => *first < depth,
            MoeLayers::List(list) => !list.is_empty() && list.iter().all(|&i| i < depth),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(
                "moe_layer_index",
                format!("{self:?} is not within the {depth} blocks (0-based)"),
            ))
        }
    }
}

/// The Soft-MoE part of a [`VitConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VitMoeConfig {
    /// Experts per Soft-MoE layer (package default 128).
    pub num_experts: usize,
    /// Slots per expert (package default 1).
    pub slots_per_expert: usize,
    /// Which blocks are Soft-MoE blocks.
    pub layers: MoeLayers,
    /// Slot source of the layers (the package's: normalised tokens).
    pub slot_source: SlotSource,
}

/// Hyper-parameters of a (Soft-MoE) Vision Transformer.
#[derive(Clone, Debug, PartialEq)]
pub struct VitConfig {
    /// Input size `[H, W]` (multiples of `patch_size` are covered exactly; the remainder is
    /// ignored, as a stride-`patch` conv does).
    pub img_size: [usize; 2],
    /// Patch side.
    pub patch_size: usize,
    /// Input channels.
    pub in_chans: usize,
    /// Classes of the head; 0 for no head (the pooled features are returned).
    pub num_classes: usize,
    /// Pooling before the head.
    pub global_pool: GlobalPool,
    /// Token width D.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP hidden width = `int(D · mlp_ratio)`.
    pub mlp_ratio: f32,
    /// Bias of the qkv projection (true in the packages).
    pub qkv_bias: bool,
    /// Prepend a class token.
    pub class_token: bool,
    /// Soft-MoE blocks (`None`: a plain ViT).
    pub moe: Option<VitMoeConfig>,
    /// Accept any input size (timm's `dynamic_img_size`): the patch part of `pos_embed` is
    /// resampled bilinearly (timm: bicubic) to the input's patch grid when it differs.
    pub dynamic_img_size: bool,
}

/// The five model sizes of the packages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VitSize {
    /// D 192, 12 blocks, 3 heads.
    Tiny,
    /// D 384, 12 blocks, 6 heads.
    Small,
    /// D 768, 12 blocks, 12 heads.
    Base,
    /// D 1024, 24 blocks, 16 heads.
    Large,
    /// D 1280, 32 blocks, 16 heads.
    Huge,
}

impl VitSize {
    /// Every size, smallest first.
    pub const ALL: [VitSize; 5] = [
        VitSize::Tiny,
        VitSize::Small,
        VitSize::Base,
        VitSize::Large,
        VitSize::Huge,
    ];

    /// `tiny`, `small`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            VitSize::Tiny => "tiny",
            VitSize::Small => "small",
            VitSize::Base => "base",
            VitSize::Large => "large",
            VitSize::Huge => "huge",
        }
    }

    /// `(embed_dim, depth, num_heads)`.
    pub fn dims(self) -> (usize, usize, usize) {
        match self {
            VitSize::Tiny => (192, 12, 3),
            VitSize::Small => (384, 12, 6),
            VitSize::Base => (768, 12, 12),
            VitSize::Large => (1024, 24, 16),
            VitSize::Huge => (1280, 32, 16),
        }
    }

    /// The package's default `moe_layer_index` of `soft_moe_vit_<size>` (6, 6, 6, 12, 16).
    pub fn default_moe_layer_index(self) -> usize {
        match self {
            VitSize::Large => 12,
            VitSize::Huge => 16,
            _ => 6,
        }
    }
}

impl VitConfig {
    /// timm's `vit_<size>_patch16_224` (for huge `vit_huge_patch14_224`, patch 14) at 224²,
    /// 1000 classes, class-token pooling.
    pub fn vit(size: VitSize) -> Self {
        let (embed_dim, depth, num_heads) = size.dims();
        VitConfig {
            img_size: [224, 224],
            patch_size: if size == VitSize::Huge { 14 } else { 16 },
            in_chans: 3,
            num_classes: 1000,
            global_pool: GlobalPool::Token,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            qkv_bias: true,
            class_token: true,
            moe: None,
            dynamic_img_size: false,
        }
    }

    /// The package's `soft_moe_vit_<size>()`: 128 experts, 1 slot each, Soft-MoE blocks from
    /// the size's default index on, patch 16 (also for huge: the package keeps the class
    /// default), 224², 1000 classes.
    pub fn soft_moe_vit(size: VitSize) -> Self {
        VitConfig {
            patch_size: 16,
            moe: Some(VitMoeConfig {
                num_experts: 128,
                slots_per_expert: 1,
                layers: MoeLayers::From(size.default_moe_layer_index()),
                slot_source: SlotSource::Normalized,
            }),
            ..Self::vit(size)
        }
    }

    /// Hidden width of the MLPs.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f32 * self.mlp_ratio) as usize
    }

    fn check(&self) -> Result<()> {
        if self.global_pool == GlobalPool::Token && !self.class_token {
            return Err(Error::invalid(
                "VisionTransformer",
                "global_pool `token` needs a class token",
            ));
        }
        if self.depth == 0 || self.embed_dim == 0 {
            return Err(Error::invalid(
                "VisionTransformer",
                "depth and embed_dim must be at least 1",
            ));
        }
        match &self.moe {
            Some(moe) => moe.layers.check(self.depth),
            None => Ok(()),
        }
    }
}

/// A (Soft-MoE) Vision Transformer classifier: `[B, C, H, W]` → logits `[B, num_classes]`.
pub struct VisionTransformer {
    /// `[1, 1, D]`, when the model has a class token.
    pub cls_token: Option<Tensor>,
    /// `[1, prefix + patches, D]`.
    pub pos_embed: Tensor,
    /// The patch embedding.
    pub patch_embed: PatchEmbed,
    /// The blocks (`blocks.{i}`).
    pub blocks: Sequential,
    /// Final norm (token pooling).
    pub norm: Option<LayerNorm>,
    /// Norm after average pooling.
    pub fc_norm: Option<LayerNorm>,
    /// Classifier (absent with `num_classes = 0`).
    pub head: Option<Linear>,
    config: VitConfig,
}

impl VisionTransformer {
    /// A model with timm's initialisation (see the module documentation).
    pub fn new(config: VitConfig) -> Result<Self> {
        config.check()?;
        let d = config.embed_dim;
        let mut patch_embed =
            PatchEmbed::new(config.img_size, config.patch_size, config.in_chans, d)?;
        patch_embed.strict_img_size = !config.dynamic_img_size;
        let prefix = usize::from(config.class_token);
        let pos_embed = normal([1, prefix + patch_embed.num_patches(), d], 0.02)?;
        let cls_token = config
            .class_token
            .then(|| normal([1, 1, d], 1e-6))
            .transpose()?;
        let blocks = (0..config.depth)
            .map(|i| Ok(Box::new(block(&config, i)?) as Box<dyn Module>))
            .collect::<Result<Vec<_>>>()?;
        let avg = config.global_pool == GlobalPool::Avg;
        let layer_norm = || LayerNorm::new(d, LAYER_NORM_EPS);
        let norm = (!avg).then(layer_norm).transpose()?;
        let fc_norm = avg.then(layer_norm).transpose()?;
        let head = (config.num_classes > 0)
            .then(|| Linear::new(d, config.num_classes, true))
            .transpose()?;
        let model = VisionTransformer {
            cls_token,
            pos_embed,
            patch_embed,
            blocks: Sequential::new(blocks),
            norm,
            fc_norm,
            head,
            config,
        };
        model.init_linears()?;
        Ok(model)
    }

    /// The configuration.
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// timm's `init_weights_vit_timm` on every Linear: N(0, 0.02²) weights, zero biases.
    fn init_linears(&self) -> Result<()> {
        let mut linears = Vec::new();
        crate::nn::visit_modules(self, &mut |_, m| {
            if let Some(linear) = m.as_any().downcast_ref::<Linear>() {
                linears.push((linear.weight.clone(), linear.bias.clone()));
            }
        });
        for (weight, bias) in linears {
            weight.replace_data(&normal(weight.dims().to_vec(), 0.02)?)?;
            if let Some(bias) = bias {
                bias.replace_data(&bias.zeros_like()?)?;
            }
        }
        Ok(())
    }

    /// Tokens after the blocks and the final `norm` (identity with average pooling):
    /// `[B, prefix + patches, D]` (`forward_features`).
    pub fn forward_features(&self, input: &Tensor) -> Result<Tensor> {
        Ok(self.forward_features_grid(input)?.0)
    }

    /// [`Self::forward_features`] and the patch grid `[gh, gw]` of the input.
    pub fn forward_features_grid(&self, input: &Tensor) -> Result<(Tensor, [usize; 2])> {
        let (patches, grid) = self.patch_embed.tokens_and_grid(input)?;
        let batch = patches.dims()[0];
        let tokens = match &self.cls_token {
            Some(cls) => {
                let d = self.config.embed_dim;
                let cls = cls.broadcast_to([batch, 1, d])?;
                Tensor::cat(&[&cls, &patches], 1)?
            }
            None => patches,
        };
        let x = self
            .blocks
            .forward(&tokens.add(&self.pos_embed_for(grid)?)?)?;
        let x = match &self.norm {
            Some(norm) => norm.forward(&x)?,
            None => x,
        };
        Ok((x, grid))
    }

    /// `pos_embed`, its patch part resampled to `grid` when that differs from the built one.
    fn pos_embed_for(&self, grid: [usize; 2]) -> Result<Tensor> {
        let built = self.patch_embed.grid();
        if grid == built {
            return Ok(self.pos_embed.clone());
        }
        let d = self.config.embed_dim;
        let prefix = usize::from(self.config.class_token);
        let patches = self
            .pos_embed
            .narrow(1, prefix, built[0] * built[1])?
            .reshape_to([1, built[0], built[1], d])?
            .permute(&[0, 3, 1, 2])?
            .interpolate(
                Resize::Size(grid),
                InterpolateMode::Bilinear {
                    align_corners: false,
                },
            )?
            .permute(&[0, 2, 3, 1])?
            .reshape_to([1, grid[0] * grid[1], d])?;
        if prefix == 0 {
            return Ok(patches);
        }
        Tensor::cat(&[&self.pos_embed.narrow(1, 0, prefix)?, &patches], 1)
    }

    /// Pooling, `fc_norm` and the head on the tokens of [`Self::forward_features`].
    pub fn forward_head(&self, tokens: &Tensor) -> Result<Tensor> {
        let pooled = match self.config.global_pool {
            GlobalPool::Token => tokens.narrow(1, 0, 1)?.squeeze(1)?,
            GlobalPool::Avg => {
                let prefix = usize::from(self.config.class_token);
                let n = tokens.dims()[1] - prefix;
                tokens.narrow(1, prefix, n)?.mean(&[1], false)?
            }
            GlobalPool::None => tokens.clone(),
        };
        let pooled = match &self.fc_norm {
            Some(norm) => norm.forward(&pooled)?,
            None => pooled,
        };
        match &self.head {
            Some(head) => head.forward(&pooled),
            None => Ok(pooled),
        }
    }

    /// The Soft-MoE layers with their paths (`blocks.{i}.mlp`).
    pub fn soft_moe_layers(&self) -> Vec<(String, &SoftMoE)> {
        self.blocks
            .layers
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let block = b.as_any().downcast_ref::<Block>()?;
                let moe = block.mlp.as_any().downcast_ref::<SoftMoE>()?;
                Some((format!("blocks.{i}.mlp"), moe))
            })
            .collect()
    }
}

fn normal(dims: impl Into<crate::tensor::Shape>, std: f32) -> Result<Tensor> {
    let dims = dims.into();
    Ok(with_default_rng(|rng| Tensor::randn(dims, 0.0, std, rng))?.with_requires_grad(true))
}

/// Block `i`: a Soft-MoE MLP when the configuration puts one there.
fn block(config: &VitConfig, i: usize) -> Result<Block> {
    let d = config.embed_dim;
    let hidden = config.mlp_hidden();
    let mlp_expert = || Mlp::new(d, hidden, d, Activation::Gelu);
    let mlp: Box<dyn Module> = match &config.moe {
        Some(moe) if moe.layers.contains(i) => {
            let layer = SoftMoeConfig {
                slot_source: moe.slot_source,
                ..SoftMoeConfig::new(d, moe.num_experts, moe.slots_per_expert)
            };
            Box::new(SoftMoE::new(layer, |_| {
                Ok(Box::new(mlp_expert()?) as Box<dyn Module>)
            })?)
        }
        _ => Box::new(mlp_expert()?),
    };
    Ok(Block {
        norm1: LayerNorm::new(d, LAYER_NORM_EPS)?,
        attn: Attention::new(d, config.num_heads, config.qkv_bias)?,
        norm2: LayerNorm::new(d, LAYER_NORM_EPS)?,
        mlp,
    })
}

impl Module for VisionTransformer {
    fn type_name(&self) -> &'static str {
        "VisionTransformer"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        self.forward_head(&self.forward_features(input)?)
    }

    fn own_tensors(&self) -> Vec<OwnTensor> {
        let mut own: Vec<OwnTensor> = self
            .cls_token
            .iter()
            .map(|t| OwnTensor::parameter("cls_token", t))
            .collect();
        own.push(OwnTensor::parameter("pos_embed", &self.pos_embed));
        own
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut children: Vec<(String, &dyn Module)> = vec![
            ("patch_embed".to_string(), &self.patch_embed),
            ("blocks".to_string(), &self.blocks),
        ];
        if let Some(norm) = &self.norm {
            children.push(("norm".to_string(), norm));
        }
        if let Some(norm) = &self.fc_norm {
            children.push(("fc_norm".to_string(), norm));
        }
        if let Some(head) = &self.head {
            children.push(("head".to_string(), head));
        }
        children
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        (name == "blocks").then_some(&mut self.blocks as &mut dyn Module)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A command-line ViT name: `vit_<size>` (timm) or `soft_moe_vit_<size>` (the package).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VitModelName {
    /// Model size.
    pub size: VitSize,
    /// The Soft-MoE variant.
    pub soft_moe: bool,
}

impl VitModelName {
    /// Every name, plain ones first.
    pub fn all() -> Vec<VitModelName> {
        [false, true]
            .into_iter()
            .flat_map(|soft_moe| VitSize::ALL.map(|size| VitModelName { size, soft_moe }))
            .collect()
    }

    /// The factory's configuration.
    pub fn config(self) -> VitConfig {
        if self.soft_moe {
            VitConfig::soft_moe_vit(self.size)
        } else {
            VitConfig::vit(self.size)
        }
    }
}

impl std::fmt::Display for VitModelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefix = if self.soft_moe { "soft_moe_vit" } else { "vit" };
        write!(f, "{prefix}_{}", self.size.as_str())
    }
}

impl std::str::FromStr for VitModelName {
    type Err = Error;
    fn from_str(name: &str) -> Result<Self> {
        let lower = name.to_ascii_lowercase();
        Self::all()
            .into_iter()
            .find(|m| m.to_string() == lower)
            .ok_or_else(|| {
                Error::invalid(
                    "model",
                    format!("unknown Vision Transformer `{name}` (vit_tiny … soft_moe_vit_huge)"),
                )
            })
    }
}

/// `soft_moe_vit_tiny(num_experts, slots_per_expert, moe_layer_index, **kwargs)` and its
/// siblings: the package's factory with its defaults where an argument is `None`.
pub fn soft_moe_vit(
    size: VitSize,
    num_experts: Option<usize>,
    slots_per_expert: Option<usize>,
    moe_layer_index: Option<MoeLayers>,
    adjust: impl FnOnce(&mut VitConfig),
) -> Result<VisionTransformer> {
    let mut config = VitConfig::soft_moe_vit(size);
    if let Some(moe) = config.moe.as_mut() {
        moe.num_experts = num_experts.unwrap_or(moe.num_experts);
        moe.slots_per_expert = slots_per_expert.unwrap_or(moe.slots_per_expert);
        if let Some(layers) = moe_layer_index {
            moe.layers = layers;
        }
    }
    adjust(&mut config);
    VisionTransformer::new(config)
}
