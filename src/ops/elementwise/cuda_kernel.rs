//! CUDA launchers of the elementwise family (kernels in `kernels/elementwise.cu`).
//!
//! STATUS: no CUDA kernels yet; every method returns `Error::Unsupported`.

use super::*;
use crate::backend::cuda::runtime::no_kernel;
use crate::backend::cuda::CudaBackend;

impl ElementwiseBackend for CudaBackend {
    fn unary(&self, _op: UnaryOp, _x: &Storage) -> Result<Storage> {
        no_kernel("unary")
    }

    fn binary(
        &self,
        _op: BinaryOp,
        _lhs: &Storage,
        _lhs_shape: &Shape,
        _rhs: &Storage,
        _rhs_shape: &Shape,
        _out_shape: &Shape,
    ) -> Result<Storage> {
        no_kernel("binary")
    }

    fn broadcast_to(&self, _x: &Storage, _shape: &Shape, _target: &Shape) -> Result<Storage> {
        no_kernel("broadcast_to")
    }
}

impl CudaBackend {
    /// `len` elements all equal to `value`.
    pub(crate) fn fill(&self, _len: usize, _value: f32) -> Result<Storage> {
        no_kernel("fill")
    }
}
