//! The pieces of timm's Vision Transformer (timm 1.0.31): `PatchEmbed`, multi-head
//! self-`Attention` and the pre-norm `Block`, with timm's state-dict names.

use crate::error::{Error, Result};
use crate::nn::{Conv2d, LayerNorm, Linear, Module};
use crate::ops::conv::Conv2dParams;
use crate::tensor::Tensor;
use std::any::Any;

/// LayerNorm epsilon of timm's ViT (`partial(nn.LayerNorm, eps=1e-6)`).
pub const LAYER_NORM_EPS: f32 = 1e-6;

/// `timm.layers.PatchEmbed`: a `patch × patch` conv with stride `patch` (`proj`), flattened to
/// tokens `[B, (H/patch)·(W/patch), D]` in row-major patch order. With `strict_img_size`
/// (timm's default) the input must have the size the model was built for; otherwise any size
/// of at least one patch is cut (a remainder smaller than a patch is dropped, as the strided
/// conv does).
pub struct PatchEmbed {
    /// `[D, in_chans, patch, patch]` conv with bias.
    pub proj: Conv2d,
    /// Input size `[H, W]`.
    pub img_size: [usize; 2],
    /// Patch side.
    pub patch_size: usize,
    /// Only inputs of `img_size` are accepted.
    pub strict_img_size: bool,
}

impl PatchEmbed {
    /// A patch embedding of `img_size` images cut into `patch_size` squares.
    pub fn new(
        img_size: [usize; 2],
        patch_size: usize,
        in_chans: usize,
        embed_dim: usize,
    ) -> Result<Self> {
        if patch_size == 0 || img_size.iter().any(|&s| s < patch_size) {
            return Err(Error::invalid(
                "PatchEmbed",
                format!(
                    "image {}x{} cannot be cut into {patch_size}x{patch_size} patches",
                    img_size[0], img_size[1]
                ),
            ));
        }
        let params = Conv2dParams::new(patch_size, 0, 1, 1);
        let proj =
            Conv2d::with_params(in_chans, embed_dim, [patch_size, patch_size], params, true)?;
        Ok(PatchEmbed {
            proj,
            img_size,
            patch_size,
            strict_img_size: true,
        })
    }

    /// Patches per column and per row.
    pub fn grid(&self) -> [usize; 2] {
        [
            self.img_size[0] / self.patch_size,
            self.img_size[1] / self.patch_size,
        ]
    }

    /// Number of patch tokens.
    pub fn num_patches(&self) -> usize {
        let [h, w] = self.grid();
        h * w
    }

    /// Tokens `[B, gh·gw, D]` and the patch grid `[gh, gw]` of `input` `[B, C, H, W]`.
    pub fn tokens_and_grid(&self, input: &Tensor) -> Result<(Tensor, [usize; 2])> {
        let [h, w] = self.img_size;
        let (p, channels) = (self.patch_size, self.proj.weight.dims()[1]);
        let fits = match *input.dims() {
            [_, c, ih, iw] if c == channels => {
                if self.strict_img_size {
                    ih == h && iw == w
                } else {
                    ih >= p && iw >= p
                }
            }
            _ => false,
        };
        if !fits {
            let expected = if self.strict_img_size {
                format!("[B, {channels}, {h}, {w}] (the model's img_size)")
            } else {
                format!("[B, {channels}, H, W] with H, W ≥ {p}")
            };
            return Err(Error::shape(
                "PatchEmbed",
                format!("input {} must be {expected}", input.shape()),
            ));
        }
        let maps = self.proj.forward(input)?; // [B, D, gh, gw]
        let grid = [maps.dims()[2], maps.dims()[3]];
        Ok((maps.flatten(2, 3)?.transpose(1, 2)?, grid))
    }
}

