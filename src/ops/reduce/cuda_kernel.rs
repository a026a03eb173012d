//! CUDA launchers of the reduction family (kernels in `kernels/reduce.cu`).

use super::ReduceBackend;
use crate::backend::cuda::runtime::{dim32, grid_for, grid_per_row, BLOCK};
use crate::backend::cuda::CudaBackend;
use crate::error::Result;
use crate::tensor::Storage;
use cudarc::driver::DeviceRepr;

const FAMILY: &str = "reduce";

/// An `[outer, size, inner]` view (mirror: `AxisParams` in reduce.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AxisParams {
    pub outer: u32,
    pub size: u32,
    pub inner: u32,
    pub pad: u32,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu struct.
unsafe impl DeviceRepr for AxisParams {}
const _: () = assert!(
    std::mem::size_of::<AxisParams>() == 16,
    "AxisParams: size of the .cu struct"
);

impl AxisParams {
    /// The view, or an error naming `op` when a size does not fit 32 bits.
    pub fn new(op: &'static str, outer: usize, size: usize, inner: usize) -> Result<Self> {
        Ok(AxisParams {
            outer: dim32(op, outer)?,
            size: dim32(op, size)?,
            inner: dim32(op, inner)?,
            pad: 0,
        })
    }
}

impl ReduceBackend for CudaBackend {
    fn sum_axis(&self, x: &Storage, outer: usize, size: usize, inner: usize) -> Result<Storage> {
        let x = self.buffer("sum", x)?;
        let p = AxisParams::new("sum", outer, size, inner)?;
        if inner == 1 {
            let config = grid_per_row(outer, BLOCK);
            self.launch_into(FAMILY, "sum_rows", config, &p, &[x], outer)
        } else {
            let n = outer * inner;
            self.launch_into(FAMILY, "sum_columns", grid_for(n), &p, &[x], n)
        }
    }

    fn max_axis(
        &self,
        x: &Storage,
        outer: usize,
        size: usize,
        inner: usize,
    ) -> Result<(Storage, Storage)> {
        let x = self.buffer("max", x)?;
        let p = AxisParams::new("max", outer, size, inner)?;
        let n = outer * inner;
        let (values, indices) = (self.alloc(n)?, self.alloc(n)?);
        if n > 0 && size > 0 {
            self.launch(FAMILY, "max_axis", grid_for(n), &p, &[x, &values, &indices])?;
        }
        Ok((Storage::Cuda(values), Storage::Cuda(indices)))
    }

    fn max_axis_backward(
        &self,
        grad_out: &Storage,
        indices: &Storage,
        outer: usize,
        size: usize,
        inner: usize,
    ) -> Result<Storage> {
        let g = self.buffer("max_backward", grad_out)?;
        let idx = self.buffer("max_backward", indices)?;
        let p = AxisParams::new("max_backward", outer, size, inner)?;
        let n = outer * size * inner;
        self.launch_into(FAMILY, "max_axis_backward", grid_for(n), &p, &[g, idx], n)
    }
}
