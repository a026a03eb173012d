//! Patch-grid split and reassemble: the tokens of PatchConvMoE (moe.md §1.1–1.2), forward and
//! backward.
//!
//! A feature map `x [B, C, H, W]` is cut into a grid of `ph × pw` patches, padded with zeros on
//! the right and bottom only as far as needed (`H' = ph·⌈H/ph⌉`, `W' = pw·⌈W/pw⌉`). Each patch
//! becomes a token `[C, ph + 2hh, pw + 2hw]` that also carries a halo of `hh` rows / `hw`
//! columns of true neighbour pixels (zeros outside the map), so an expert convolution without
//! padding on the token computes exactly what the replaced convolution computes on the patch:
//!
//! ```text
//! split(x)[t = (b, r, c), ch, i, j] = x[b, ch, r·ph − hh + i, c·pw − hw + j]   (0 outside H×W)
//! reassemble(y)[b, ch, r·ph + i, c·pw + j] = y[(b, r, c), ch, i, j]            (cropped to H×W)
//! ```
//!
//! Tokens are ordered batch-major, then patch row, then patch column. The two ops are each
//! other's adjoints up to the halo: split's gradient scatter-adds the overlapping halos back
//! onto the map, reassemble's gradient is a split without halo.

mod cpu_kernel;
mod cuda_kernel;

use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// The patch grid of one feature-map size (moe.md §1.1–1.2): map `[batch, channels, height,
/// width]`, patches of `patch = [ph, pw]` pixels, halo `[hh, hw]` on each side. Plain numbers so
/// kernels on every backend can take it by value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchGrid {
    /// Images `B`.
    pub batch: usize,
    /// Channels `C` of the map that is split.
    pub channels: usize,
    /// Map height `H`.
    pub height: usize,
    /// Map width `W`.
    pub width: usize,
    /// Patch size `[ph, pw]` in pixels (without halo).
    pub patch: [usize; 2],
    /// Halo `[hh, hw]` added on each side of a patch: `dilation·(kernel − 1)/2` of the
    /// convolution that runs on the tokens.
    pub halo: [usize; 2],
}

impl PatchGrid {
    /// A `g × g` grid: `ph = ⌈H/g⌉`, `pw = ⌈W/g⌉`. When `g` does not fit the size, the grid may
    /// have fewer than `g` rows or columns (e.g. `H = 5, g = 4` gives `ph = 2` and 3 rows), since
    /// padding goes only as far as the last patch needs.
    pub fn from_grid(
        batch: usize,
        channels: usize,
        height: usize,
        width: usize,
        grid: usize,
        halo: [usize; 2],
    ) -> Result<Self> {
        if grid == 0 {
            return Err(Error::invalid(
                "patch_grid",
                format!("the grid size must be positive, got 0 for a {height}×{width} map"),
            ));
        }
        let patch = [height.div_ceil(grid), width.div_ceil(grid)];
        Self::from_patch_size(batch, channels, height, width, patch, halo)
    }

    /// Explicit patch size `[ph, pw]` in pixels. A patch larger than the map is allowed: one
    /// patch per image, padded with zeros.
    pub fn from_patch_size(
        batch: usize,
        channels: usize,
        height: usize,
        width: usize,
        patch: [usize; 2],
        halo: [usize; 2],
    ) -> Result<Self> {
        let grid = PatchGrid {
            batch,
            channels,
            height,
            width,
            patch,
            halo,
        };
        grid.validate("patch_grid")?;
        Ok(grid)
    }

    /// Checks that the map and the patches are non-empty (the fields are public, so the ops
    /// check again).
    fn validate(&self, op: &'static str) -> Result<()> {
        if self.height == 0 || self.width == 0 || self.patch.contains(&0) {
            return Err(Error::invalid(
                op,
                format!(
                    "map size {}×{} and patch size {:?} must be positive",
                    self.height, self.width, self.patch
                ),
            ));
        }
        Ok(())
    }

    /// Patch rows per image, `⌈H/ph⌉`.
    pub fn rows(&self) -> usize {
        self.height.div_ceil(self.patch[0])
    }

    /// Patch columns per image, `⌈W/pw⌉`.
    pub fn cols(&self) -> usize {
        self.width.div_ceil(self.patch[1])
    }

    /// Patches per image `nP = rows·cols`.
    pub fn patches_per_image(&self) -> usize {
        self.rows() * self.cols()
    }

    /// Tokens `T = B·nP`.
    pub fn tokens(&self) -> usize {
        self.batch * self.patches_per_image()
    }

    /// The zero-padded map size `[H', W'] = [rows·ph, cols·pw]`.
    pub fn padded_size(&self) -> [usize; 2] {
        [self.rows() * self.patch[0], self.cols() * self.patch[1]]
    }

    /// Spatial size of a token with its halo, `[ph + 2hh, pw + 2hw]`.
    pub fn token_size(&self) -> [usize; 2] {
        [
            self.patch[0] + 2 * self.halo[0],
            self.patch[1] + 2 * self.halo[1],
        ]
    }

    /// The map's shape `[B, C, H, W]`.
    pub fn map_shape(&self) -> [usize; 4] {
        [self.batch, self.channels, self.height, self.width]
    }

