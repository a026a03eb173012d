//! CUDA launchers of the shape family (kernels in `kernels/shape.cu`).
//!
//! STATUS: no CUDA kernels yet; every method returns `Error::Unsupported`.

use super::*;
use crate::backend::cuda::runtime::no_kernel;
use crate::backend::cuda::CudaBackend;

impl ShapeBackend for CudaBackend {
    fn permute(&self, _x: &Storage, _shape: &Shape, _axes: &[usize]) -> Result<Storage> {
        no_kernel("permute")
    }

    fn concat(&self, _parts: &[&Storage], _outer: usize, _widths: &[usize]) -> Result<Storage> {
        no_kernel("concat")
    }

    fn narrow(&self, _x: &Storage, _params: NarrowParams) -> Result<Storage> {
        no_kernel("narrow")
    }

    fn narrow_backward(&self, _grad_out: &Storage, _params: NarrowParams) -> Result<Storage> {
        no_kernel("narrow_backward")
    }

    fn pad(
        &self,
        _x: &Storage,
        _shape: &Shape,
        _padding: &[(usize, usize)],
        _value: f32,
    ) -> Result<Storage> {
        no_kernel("pad")
    }

    fn pad_backward(
        &self,
        _grad_out: &Storage,
        _shape: &Shape,
        _padding: &[(usize, usize)],
    ) -> Result<Storage> {
        no_kernel("pad_backward")
    }
}
