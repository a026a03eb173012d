//! CUDA launchers of the reduce family (kernels in `kernels/reduce.cu`).
//!
//! STATUS: no CUDA kernels yet; every method returns `Error::Unsupported`.

use super::*;
use crate::backend::cuda::runtime::no_kernel;
use crate::backend::cuda::CudaBackend;

impl ReduceBackend for CudaBackend {
    fn sum_axis(
        &self,
        _x: &Storage,
        _outer: usize,
        _size: usize,
        _inner: usize,
    ) -> Result<Storage> {
        no_kernel("sum_axis")
    }

    fn max_axis(
        &self,
        _x: &Storage,
        _outer: usize,
        _size: usize,
        _inner: usize,
    ) -> Result<(Storage, Storage)> {
        no_kernel("max_axis")
    }

    fn max_axis_backward(
        &self,
        _grad_out: &Storage,
        _indices: &Storage,
        _outer: usize,
        _size: usize,
        _inner: usize,
    ) -> Result<Storage> {
        no_kernel("max_axis_backward")
    }
}
