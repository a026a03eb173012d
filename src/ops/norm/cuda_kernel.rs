//! CUDA launchers of the norm family (kernels in `kernels/norm.cu`).

use super::{BatchNormGrads, LayerNormForward, LayerNormGrads, NormBackend, RowLayout};
use crate::backend::cuda::runtime::{dim32, grid_for};
use crate::backend::cuda::{CudaBackend, CudaBuffer};
use crate::error::Result;
use crate::ops::activation::ChannelLayout;
use crate::tensor::Storage;
use cudarc::driver::{DeviceRepr, LaunchConfig};

const FAMILY: &str = "norm";

/// Threads per block of the per-channel kernels (mirror: `NORM_BLOCK` in norm.cu).
const NORM_BLOCK: u32 = 256;

/// One launch (mirror: `NormParams` in norm.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NormParams {
    pub outer: u32,
    pub channels: u32,
    pub inner: u32,
    pub has_weight: u32,
    pub has_bias: u32,
    pub training: u32,
    pub eps: f32,
    pub pad: u32,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu struct.
unsafe impl DeviceRepr for NormParams {}
const _: () = assert!(
    std::mem::size_of::<NormParams>() == 32,
    "NormParams: size of the .cu struct"
);

/// One layer norm launch (mirror: `LayerNormParams` in norm.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LayerNormParams {
    pub rows: u32,
    pub dim: u32,
    pub has_weight: u32,
    pub has_bias: u32,
    pub eps: f32,
    pub pad: u32,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu struct.
unsafe impl DeviceRepr for LayerNormParams {}
const _: () = assert!(
    std::mem::size_of::<LayerNormParams>() == 24,
    "LayerNormParams: size of the .cu struct"
);

/// Upper bound on the blocks of a block-per-row (or per-column) launch; the kernels stride
/// over the rest.
const MAX_ROW_BLOCKS: usize = 1 << 20;

fn layer_norm_params(op: &'static str, layout: RowLayout, eps: f32) -> Result<LayerNormParams> {
    Ok(LayerNormParams {
        rows: dim32(op, layout.rows)?,
        dim: dim32(op, layout.dim)?,
        eps,
        ..Default::default()
    })
}

