//! CUDA launchers of the matmul family (kernels in `kernels/matmul.cu`).
//!
//! STATUS: no CUDA kernels yet; every method returns `Error::Unsupported`.

use super::*;
use crate::backend::cuda::runtime::no_kernel;
use crate::backend::cuda::CudaBackend;

impl MatmulBackend for CudaBackend {
    fn matmul(&self, _lhs: &Storage, _rhs: &Storage, _dims: MatmulDims) -> Result<Storage> {
        no_kernel("matmul")
    }

    fn matmul_lhs_backward(
        &self,
        _grad_out: &Storage,
        _rhs: &Storage,
        _dims: MatmulDims,
    ) -> Result<Storage> {
        no_kernel("matmul_lhs_backward")
    }

    fn matmul_rhs_backward(
        &self,
        _lhs: &Storage,
        _grad_out: &Storage,
        _dims: MatmulDims,
    ) -> Result<Storage> {
        no_kernel("matmul_rhs_backward")
    }
}