impl Module for PatchEmbed {
    fn type_name(&self) -> &'static str {
        "PatchEmbed"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        Ok(self.tokens_and_grid(input)?.0)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("proj".to_string(), &self.proj as &dyn Module)]
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// timm's `Attention`: `qkv` Linear `D → 3D` (biased with `qkv_bias`), heads of
/// `head_dim = D / num_heads`, `softmax(q·kᵀ · head_dim^−½)·v` over the last axis, then `proj`.
pub struct Attention {
    /// `[3D, D]` projection to queries, keys and values (in that order, head-major inside).
    pub qkv: Linear,
    /// `[D, D]` output projection.
    pub proj: Linear,
    /// Number of heads.
    pub num_heads: usize,
}

impl Attention {
    /// Attention over `dim`-wide tokens with `num_heads` heads (`dim % num_heads == 0`).
    pub fn new(dim: usize, num_heads: usize, qkv_bias: bool) -> Result<Self> {
        if num_heads == 0 || !dim.is_multiple_of(num_heads) {
            return Err(Error::invalid(
                "Attention",
                format!("dim {dim} is not divisible by num_heads {num_heads}"),
            ));
        }
        Ok(Attention {
            qkv: Linear::new(dim, 3 * dim, qkv_bias)?,
            proj: Linear::new(dim, dim, true)?,
            num_heads,
        })
    }
}

impl Module for Attention {
    fn type_name(&self) -> &'static str {
        "Attention"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let dim = self.proj.weight.dims()[0];
        let (b, n) = match *input.dims() {
            [b, n, c] if c == dim => (b, n),
            _ => {
                return Err(Error::shape(
                    "Attention",
                    format!("input {} must be [B, N, {dim}]", input.shape()),
                ))
            }
        };
        let heads = self.num_heads;
        let head_dim = dim / heads;
        // [B, N, 3, H, hd] → [3, B, H, N, hd] → [3, B·H, N, hd]
        let qkv = self
            .qkv
            .forward(input)?
            .reshape_to([b, n, 3, heads, head_dim])?
            .permute(&[2, 0, 3, 1, 4])?
            .reshape_to([3, b * heads, n, head_dim])?;
        let part = |i: usize| qkv.narrow(0, i, 1)?.reshape_to([b * heads, n, head_dim]);
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let q = q.mul_scalar((head_dim as f32).powf(-0.5))?;
        let attn = q.matmul_t(&k)?.softmax(-1)?;
        let out = attn
            .matmul(&v)?
            .reshape_to([b, heads, n, head_dim])?
            .permute(&[0, 2, 1, 3])?
            .reshape_to([b, n, dim])?;
        self.proj.forward(&out)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("qkv".to_string(), &self.qkv as &dyn Module),
            ("proj".to_string(), &self.proj as &dyn Module),
        ]
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// timm's pre-norm `Block`: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`. The MLP is an
/// [`Mlp`](crate::nn::Mlp) or, in a Soft-MoE block, a [`SoftMoE`](crate::moe::SoftMoE) of
/// MLP experts (keys `mlp.phi`, `mlp.scale`, `mlp.experts.{j}.fc1|fc2`).
pub struct Block {
    /// LayerNorm before the attention.
    pub norm1: LayerNorm,
    /// Multi-head self-attention.
    pub attn: Attention,
    /// LayerNorm before the MLP.
    pub norm2: LayerNorm,
    /// The feed-forward part.
    pub mlp: Box<dyn Module>,
}

impl Module for Block {
    fn type_name(&self) -> &'static str {
        "Block"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let x = input.add(&self.attn.forward(&self.norm1.forward(input)?)?)?;
        x.add(&self.mlp.forward(&self.norm2.forward(&x)?)?)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("norm1".to_string(), &self.norm1 as &dyn Module),
            ("attn".to_string(), &self.attn as &dyn Module),
            ("norm2".to_string(), &self.norm2 as &dyn Module),
            ("mlp".to_string(), self.mlp.as_ref()),
        ]
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        (name == "mlp").then_some(self.mlp.as_mut())
    }

    fn replace_child(&mut self, name: &str, module: Box<dyn Module>) -> Result<Box<dyn Module>> {
        if name != "mlp" {
            return Err(Error::invalid(
                "replace_module",
                format!("Block has no replaceable child `{name}` (only `mlp`)"),
            ));
        }
        Ok(std::mem::replace(&mut self.mlp, module))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
