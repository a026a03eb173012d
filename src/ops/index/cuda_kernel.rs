//! CUDA launchers of the index family (kernels in `kernels/index.cu`).
//!
//! STATUS: no CUDA kernels yet; every method returns `Error::Unsupported`.

use super::*;
use crate::backend::cuda::runtime::no_kernel;
use crate::backend::cuda::CudaBackend;

impl IndexBackend for CudaBackend {
    fn gather(&self, _x: &Storage, _index: &Storage, _p: AxisIndexParams) -> Result<Storage> {
        no_kernel("gather")
    }

    fn scatter_add(
        &self,
        _base: &Storage,
        _index: &Storage,
        _src: &Storage,
        _p: AxisIndexParams,
    ) -> Result<Storage> {
        no_kernel("scatter_add")
    }

    fn index_select(
        &self,
        _x: &Storage,
        _indices: &Storage,
        _p: AxisIndexParams,
    ) -> Result<Storage> {
        no_kernel("index_select")
    }

    fn index_select_backward(
        &self,
        _grad_out: &Storage,
        _indices: &Storage,
        _p: AxisIndexParams,
    ) -> Result<Storage> {
        no_kernel("index_select_backward")
    }

    fn topk(&self, _x: &Storage, _p: TopkParams) -> Result<(Storage, Storage)> {
        no_kernel("topk")
    }
}
