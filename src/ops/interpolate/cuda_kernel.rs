//! CUDA launchers of the interpolate family (kernels in `kernels/interpolate.cu`).
//!
//! STATUS: no CUDA kernels yet; every method returns `Error::Unsupported`.

use super::*;
use crate::backend::cuda::runtime::no_kernel;
use crate::backend::cuda::CudaBackend;

impl InterpolateBackend for CudaBackend {
    fn interpolate(&self, _x: &Storage, _geometry: InterpolateGeometry) -> Result<Storage> {
        no_kernel("interpolate")
    }

    fn interpolate_backward(
        &self,
        _grad_out: &Storage,
        _geometry: InterpolateGeometry,
    ) -> Result<Storage> {
        no_kernel("interpolate_backward")
    }
}
