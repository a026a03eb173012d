//! CUDA launchers of the pool family (kernels in `kernels/pool.cu`).

use super::{AvgPool2dGeometry, PlaneResize, Pool2dGeometry, PoolBackend};
use crate::backend::cuda::runtime::{dim32, grid_for};
use crate::backend::cuda::CudaBackend;
use crate::error::Result;
use crate::tensor::Storage;
use cudarc::driver::DeviceRepr;

const FAMILY: &str = "pool";

/// One launch (mirror: `PoolParams` in pool.cu: sixteen u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolParams {
    pub planes: u32,
    pub in_h: u32,
    pub in_w: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub kernel_h: u32,
    pub kernel_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_h: u32,
    pub pad_w: u32,
    pub dilation_h: u32,
    pub dilation_w: u32,
    pub count_include_pad: u32,
    pub divisor: u32,
    pub pad: u32,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu struct.
unsafe impl DeviceRepr for PoolParams {}
const _: () = assert!(
    std::mem::size_of::<PoolParams>() == 64,
    "PoolParams: size of the .cu struct"
);

impl PoolParams {
    /// Sizes only (unpool, adaptive pool).
    fn resize(op: &'static str, s: PlaneResize) -> Result<Self> {
        Ok(PoolParams {
            planes: dim32(op, s.planes)?,
            in_h: dim32(op, s.input[0])?,
            in_w: dim32(op, s.input[1])?,
            out_h: dim32(op, s.output[0])?,
            out_w: dim32(op, s.output[1])?,
            ..Default::default()
        })
    }

    /// A windowed pool.
    fn window(op: &'static str, g: Pool2dGeometry) -> Result<Self> {
        let sizes = PlaneResize {
            planes: g.planes,
            input: g.input,
            output: g.output,
        };
        Ok(PoolParams {
            kernel_h: dim32(op, g.kernel[0])?,
            kernel_w: dim32(op, g.kernel[1])?,
            stride_h: dim32(op, g.stride[0])?,
            stride_w: dim32(op, g.stride[1])?,
            pad_h: dim32(op, g.padding[0])?,
            pad_w: dim32(op, g.padding[1])?,
            dilation_h: dim32(op, g.dilation[0].max(1))?,
            dilation_w: dim32(op, g.dilation[1].max(1))?,
            ..Self::resize(op, sizes)?
        })
    }

    /// An avg pool.
    fn avg(op: &'static str, g: AvgPool2dGeometry) -> Result<Self> {
        Ok(PoolParams {
            count_include_pad: u32::from(g.count_include_pad),
            divisor: dim32(op, g.divisor_override.unwrap_or(0))?,
            ..Self::window(op, g.window)?
        })
    }

    fn input_len(&self) -> usize {
        self.planes as usize * self.in_h as usize * self.in_w as usize
    }

    fn output_len(&self) -> usize {
        self.planes as usize * self.out_h as usize * self.out_w as usize
    }
}

impl PoolBackend for CudaBackend {
    fn max_pool2d_with_indices(
        &self,
        x: &Storage,
        geometry: Pool2dGeometry,
    ) -> Result<(Storage, Storage)> {
        let x = self.buffer("max_pool2d", x)?;
        let p = PoolParams::window("max_pool2d", geometry)?;
        let n = p.output_len();
        let (values, indices) = (self.alloc(n)?, self.alloc(n)?);
        if n > 0 {
            self.launch(
                FAMILY,
                "max_pool2d",
                grid_for(n),
                &p,
                &[x, &values, &indices],
            )?;
        }
        Ok((Storage::Cuda(values), Storage::Cuda(indices)))
    }

    fn max_pool2d_with_indices_backward(
        &self,
        grad_out: &Storage,
        indices: &Storage,
        geometry: Pool2dGeometry,
    ) -> Result<Storage> {
        const OP: &str = "max_pool2d_backward";
        let (g, idx) = (self.buffer(OP, grad_out)?, self.buffer(OP, indices)?);
        let p = PoolParams::window(OP, geometry)?;
        let n = p.input_len();
        self.launch_into(FAMILY, "max_pool2d_backward", grid_for(n), &p, &[g, idx], n)
    }

    fn max_unpool2d(&self, x: &Storage, indices: &Storage, sizes: PlaneResize) -> Result<Storage> {
        const OP: &str = "max_unpool2d";
        let (x, idx) = (self.buffer(OP, x)?, self.buffer(OP, indices)?);
        let p = PoolParams::resize(OP, sizes)?;
        let out = self.fill(p.output_len(), 0.0)?;
        let n = p.input_len();
        if n > 0 {
            let out_buffer = self.buffer(OP, &out)?;
            self.launch(
                FAMILY,
                "max_unpool2d",
                grid_for(n),
                &p,
                &[x, idx, out_buffer],
            )?;
        }
        Ok(out)
    }

    fn max_unpool2d_backward(
        &self,
        grad_out: &Storage,
        indices: &Storage,
        sizes: PlaneResize,
    ) -> Result<Storage> {
        const OP: &str = "max_unpool2d_backward";
        let (g, idx) = (self.buffer(OP, grad_out)?, self.buffer(OP, indices)?);
        let p = PoolParams::resize(OP, sizes)?;
        let n = p.input_len();
        self.launch_into(FAMILY, OP, grid_for(n), &p, &[g, idx], n)
    }

    fn avg_pool2d(&self, x: &Storage, geometry: AvgPool2dGeometry) -> Result<Storage> {
        let x = self.buffer("avg_pool2d", x)?;
        let p = PoolParams::avg("avg_pool2d", geometry)?;
        let n = p.output_len();
        self.launch_into(FAMILY, "avg_pool2d", grid_for(n), &p, &[x], n)
    }

    fn avg_pool2d_backward(
        &self,
        grad_out: &Storage,
        geometry: AvgPool2dGeometry,
    ) -> Result<Storage> {
        const OP: &str = "avg_pool2d_backward";
        let g = self.buffer(OP, grad_out)?;
        let p = PoolParams::avg(OP, geometry)?;
        let n = p.input_len();
        self.launch_into(FAMILY, OP, grid_for(n), &p, &[g], n)
    }

    fn adaptive_avg_pool2d(&self, x: &Storage, sizes: PlaneResize) -> Result<Storage> {
        const OP: &str = "adaptive_avg_pool2d";
        let x = self.buffer(OP, x)?;
        let p = PoolParams::resize(OP, sizes)?;
        let n = p.output_len();
        self.launch_into(FAMILY, OP, grid_for(n), &p, &[x], n)
    }

    fn adaptive_avg_pool2d_backward(
        &self,
        grad_out: &Storage,
        sizes: PlaneResize,
    ) -> Result<Storage> {
        const OP: &str = "adaptive_avg_pool2d_backward";
        let g = self.buffer(OP, grad_out)?;
        let p = PoolParams::resize(OP, sizes)?;
        let n = p.input_len();
        self.launch_into(FAMILY, OP, grid_for(n), &p, &[g], n)
    }
}