    /// The split's output shape `[T, C, ph + 2hh, pw + 2hw]`.
    pub fn token_shape(&self) -> [usize; 4] {
        let [th, tw] = self.token_size();
        [self.tokens(), self.channels, th, tw]
    }

    /// The same grid without halo (the layout of the expert outputs that are reassembled).
    pub fn without_halo(&self) -> Self {
        PatchGrid {
            halo: [0, 0],
            ..*self
        }
    }
}

/// Kernels of this family. `grid` describes the tensors as in the module docs; all are
/// contiguous.
pub trait PatchGridBackend {
    /// Map `[B, C, H, W]` → tokens `[T, C, ph + 2hh, pw + 2hw]`:
    /// `out[(b, r, c), ch, i, j] = x[b, ch, r·ph − hh + i, c·pw − hw + j]`, zero outside the map.
    fn patch_split(&self, x: &Storage, grid: PatchGrid) -> Result<Storage>;

    /// Gradient of [`PatchGridBackend::patch_split`]: tokens `[T, C, ph + 2hh, pw + 2hw]` →
    /// map `[B, C, H, W]`, `∂x[b, ch, y, x] = Σ` over every token element that read it (halos
    /// overlap, so a pixel may be read by up to `(1 + ⌈2hh/ph⌉)(1 + ⌈2hw/pw⌉)` tokens).
    /// Deterministic: the summation order is fixed.
    fn patch_split_backward(&self, grad_tokens: &Storage, grid: PatchGrid) -> Result<Storage>;

    /// Tokens `[T, C, ph, pw]` (`grid.channels` is their channel count, the halo is ignored) →
    /// map `[B, C, H, W]`: patches placed on the padded grid and cropped to `H × W`.
    fn patch_reassemble(&self, tokens: &Storage, grid: PatchGrid) -> Result<Storage>;

    /// Gradient of [`PatchGridBackend::patch_reassemble`]: map `[B, C, H, W]` → tokens
    /// `[T, C, ph, pw]`, a split without halo (zeros where a patch covers the cropped padding).
    fn patch_reassemble_backward(&self, grad_map: &Storage, grid: PatchGrid) -> Result<Storage>;
}

impl Tensor {
    /// Splits a map `x [B, C, H, W]` into patch tokens with halo, `[T, C, ph + 2hh, pw + 2hw]`
    /// (moe.md §1.1–1.2): token `t = (b, r, c)` batch-major, then patch row, then column;
    /// element `(ch, i, j) = x[b, ch, r·ph − hh + i, c·pw − hw + j]`, zero outside `[0,H)×[0,W)`.
    /// `grid` must describe `x`'s shape.
    pub fn patch_split(&self, grid: PatchGrid) -> Result<Tensor> {
        let op = "patch_split";
        grid.validate(op)?;
        self.expect_rank(op, "input", 4)?;
        if self.dims() != grid.map_shape() {
            return Err(Error::shape(
                op,
                format!(
                    "input of shape {} does not match the grid's map shape {:?}",
                    self.shape(),
                    grid.map_shape()
                ),
            ));
        }
        let out = self.backend().patch_split(&self.storage(), grid)?;
        Tensor::from_op(op, out, grid.token_shape(), &[self], move || {
            Box::new(move |g: &Tensor, needs: &[bool]| {
                let grad = needs[0]
                    .then(|| {
                        let grad = g.backend().patch_split_backward(&g.storage(), grid)?;
                        Tensor::from_storage(grad, grid.map_shape())
                    })
                    .transpose()?;
                Ok(vec![grad])
            })
        })
    }

    /// Reassembles patch outputs `y [T, Cout, ph, pw]` into a map `[B, Cout, H, W]`: each patch
    /// placed at its grid position on the padded map, which is then cropped to `H × W`. `grid`
    /// is the split's grid (its `channels` and halo are not used; `Cout` comes from `self`).
    pub fn patch_reassemble(&self, grid: PatchGrid) -> Result<Tensor> {
        let op = "patch_reassemble";
        grid.validate(op)?;
        self.expect_rank(op, "tokens", 4)?;
        let dims = self.dims();
        let [ph, pw] = grid.patch;
        if dims[0] != grid.tokens() || dims[2..] != [ph, pw] {
            return Err(Error::shape(
                op,
                format!(
                    "tokens of shape {} do not fit the grid: expected [{}, Cout, {ph}, {pw}] \
                     ({} images of {}×{} patches of {ph}×{pw})",
                    self.shape(),
                    grid.tokens(),
                    grid.batch,
                    grid.rows(),
                    grid.cols()
                ),
            ));
        }
        let grid = PatchGrid {
            channels: dims[1],
            ..grid.without_halo()
        };
        let out = self.backend().patch_reassemble(&self.storage(), grid)?;
        Tensor::from_op(op, out, grid.map_shape(), &[self], move || {
            Box::new(move |g: &Tensor, needs: &[bool]| {
                let grad = needs[0]
                    .then(|| {
                        let grad = g.backend().patch_reassemble_backward(&g.storage(), grid)?;
                        Tensor::from_storage(grad, grid.token_shape())
                    })
                    .transpose()?;
                Ok(vec![grad])
            })
        })
    }
}
