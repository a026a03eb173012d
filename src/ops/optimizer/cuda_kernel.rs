//! CUDA launchers of the optimizer family (kernels in `kernels/optimizer.cu`).
//!
//! STATUS: no CUDA kernels yet; every method returns `Error::Unsupported`.

use super::*;
use crate::backend::cuda::runtime::no_kernel;
use crate::backend::cuda::CudaBackend;

impl OptimizerBackend for CudaBackend {
    fn sgd_update(
        &self,
        _hyper: SgdHyper,
        _param: &Storage,
        _grad: &Storage,
        _momentum_buffer: Option<&Storage>,
    ) -> Result<(Storage, Option<Storage>)> {
        no_kernel("sgd_update")
    }

    fn adam_update(
        &self,
        _hyper: AdamHyper,
        _param: &Storage,
        _grad: &Storage,
        _moments: &AdamMoments,
    ) -> Result<(Storage, AdamMoments)> {
        no_kernel("adam_update")
    }
}
