//! CUDA launchers of the activation family (kernels in `kernels/activation.cu`).
//!
//! STATUS: no CUDA kernels yet; every method returns `Error::Unsupported`.

use super::*;
use crate::backend::cuda::runtime::no_kernel;
use crate::backend::cuda::CudaBackend;

impl ActivationBackend for CudaBackend {
    fn activation_forward(&self, _op: Activation, _x: &Storage) -> Result<Storage> {
        no_kernel("activation_forward")
    }

    fn activation_backward(
        &self,
        _op: Activation,
        _saved: &Storage,
        _grad_out: &Storage,
    ) -> Result<Storage> {
        no_kernel("activation_backward")
    }

    fn prelu_forward(
        &self,
        _x: &Storage,
        _weight: &Storage,
        _layout: ChannelLayout,
    ) -> Result<Storage> {
        no_kernel("prelu_forward")
    }

    fn prelu_backward(
        &self,
        _x: &Storage,
        _weight: &Storage,
        _grad_out: &Storage,
        _layout: ChannelLayout,
    ) -> Result<(Storage, Storage)> {
        no_kernel("prelu_backward")
    }
}