/// One block of [`NORM_BLOCK`] threads per item (row or column), at most [`MAX_ROW_BLOCKS`].
fn per_item(items: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (items.clamp(1, MAX_ROW_BLOCKS) as u32, 1, 1),
        block_dim: (NORM_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn params(op: &'static str, layout: ChannelLayout, eps: f32) -> Result<NormParams> {
    Ok(NormParams {
        outer: dim32(op, layout.outer)?,
        channels: dim32(op, layout.channels)?,
        inner: dim32(op, layout.inner)?,
        eps,
        ..Default::default()
    })
}

/// One block of [`NORM_BLOCK`] threads per channel.
fn per_channel(channels: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (channels.max(1), 1, 1),
        block_dim: (NORM_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaBackend {
    /// The buffer of an optional operand, or `dummy` (never read) when absent.
    fn optional<'s>(
        &self,
        op: &'static str,
        storage: Option<&'s Storage>,
        dummy: &'s CudaBuffer,
    ) -> Result<(&'s CudaBuffer, u32)> {
        match storage {
            Some(s) => Ok((self.buffer(op, s)?, 1)),
            None => Ok((dummy, 0)),
        }
    }
}

impl NormBackend for CudaBackend {
    fn batch_norm_statistics(
        &self,
        x: &Storage,
        layout: ChannelLayout,
    ) -> Result<(Storage, Storage)> {
        const OP: &str = "batch_norm_statistics";
        let x = self.buffer(OP, x)?;
        let p = params(OP, layout, 0.0)?;
        let (mean, var) = (self.alloc(layout.channels)?, self.alloc(layout.channels)?);
        if layout.channels > 0 {
            self.launch(FAMILY, OP, per_channel(p.channels), &p, &[x, &mean, &var])?;
        }
        Ok((Storage::Cuda(mean), Storage::Cuda(var)))
    }

    fn batch_norm_forward(
        &self,
        x: &Storage,
        mean: &Storage,
        var: &Storage,
        weight: Option<&Storage>,
        bias: Option<&Storage>,
        layout: ChannelLayout,
        eps: f32,
    ) -> Result<Storage> {
        const OP: &str = "batch_norm2d";
        let x = self.buffer(OP, x)?;
        let (mean, var) = (self.buffer(OP, mean)?, self.buffer(OP, var)?);
        let (w, has_weight) = self.optional(OP, weight, x)?;
        let (b, has_bias) = self.optional(OP, bias, x)?;
        let p = NormParams {
            has_weight,
            has_bias,
            ..params(OP, layout, eps)?
        };
        let n = x.len();
        self.launch_into(
            FAMILY,
            "batch_norm_forward",
            grid_for(n),
            &p,
            &[x, mean, var, w, b],
            n,
        )
    }

    fn batch_norm_backward(
        &self,
        x: &Storage,
        grad_out: &Storage,
        mean: &Storage,
        var: &Storage,
        weight: Option<&Storage>,
        layout: ChannelLayout,
        eps: f32,
        training: bool,
    ) -> Result<BatchNormGrads> {
        const OP: &str = "batch_norm2d_backward";
        let (x, g) = (self.buffer(OP, x)?, self.buffer(OP, grad_out)?);
        let (mean, var) = (self.buffer(OP, mean)?, self.buffer(OP, var)?);
        let (w, has_weight) = self.optional(OP, weight, x)?;
        let p = NormParams {
            has_weight,
            training: u32::from(training),
            ..params(OP, layout, eps)?
        };
        let (grad_weight, grad_bias) = (self.alloc(layout.channels)?, self.alloc(layout.channels)?);
        if layout.channels > 0 {
            let buffers = [x, g, mean, var, &grad_weight, &grad_bias];
            self.launch(
                FAMILY,
                "batch_norm_backward_sums",
                per_channel(p.channels),
                &p,
                &buffers,
            )?;
        }
        let n = x.len();
        let inputs = [x, g, mean, var, w, &grad_weight, &grad_bias];
        let grad_x = self.launch_into(
            FAMILY,
            "batch_norm_backward_input",
            grid_for(n),
            &p,
            &inputs,
            n,
        )?;
        Ok(BatchNormGrads {
            input: grad_x,
            weight: Storage::Cuda(grad_weight),
            bias: Storage::Cuda(grad_bias),
        })
    }

    fn layer_norm_forward(
        &self,
        x: &Storage,
        weight: Option<&Storage>,
        bias: Option<&Storage>,
        layout: RowLayout,
        eps: f32,
    ) -> Result<LayerNormForward> {
        const OP: &str = "layer_norm";
        let x = self.buffer(OP, x)?;
        let (w, has_weight) = self.optional(OP, weight, x)?;
        let (b, has_bias) = self.optional(OP, bias, x)?;
        let p = LayerNormParams {
            has_weight,
            has_bias,
            ..layer_norm_params(OP, layout, eps)?
        };
        let y = self.alloc(x.len())?;
        let (mean, rstd) = (self.alloc(layout.rows)?, self.alloc(layout.rows)?);
        if layout.rows > 0 {
            let buffers = [x, w, b, &y, &mean, &rstd];
            self.launch(
                FAMILY,
                "layer_norm_forward",
                per_item(layout.rows),
                &p,
                &buffers,
            )?;
        }
        Ok(LayerNormForward {
            output: Storage::Cuda(y),
            mean: Storage::Cuda(mean),
            rstd: Storage::Cuda(rstd),
        })
    }

    fn layer_norm_backward(
        &self,
        x: &Storage,
        grad_out: &Storage,
        statistics: &LayerNormForward,
        weight: Option<&Storage>,
        layout: RowLayout,
    ) -> Result<LayerNormGrads> {
        const OP: &str = "layer_norm_backward";
        let (x, g) = (self.buffer(OP, x)?, self.buffer(OP, grad_out)?);
        let mean = self.buffer(OP, &statistics.mean)?;
        let rstd = self.buffer(OP, &statistics.rstd)?;
        let (w, has_weight) = self.optional(OP, weight, x)?;
        let p = LayerNormParams {
            has_weight,
            ..layer_norm_params(OP, layout, 0.0)?
        };
        let grad_x = self.alloc(x.len())?;
        let (grad_weight, grad_bias) = (self.alloc(layout.dim)?, self.alloc(layout.dim)?);
        if layout.rows > 0 {
            let buffers = [x, g, mean, rstd, w, &grad_x];
            let config = per_item(layout.rows);
            self.launch(FAMILY, "layer_norm_backward_input", config, &p, &buffers)?;
        }
        if layout.dim > 0 {
            let buffers = [x, g, mean, rstd, &grad_weight, &grad_bias];
            let config = per_item(layout.dim);
            self.launch(
                FAMILY,
                "layer_norm_backward_parameters",
                config,
                &p,
                &buffers,
            )?;
        }
        Ok(LayerNormGrads {
            input: Storage::Cuda(grad_x),
            weight: Storage::Cuda(grad_weight),
            bias: Storage::Cuda(grad_bias),
        })
    }
}
