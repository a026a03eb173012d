//! CUDA launchers of the softmax family (kernels in `kernels/softmax.cu`).

use super::{RouteLayout, SoftmaxBackend};
use crate::backend::cuda::runtime::{dim32, grid_for};
use crate::backend::cuda::CudaBackend;
use crate::error::Result;
use crate::tensor::Storage;
use cudarc::driver::{DeviceRepr, LaunchConfig};

const FAMILY: &str = "softmax";

/// One launch (mirror: `SoftmaxParams` in softmax.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SoftmaxParams {
    pub outer: u32,
    pub size: u32,
    pub inner: u32,
    pub log: u32,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu struct.
unsafe impl DeviceRepr for SoftmaxParams {}
const _: () = assert!(
    std::mem::size_of::<SoftmaxParams>() == 16,
    "SoftmaxParams: size of the .cu struct"
);

/// One soft routing launch (mirror: `SoftRouteParams` in softmax.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SoftRouteParams {
    pub batch: u32,
    pub tokens: u32,
    pub slots: u32,
    pub pad: u32,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu struct.
unsafe impl DeviceRepr for SoftRouteParams {}
const _: () = assert!(
    std::mem::size_of::<SoftRouteParams>() == 16,
    "SoftRouteParams: size of the .cu struct"
);

/// Threads per block of the per-line kernels (mirror: `ROUTE_BLOCK` in softmax.cu).
const ROUTE_BLOCK: u32 = 256;

/// Upper bound on the blocks of the per-line kernels (they stride over the rest).
const MAX_LINE_BLOCKS: usize = 1 << 20;

/// The params and the number of lines (rows and columns over all batch items).
fn route_params(op: &'static str, layout: RouteLayout) -> Result<(SoftRouteParams, usize)> {
    let p = SoftRouteParams {
        batch: dim32(op, layout.batch)?,
        tokens: dim32(op, layout.tokens)?,
        slots: dim32(op, layout.slots)?,
        pad: 0,
    };
    dim32(op, layout.tokens + layout.slots)?;
    Ok((p, layout.batch * (layout.tokens + layout.slots)))
}

/// One block of [`ROUTE_BLOCK`] threads per line, at most [`MAX_LINE_BLOCKS`].
fn per_line(lines: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (lines.clamp(1, MAX_LINE_BLOCKS) as u32, 1, 1),
        block_dim: (ROUTE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn params(
    op: &'static str,
    outer: usize,
    size: usize,
    inner: usize,
    log: bool,
) -> Result<SoftmaxParams> {
    Ok(SoftmaxParams {
        outer: dim32(op, outer)?,
        size: dim32(op, size)?,
        inner: dim32(op, inner)?,
        log: u32::from(log),
    })
}

impl SoftmaxBackend for CudaBackend {
    fn softmax_forward(
        &self,
        x: &Storage,
        outer: usize,
        size: usize,
        inner: usize,
        log: bool,
    ) -> Result<Storage> {
        let x = self.buffer("softmax", x)?;
        let p = params("softmax", outer, size, inner, log)?;
        let config = grid_for(outer * inner);
        self.launch_into(FAMILY, "softmax_forward", config, &p, &[x], x.len())
    }

    fn softmax_backward(
        &self,
        y: &Storage,
        grad_out: &Storage,
        outer: usize,
        size: usize,
        inner: usize,
        log: bool,
    ) -> Result<Storage> {
        let y = self.buffer("softmax_backward", y)?;
        let g = self.buffer("softmax_backward", grad_out)?;
        let p = params("softmax_backward", outer, size, inner, log)?;
        let config = grid_for(outer * inner);
        self.launch_into(FAMILY, "softmax_backward", config, &p, &[y, g], y.len())
    }

    fn soft_route_forward(&self, logits: &Storage, layout: RouteLayout) -> Result<Storage> {
        const OP: &str = "soft_route";
        let x = self.buffer(OP, logits)?;
        let (p, lines) = route_params(OP, layout)?;
        let n = layout.numel();
        if n == 0 {
            return Ok(Storage::Cuda(self.alloc(0)?));
        }
        let stats = self.alloc(2 * lines)?;
        self.launch(
            FAMILY,
            "soft_route_statistics",
            per_line(lines),
            &p,
            &[x, &stats],
        )?;
        self.launch_into(
            FAMILY,
            "soft_route_forward",
            grid_for(n),
            &p,
            &[x, &stats],
            2 * n,
        )
    }

    fn soft_route_backward(
        &self,
        routes: &Storage,
        grad_routes: &Storage,
        layout: RouteLayout,
    ) -> Result<Storage> {
        const OP: &str = "soft_route_backward";
        let (routes, grad) = (self.buffer(OP, routes)?, self.buffer(OP, grad_routes)?);
        let (p, lines) = route_params(OP, layout)?;
        let n = layout.numel();
        if n == 0 {
            return Ok(Storage::Cuda(self.alloc(0)?));
        }
        let dots = self.alloc(lines)?;
        let config = per_line(lines);
        self.launch(
            FAMILY,
            "soft_route_backward_sums",
            config,
            &p,
            &[routes, grad, &dots],
        )?;
        let inputs = [routes, grad, &dots];
        self.launch_into(FAMILY, "soft_route_backward", grid_for(n), &p, &inputs, n)
    }
}
