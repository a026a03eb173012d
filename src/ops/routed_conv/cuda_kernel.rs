//! CUDA launchers of the routed-conv family (kernels in `kernels/routed_conv.cu`): the sparse
//! expert dispatch, the deterministic slot-order combine, and every gradient, each a gathering
//! kernel (no atomics).

use super::{RoutedConvBackend, RoutedConvGeometry};
use crate::backend::cuda::runtime::{dim32, grid_for, grid_per_row};
use crate::backend::cuda::CudaBackend;
use crate::error::Result;
use crate::tensor::Storage;
use cudarc::driver::DeviceRepr;

const FAMILY: &str = "routed_conv";

/// Threads per block of the dot-product kernel (mirror: `ROUTED_BLOCK` in routed_conv.cu).
const ROUTED_BLOCK: u32 = 256;

/// One launch (mirror: `RoutedParams` in routed_conv.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RoutedParams {
    pub tokens: u32,
    pub slots: u32,
    pub experts: u32,
    pub in_channels: u32,
    pub token_h: u32,
    pub token_w: u32,
    pub out_channels: u32,
    pub kernel_h: u32,
    pub kernel_w: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub dilation_h: u32,
    pub dilation_w: u32,
    pub groups: u32,
    pub has_bias: u32,
    pub pad: u32,
    /// `Cout · oh · ow`.
    pub per_token: u64,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu struct.
unsafe impl DeviceRepr for RoutedParams {}
const _: () = assert!(
    std::mem::size_of::<RoutedParams>() == 72,
    "RoutedParams: size of the .cu struct"
);
const _: () = assert!(
    std::mem::offset_of!(RoutedParams, per_token) == 64,
    "RoutedParams: 64-bit field offset"
);

fn routed_params(op: &'static str, g: &RoutedConvGeometry) -> Result<RoutedParams> {
    Ok(RoutedParams {
        tokens: dim32(op, g.tokens)?,
        slots: dim32(op, g.slots)?,
        experts: dim32(op, g.experts)?,
        in_channels: dim32(op, g.in_channels)?,
        token_h: dim32(op, g.token_size[0])?,
        token_w: dim32(op, g.token_size[1])?,
        out_channels: dim32(op, g.out_channels)?,
        kernel_h: dim32(op, g.kernel[0])?,
        kernel_w: dim32(op, g.kernel[1])?,
        out_h: dim32(op, g.out_size[0])?,
        out_w: dim32(op, g.out_size[1])?,
        dilation_h: dim32(op, g.params.dilation[0])?,
        dilation_w: dim32(op, g.params.dilation[1])?,
        groups: dim32(op, g.params.groups.max(1))?,
        has_bias: 0,
        pad: 0,
        per_token: g.token_conv().output_len() as u64,
    })
}

impl RoutedConvBackend for CudaBackend {
    fn routed_conv_expert_outputs(
        &self,
        tokens: &Storage,
        weights: &Storage,
        biases: Option<&Storage>,
        indices: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        const OP: &str = "routed_conv_expert_outputs";
        let (x, w) = (self.buffer(OP, tokens)?, self.buffer(OP, weights)?);
        let idx = self.buffer(OP, indices)?;
        let b = biases.map(|b| self.buffer(OP, b)).transpose()?;
        let p = RoutedParams {
            has_bias: u32::from(b.is_some()),
            ..routed_params(OP, &geometry)?
        };
        let n = geometry.slot_outputs_len();
        self.launch_into(FAMILY, OP, grid_for(n), &p, &[x, w, b.unwrap_or(w), idx], n)
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
        self.launch_into(FAMILY, OP, grid_for(n), &p, &[s, w], n)
    }

    fn routed_conv_tokens_backward(
        &self,
        grad_out: &Storage,
        weights: &Storage,
        indices: &Storage,
        routing_weights: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        const OP: &str = "routed_conv_tokens_backward";
        let (g, w) = (self.buffer(OP, grad_out)?, self.buffer(OP, weights)?);
        let (idx, r) = (self.buffer(OP, indices)?, self.buffer(OP, routing_weights)?);
        let p = routed_params(OP, &geometry)?;
        let n = geometry.tokens_len();
        self.launch_into(FAMILY, OP, grid_for(n), &p, &[g, w, idx, r], n)
    }

    fn routed_conv_expert_weights_backward(
        &self,
        grad_out: &Storage,
        tokens: &Storage,
        indices: &Storage,
        routing_weights: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        const OP: &str = "routed_conv_expert_weights_backward";
        let (g, x) = (self.buffer(OP, grad_out)?, self.buffer(OP, tokens)?);
        let (idx, r) = (self.buffer(OP, indices)?, self.buffer(OP, routing_weights)?);
        let p = routed_params(OP, &geometry)?;
        let n = geometry.experts * geometry.expert_weight_len();
        self.launch_into(FAMILY, OP, grid_for(n), &p, &[g, x, idx, r], n)
    }

    fn routed_conv_expert_biases_backward(
        &self,
        grad_out: &Storage,
        indices: &Storage,
        routing_weights: &Storage,
        geometry: RoutedConvGeometry,
    ) -> Result<Storage> {
        const OP: &str = "routed_conv_expert_biases_backward";
        let g = self.buffer(OP, grad_out)?;
        let (idx, r) = (self.buffer(OP, indices)?, self.buffer(OP, routing_weights)?);
        let p = routed_params(OP, &geometry)?;
        let n = geometry.experts * geometry.out_channels;
        self.launch_into(FAMILY, OP, grid_for(n), &p, &[g, idx, r], n)
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
        self.launch_into(FAMILY, OP, grid_per_row(n, ROUTED_BLOCK), &p, &[g, s], n)
    }
}
