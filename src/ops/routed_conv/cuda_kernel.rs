//! CUDA launchers of the routed_conv family (kernels in `kernels/routed_conv.cu`).
//!
//! STATUS: the combine and the routing-weight gradient have kernels (compile-checked under
//! NVRTC only); the expert dispatch (slot outputs) and its token / weight / bias gradients
//! return `Error::Unsupported` until their kernels are written.

use super::*;
use crate::backend::cuda::runtime::{dim32, grid_for, grid_per_row, no_kernel};
use crate::backend::cuda::CudaBackend;
use cudarc::driver::DeviceRepr;

/// Threads per block of the dot-product kernel (mirror: `ROUTED_BLOCK` in routed_conv.cu).
const ROUTED_BLOCK: u32 = 256;

/// One launch (mirror: `RoutedParams` in routed_conv.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RoutedParams {
    pub tokens: u32,
    pub slots: u32,
    pub per_token: u64,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu struct.
unsafe impl DeviceRepr for RoutedParams {}
const _: () = assert!(
    std::mem::size_of::<RoutedParams>() == 16,
    "RoutedParams: size of the .cu struct"
);
const _: () = assert!(
    std::mem::offset_of!(RoutedParams, per_token) == 8,
    "RoutedParams: 64-bit field offset"
);

fn routed_params(op: &'static str, g: &RoutedConvGeometry) -> Result<RoutedParams> {
    Ok(RoutedParams {
        tokens: dim32(op, g.tokens)?,
        slots: dim32(op, g.slots)?,
        per_token: g.token_conv().output_len() as u64,
    })
}

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
        slot_outputs: &Storage,
        routing_weights: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        const OP: &str = "routed_conv_combine";
        let (s, w) = (
            self.buffer(OP, slot_outputs)?,
            self.buffer(OP, routing_weights)?,
        );
        let p = routed_params(OP, &geometry)?;
        let n = geometry.output_len();
        self.launch_into("routed_conv", OP, grid_for(n), &p, &[s, w], n)
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
        grad_out: &Storage,
        slot_outputs: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        const OP: &str = "routed_conv_routing_weights_backward";
        let (g, s) = (self.buffer(OP, grad_out)?, self.buffer(OP, slot_outputs)?);
        let p = routed_params(OP, &geometry)?;
        let n = geometry.tokens * geometry.slots;
        self.launch_into(
            "routed_conv",
            OP,
            grid_per_row(n, ROUTED_BLOCK),
            &p,
            &[g, s],
            n,
        )
    }
}
