//! CUDA launchers of the norm family (kernels in `kernels/norm.cu`).
//!
//! STATUS: no CUDA kernels yet; every method returns `Error::Unsupported`.

use super::*;
use crate::backend::cuda::runtime::no_kernel;
use crate::backend::cuda::CudaBackend;

impl NormBackend for CudaBackend {
    fn batch_norm_statistics(
        &self,
        _x: &Storage,
        _layout: ChannelLayout,
    ) -> Result<(Storage, Storage)> {
        no_kernel("batch_norm_statistics")
    }

    #[allow(clippy::too_many_arguments)]
    fn batch_norm_forward(
        &self,
        _x: &Storage,
        _mean: &Storage,
        _var: &Storage,
        _weight: Option<&Storage>,
        _bias: Option<&Storage>,
        _layout: ChannelLayout,
        _eps: f32,
    ) -> Result<Storage> {
        no_kernel("batch_norm_forward")
    }

    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward(
        &self,
        _x: &Storage,
        _grad_out: &Storage,
        _mean: &Storage,
        _var: &Storage,
        _weight: Option<&Storage>,
        _layout: ChannelLayout,
        _eps: f32,
        _training: bool,
    ) -> Result<BatchNormGrads> {
        no_kernel("batch_norm_backward")
    }
}
