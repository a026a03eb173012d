//! CUDA launchers of the routed_conv family (kernels in `kernels/routed_conv.cu`).
//!
//! STATUS: no CUDA kernels yet; every method returns `Error::Unsupported`.

use super::*;
use crate::backend::cuda::runtime::no_kernel;
use crate::backend::cuda::CudaBackend;

impl RoutedConvBackend for CudaBackend {
    fn routed_conv_expert_outputs(
        &self,
        _tokens: &Storage,
        _weights: &Storage,
        _biases: Option<&Storage>,
        _indices: &Storage,
        _geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        no_kernel("routed_conv_expert_outputs")
    }

    fn routed_conv_combine(
        &self,
        _slot_outputs: &Storage,
        _routing_weights: &Storage,
        _geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        no_kernel("routed_conv_combine")
    }

    fn routed_conv_tokens_backward(
        &self,
        _grad_out: &Storage,
        _weights: &Storage,
        _indices: &Storage,
        _routing_weights: &Storage,
        _geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        no_kernel("routed_conv_tokens_backward")
    }

    fn routed_conv_expert_weights_backward(
        &self,
        _grad_out: &Storage,
        _tokens: &Storage,
        _indices: &Storage,
        _routing_weights: &Storage,
        _geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        no_kernel("routed_conv_expert_weights_backward")
    }

    fn routed_conv_expert_biases_backward(
        &self,
        _grad_out: &Storage,
        _indices: &Storage,
        _routing_weights: &Storage,
        _geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        no_kernel("routed_conv_expert_biases_backward")
    }

    fn routed_conv_routing_weights_backward(
        &self,
        _grad_out: &Storage,
        _slot_outputs: &Storage,
        _geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        no_kernel("routed_conv_routing_weights_backward")
    }
}
