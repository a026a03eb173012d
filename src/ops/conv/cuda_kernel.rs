//! CUDA launchers of the conv family (kernels in `kernels/conv.cu`): implicit-GEMM forward,
//! input gradient and weight gradient with shared-memory tiles (groups on `blockIdx.z`), and
//! direct depthwise kernels when each group has one input channel.

use super::{Conv2dGeometry, ConvBackend};
use crate::backend::cuda::runtime::{dim32, grid_for, BLOCK};
use crate::backend::cuda::CudaBackend;
use crate::error::{Error, Result};
use crate::tensor::Storage;
use cudarc::driver::{DeviceRepr, LaunchConfig};

const FAMILY: &str = "conv";

/// Output tile edge of the implicit GEMM (mirror: `TILE` in conv.cu).
const TILE: u32 = 64;

/// One convolution (mirror: `ConvParams` in conv.cu: eighteen u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvParams {
    pub batch: u32,
    pub in_channels: u32,
    pub in_h: u32,
    pub in_w: u32,
    pub out_channels: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub kernel_h: u32,
    pub kernel_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_top: u32,
    pub pad_left: u32,
    pub dilation_h: u32,
    pub dilation_w: u32,
    pub groups: u32,
    pub has_bias: u32,
    pub pad: u32,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu struct.
unsafe impl DeviceRepr for ConvParams {}
const _: () = assert!(
    std::mem::size_of::<ConvParams>() == 72,
    "ConvParams: size of the .cu struct"
);

impl ConvParams {
    /// The params of `g`, or an error naming `op` when a size does not fit 32 bits.
    pub fn new(op: &'static str, g: &Conv2dGeometry) -> Result<Self> {
        let c = &g.params;
        if c.groups == 0 || c.stride.contains(&0) || c.dilation.contains(&0) {
            return Err(Error::invalid(
                op,
                format!("groups, stride and dilation must be positive: {c:?}"),
            ));
        }
        Ok(ConvParams {
            batch: dim32(op, g.batch)?,
            in_channels: dim32(op, g.in_channels)?,
            in_h: dim32(op, g.in_size[0])?,
            in_w: dim32(op, g.in_size[1])?,
            out_channels: dim32(op, g.out_channels)?,
            out_h: dim32(op, g.out_size[0])?,
            out_w: dim32(op, g.out_size[1])?,
            kernel_h: dim32(op, g.kernel[0])?,
            kernel_w: dim32(op, g.kernel[1])?,
            stride_h: dim32(op, c.stride[0])?,
            stride_w: dim32(op, c.stride[1])?,
            pad_top: dim32(op, c.padding[0])?,
            pad_left: dim32(op, c.padding[2])?,
            dilation_h: dim32(op, c.dilation[0])?,
            dilation_w: dim32(op, c.dilation[1])?,
            groups: dim32(op, c.groups)?,
            has_bias: 0,
            pad: 0,
        })
    }
}

/// A grid of 64×64 tiles over `[m, n]`, one slice per group.
fn tiles(op: &'static str, m: usize, n: usize, groups: u32) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (
            dim32(op, n)?.div_ceil(TILE).max(1),
            dim32(op, m)?.div_ceil(TILE).max(1),
            groups,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// True for the direct depthwise kernels: one input channel per group.
fn depthwise(g: &Conv2dGeometry) -> bool {
    g.in_channels_per_group() == 1
}

impl ConvBackend for CudaBackend {
    fn conv2d(
        &self,
        x: &Storage,
        weight: &Storage,
        bias: Option<&Storage>,
        geometry: Conv2dGeometry,
    ) -> Result<Storage> {
        const OP: &str = "conv2d";
        let (x, w) = (self.buffer(OP, x)?, self.buffer(OP, weight)?);
        let bias = bias.map(|b| self.buffer(OP, b)).transpose()?;
        let p = ConvParams {
            has_bias: u32::from(bias.is_some()),
            ..ConvParams::new(OP, &geometry)?
        };
        let len = geometry.output_len();
        let inputs = [x, w, bias.unwrap_or(w)];
        if depthwise(&geometry) {
            return self.launch_into(FAMILY, "depthwise_forward", grid_for(len), &p, &inputs, len);
        }
        let m = geometry.out_channels_per_group();
        let n = geometry.batch * geometry.out_pixels();
        let config = tiles(OP, m, n, p.groups)?;
        self.launch_into(FAMILY, "conv2d_forward", config, &p, &inputs, len)
    }

    fn conv2d_input_backward(
        &self,
        grad_out: &Storage,
        weight: &Storage,
        geometry: Conv2dGeometry,
    ) -> Result<Storage> {
        const OP: &str = "conv2d_input_backward";
        let (g, w) = (self.buffer(OP, grad_out)?, self.buffer(OP, weight)?);
        let p = ConvParams::new(OP, &geometry)?;
        let len = geometry.input_len();
        if depthwise(&geometry) {
            return self.launch_into(
                FAMILY,
                "depthwise_input_backward",
                grid_for(len),
                &p,
                &[g, w],
                len,
            );
        }
        let m = geometry.in_channels_per_group();
        let n = geometry.batch * geometry.in_pixels();
        let config = tiles(OP, m, n, p.groups)?;
        self.launch_into(FAMILY, OP, config, &p, &[g, w], len)
    }

    fn conv2d_weight_backward(
        &self,
        grad_out: &Storage,
        x: &Storage,
        geometry: Conv2dGeometry,
    ) -> Result<Storage> {
        const OP: &str = "conv2d_weight_backward";
        let (g, x) = (self.buffer(OP, grad_out)?, self.buffer(OP, x)?);
        let p = ConvParams::new(OP, &geometry)?;
        let len = geometry.weight_len();
        if depthwise(&geometry) {
            let per_tap = LaunchConfig {
                grid_dim: (dim32(OP, len)?.max(1), 1, 1),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            return self.launch_into(
                FAMILY,
                "depthwise_weight_backward",
                per_tap,
                &p,
                &[g, x],
                len,
            );
        }
        let m = geometry.out_channels_per_group();
        let n = geometry.in_channels_per_group() * geometry.taps();
        let config = tiles(OP, m, n, p.groups)?;
        self.launch_into(FAMILY, OP, config, &p, &[g, x], len)
    }
}
