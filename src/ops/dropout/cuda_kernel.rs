//! CUDA launchers of the dropout family (kernels in `kernels/dropout.cu`).
//!
//! STATUS: no CUDA kernels yet; every method returns `Error::Unsupported`.

use super::*;
use crate::backend::cuda::runtime::no_kernel;
use crate::backend::cuda::CudaBackend;

impl DropoutBackend for CudaBackend {
    fn dropout_mask(&self, _len: usize, _p: f32, _seed: u64) -> Result<Storage> {
        no_kernel("dropout_mask")
    }
}
