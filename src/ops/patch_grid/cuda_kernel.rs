//! CUDA launchers of the patch-grid family (kernels in `kernels/patch_grid.cu`).

use super::{PatchGrid, PatchGridBackend};
use crate::backend::cuda::runtime::{dim32, grid_for};
use crate::backend::cuda::CudaBackend;
use crate::error::Result;
use crate::tensor::Storage;
use cudarc::driver::DeviceRepr;

const FAMILY: &str = "patch_grid";

/// One launch (mirror: `PatchGridParams` in patch_grid.cu: ten u32, no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PatchGridParams {
    pub batch: u32,
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    pub patch_h: u32,
    pub patch_w: u32,
    pub halo_h: u32,
    pub halo_w: u32,
    pub rows: u32,
    pub cols: u32,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu struct.
unsafe impl DeviceRepr for PatchGridParams {}
const _: () = assert!(
    std::mem::size_of::<PatchGridParams>() == 40,
    "PatchGridParams: size of the .cu struct"
);

impl PatchGridParams {
    /// The params of `grid`, or an error naming `op` when a size does not fit 32 bits.
    pub fn new(op: &'static str, grid: PatchGrid) -> Result<Self> {
        Ok(PatchGridParams {
            batch: dim32(op, grid.batch)?,
            channels: dim32(op, grid.channels)?,
            height: dim32(op, grid.height)?,
            width: dim32(op, grid.width)?,
            patch_h: dim32(op, grid.patch[0])?,
            patch_w: dim32(op, grid.patch[1])?,
            halo_h: dim32(op, grid.halo[0])?,
            halo_w: dim32(op, grid.halo[1])?,
            rows: dim32(op, grid.rows())?,
            cols: dim32(op, grid.cols())?,
        })
    }
}

/// Elements of the token tensor of `grid`.
fn token_len(grid: PatchGrid) -> usize {
    grid.token_shape().iter().product()
}

/// Elements of the map of `grid`.
fn map_len(grid: PatchGrid) -> usize {
    grid.map_shape().iter().product()
}

impl CudaBackend {
    /// `kernel(params, input) → output of len elements`, the shape of all four launches.
    fn patch_launch(
        &self,
        op: &'static str,
        input: &Storage,
        grid: PatchGrid,
        len: usize,
    ) -> Result<Storage> {
        let x = self.buffer(op, input)?;
        let p = PatchGridParams::new(op, grid)?;
        self.launch_into(FAMILY, op, grid_for(len), &p, &[x], len)
    }
}

impl PatchGridBackend for CudaBackend {
    fn patch_split(&self, x: &Storage, grid: PatchGrid) -> Result<Storage> {
        self.patch_launch("patch_split", x, grid, token_len(grid))
    }

    fn patch_split_backward(&self, grad_tokens: &Storage, grid: PatchGrid) -> Result<Storage> {
        self.patch_launch("patch_split_backward", grad_tokens, grid, map_len(grid))
    }

    fn patch_reassemble(&self, tokens: &Storage, grid: PatchGrid) -> Result<Storage> {
        self.patch_launch("patch_reassemble", tokens, grid, map_len(grid))
    }

    /// The gradient has reassemble's input shape: tokens *without* halo (the kernel gathers
    /// with the halo set to 0), so the output has `token_len(grid.without_halo())` elements.
    fn patch_reassemble_backward(&self, grad_map: &Storage, grid: PatchGrid) -> Result<Storage> {
        let len = token_len(grid.without_halo());
        self.patch_launch("patch_reassemble_backward", grad_map, grid, len)
    }
}
