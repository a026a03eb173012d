//! CUDA launchers of the pool family (kernels in `kernels/pool.cu`).
//!
//! STATUS: no CUDA kernels yet; every method returns `Error::Unsupported`.

use super::*;
use crate::backend::cuda::runtime::no_kernel;
use crate::backend::cuda::CudaBackend;

impl PoolBackend for CudaBackend {
    fn max_pool2d_with_indices(
        &self,
        _x: &Storage,
        _geometry: Pool2dGeometry,
    ) -> Result<(Storage, Storage)> {
        no_kernel("max_pool2d_with_indices")
    }

    fn max_pool2d_with_indices_backward(
        &self,
        _grad_out: &Storage,
        _indices: &Storage,
        _geometry: Pool2dGeometry,
    ) -> Result<Storage> {
        no_kernel("max_pool2d_with_indices_backward")
    }

    fn max_unpool2d(
        &self,
        _x: &Storage,
        _indices: &Storage,
        _sizes: PlaneResize,
    ) -> Result<Storage> {
        no_kernel("max_unpool2d")
    }

    fn max_unpool2d_backward(
        &self,
        _grad_out: &Storage,
        _indices: &Storage,
        _sizes: PlaneResize,
    ) -> Result<Storage> {
        no_kernel("max_unpool2d_backward")
    }

    fn avg_pool2d(&self, _x: &Storage, _geometry: AvgPool2dGeometry) -> Result<Storage> {
        no_kernel("avg_pool2d")
    }

    fn avg_pool2d_backward(
        &self,
        _grad_out: &Storage,
        _geometry: AvgPool2dGeometry,
    ) -> Result<Storage> {
        no_kernel("avg_pool2d_backward")
    }

    fn adaptive_avg_pool2d(&self, _x: &Storage, _sizes: PlaneResize) -> Result<Storage> {
        no_kernel("adaptive_avg_pool2d")
    }

    fn adaptive_avg_pool2d_backward(
        &self,
        _grad_out: &Storage,
        _sizes: PlaneResize,
    ) -> Result<Storage> {
        no_kernel("adaptive_avg_pool2d_backward")
    }
}
