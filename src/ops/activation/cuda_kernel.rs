//! CUDA launchers of the activation family (kernels in `kernels/activation.cu`).

use super::{Activation, ActivationBackend, ChannelLayout};
use crate::backend::cuda::runtime::{dim32, grid_for, BLOCK};
use crate::backend::cuda::CudaBackend;
use crate::error::Result;
use crate::tensor::Storage;
use cudarc::driver::{DeviceRepr, LaunchConfig};

const FAMILY: &str = "activation";

/// One activation launch (mirror: `ActivationParams` in activation.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ActivationParams {
    pub n: u64,
    pub op: u32,
    pub negative_slope: f32,
}

/// A `[outer, channels, inner]` view (mirror: `ChannelParams` in activation.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ChannelParams {
    pub outer: u32,
    pub channels: u32,
    pub inner: u32,
    pub pad: u32,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu structs.
unsafe impl DeviceRepr for ActivationParams {}
const _: () = assert!(
    std::mem::size_of::<ActivationParams>() == 16,
    "ActivationParams: size of the .cu struct"
);
unsafe impl DeviceRepr for ChannelParams {}
const _: () = assert!(
    std::mem::size_of::<ChannelParams>() == 16,
    "ChannelParams: size of the .cu struct"
);

impl ChannelParams {
    /// The view of `layout`, or an error naming `op` when a size does not fit 32 bits.
    pub fn new(op: &'static str, layout: ChannelLayout) -> Result<Self> {
        Ok(ChannelParams {
            outer: dim32(op, layout.outer)?,
            channels: dim32(op, layout.channels)?,
            inner: dim32(op, layout.inner)?,
            pad: 0,
        })
    }
}

/// The params of `op` over `n` elements (codes: the `A_*` enum of activation.cu).
fn params(op: Activation, n: usize) -> ActivationParams {
    let (code, negative_slope) = match op {
        Activation::Relu => (0, 0.0),
        Activation::LeakyRelu { negative_slope } => (1, negative_slope),
        Activation::Sigmoid => (2, 0.0),
        Activation::Tanh => (3, 0.0),
        Activation::Hardswish => (4, 0.0),
        Activation::Hardsigmoid => (5, 0.0),
        Activation::Gelu => (6, 0.0),
        Activation::GeluTanh => (7, 0.0),
    };
    ActivationParams {
        n: n as u64,
        op: code,
        negative_slope,
    }
}

impl ActivationBackend for CudaBackend {
    fn activation_forward(&self, op: Activation, x: &Storage) -> Result<Storage> {
        let x = self.buffer("activation", x)?;
        let n = x.len();
        self.launch_into(
            FAMILY,
            "activation_forward",
            grid_for(n),
            &params(op, n),
            &[x],
            n,
        )
    }

    fn activation_backward(
        &self,
        op: Activation,
        saved: &Storage,
        grad_out: &Storage,
    ) -> Result<Storage> {
        let saved = self.buffer("activation_backward", saved)?;
        let g = self.buffer("activation_backward", grad_out)?;
        let n = saved.len();
        let p = params(op, n);
        self.launch_into(
            FAMILY,
            "activation_backward",
            grid_for(n),
            &p,
            &[saved, g],
            n,
        )
    }

    fn prelu_forward(
        &self,
        x: &Storage,
        weight: &Storage,
        layout: ChannelLayout,
    ) -> Result<Storage> {
        let (x, w) = (self.buffer("prelu", x)?, self.buffer("prelu", weight)?);
        let p = ChannelParams::new("prelu", layout)?;
        let n = x.len();
        self.launch_into(FAMILY, "prelu_forward", grid_for(n), &p, &[x, w], n)
    }

    fn prelu_backward(
        &self,
        x: &Storage,
        weight: &Storage,
        grad_out: &Storage,
        layout: ChannelLayout,
    ) -> Result<(Storage, Storage)> {
        const OP: &str = "prelu_backward";
        let (x, w, g) = (
            self.buffer(OP, x)?,
            self.buffer(OP, weight)?,
            self.buffer(OP, grad_out)?,
        );
        let p = ChannelParams::new(OP, layout)?;
        let n = x.len();
        let grad_x = self.launch_into(
            FAMILY,
            "prelu_backward_input",
            grid_for(n),
            &p,
            &[x, w, g],
            n,
        )?;
        let per_channel = LaunchConfig {
            grid_dim: (p.channels.max(1), 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let grad_w = self.launch_into(
            FAMILY,
            "prelu_backward_weight",
            per_channel,
            &p,
            &[x, g],
            layout.channels,
        )?;
        Ok((grad_x, grad_w))
    }
}
