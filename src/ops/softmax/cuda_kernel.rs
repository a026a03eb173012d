//! CUDA launchers of the softmax family (kernels in `kernels/softmax.cu`).
//!
//! STATUS: no CUDA kernels yet; every method returns `Error::Unsupported`.

use super::*;
use crate::backend::cuda::runtime::no_kernel;
use crate::backend::cuda::CudaBackend;

impl SoftmaxBackend for CudaBackend {
    fn softmax_forward(
        &self,
        _x: &Storage,
        _outer: usize,
        _size: usize,
        _inner: usize,
        _log: bool,
    ) -> Result<Storage> {
        no_kernel("softmax_forward")
    }

    fn softmax_backward(
        &self,
        _y: &Storage,
        _grad_out: &Storage,
        _outer: usize,
        _size: usize,
        _inner: usize,
        _log: bool,
    ) -> Result<Storage> {
        no_kernel("softmax_backward")
    }
}
