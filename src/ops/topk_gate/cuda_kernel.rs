//! CUDA launchers of the topk_gate family (kernels in `kernels/topk_gate.cu`).
//!
//! STATUS: no CUDA kernels yet; every method returns `Error::Unsupported`.

use super::*;
use crate::backend::cuda::runtime::no_kernel;
use crate::backend::cuda::CudaBackend;

impl TopkGateBackend for CudaBackend {
    fn topk_gate_forward(
        &self,
        _logits: &Storage,
        _selection: Option<&Storage>,
        _tokens: usize,
        _experts: usize,
        _params: TopkGateParams,
    ) -> Result<TopkGateStorages> {
        no_kernel("topk_gate_forward")
    }

    fn routing_weights_backward(
        &self,
        _grad_weights: &Storage,
        _probs: &Storage,
        _indices: &Storage,
        _tokens: usize,
        _experts: usize,
        _params: TopkGateParams,
    ) -> Result<Storage> {
        no_kernel("routing_weights_backward")
    }
}
