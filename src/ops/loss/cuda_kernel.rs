//! CUDA launchers of the loss family (kernels in `kernels/loss.cu`).
//!
//! STATUS: no CUDA kernels yet; every method returns `Error::Unsupported`.

use super::*;
use crate::backend::cuda::runtime::no_kernel;
use crate::backend::cuda::CudaBackend;

impl LossBackend for CudaBackend {
    fn cross_entropy_forward(
        &self,
        _logits: &Storage,
        _target: &Storage,
        _weight: Option<&Storage>,
        _layout: CrossEntropyLayout,
    ) -> Result<CrossEntropyForward> {
        no_kernel("cross_entropy_forward")
    }

    fn cross_entropy_backward(
        &self,
        _logits: &Storage,
        _target: &Storage,
        _weight: Option<&Storage>,
        _log_sum_exp: &Storage,
        _grad_loss: &Storage,
        _layout: CrossEntropyLayout,
    ) -> Result<Storage> {
        no_kernel("cross_entropy_backward")
    }
}
