//! CUDA launchers of the conv family (kernels in `kernels/conv.cu`).
//!
//! STATUS: no CUDA kernels yet; every method returns `Error::Unsupported`.

use super::*;
use crate::backend::cuda::runtime::no_kernel;
use crate::backend::cuda::CudaBackend;

impl ConvBackend for CudaBackend {
    fn conv2d(
        &self,
        _x: &Storage,
        _weight: &Storage,
        _bias: Option<&Storage>,
        _geometry: Conv2dGeometry,
    ) -> Result<Storage> {
        no_kernel("conv2d")
    }

    fn conv2d_input_backward(
        &self,
        _grad_out: &Storage,
        _weight: &Storage,
        _geometry: Conv2dGeometry,
    ) -> Result<Storage> {
        no_kernel("conv2d_input_backward")
    }

    fn conv2d_weight_backward(
        &self,
        _grad_out: &Storage,
        _x: &Storage,
        _geometry: Conv2dGeometry,
    ) -> Result<Storage> {
        no_kernel("conv2d_weight_backward")
    }
}
