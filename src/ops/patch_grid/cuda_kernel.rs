//! CUDA launchers of the patch_grid family (kernels in `kernels/patch_grid.cu`).
//!
//! STATUS: no CUDA kernels yet; every method returns `Error::Unsupported`.

use super::*;
use crate::backend::cuda::runtime::no_kernel;
use crate::backend::cuda::CudaBackend;

impl PatchGridBackend for CudaBackend {
    fn patch_split(&self, _x: &Storage, _grid: PatchGrid) -> Result<Storage> {
        no_kernel("patch_split")
    }

    fn patch_split_backward(&self, _grad_tokens: &Storage, _grid: PatchGrid) -> Result<Storage> {
        no_kernel("patch_split_backward")
    }

    fn patch_reassemble(&self, _tokens: &Storage, _grid: PatchGrid) -> Result<Storage> {
        no_kernel("patch_reassemble")
    }

    fn patch_reassemble_backward(&self, _grad_map: &Storage, _grid: PatchGrid) -> Result<Storage> {
        no_kernel("patch_reassemble_backward")
    }
}
