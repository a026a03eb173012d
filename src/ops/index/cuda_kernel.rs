//! CUDA launchers of the index family (kernels in `kernels/index.cu`).

use super::{AxisIndexParams, IndexBackend, TopkParams};
use crate::backend::cuda::runtime::{dim32, grid_for};
use crate::backend::cuda::CudaBackend;
use crate::error::Result;
use crate::tensor::Storage;
use cudarc::driver::DeviceRepr;

const FAMILY: &str = "index";

/// One select / accumulate launch (mirror: `IndexParams` in index.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IndexParams {
    pub outer: u32,
    pub size: u32,
    pub inner: u32,
    pub count: u32,
    pub per_row: u32,
    pub has_base: u32,
}

/// One top-k launch (mirror: `TopkKernelParams` in index.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TopkKernelParams {
    pub outer: u32,
    pub size: u32,
    pub inner: u32,
    pub k: u32,
    pub largest: u32,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu structs.
unsafe impl DeviceRepr for IndexParams {}
const _: () = assert!(
    std::mem::size_of::<IndexParams>() == 24,
    "IndexParams: size of the .cu struct"
);
unsafe impl DeviceRepr for TopkKernelParams {}
const _: () = assert!(
    std::mem::size_of::<TopkKernelParams>() == 20,
    "TopkKernelParams: size of the .cu struct"
);

fn params(
    op: &'static str,
    p: AxisIndexParams,
    per_row: bool,
    has_base: bool,
) -> Result<IndexParams> {
    Ok(IndexParams {
        outer: dim32(op, p.outer)?,
        size: dim32(op, p.size)?,
        inner: dim32(op, p.inner)?,
        count: dim32(op, p.count)?,
        per_row: u32::from(per_row),
        has_base: u32::from(has_base),
    })
}

impl CudaBackend {
    /// `out[o, j, i] = x[o, index(o, j, i), i]`.
    fn select(
        &self,
        op: &'static str,
        x: &Storage,
        index: &Storage,
        p: AxisIndexParams,
        per_row: bool,
    ) -> Result<Storage> {
        let (x, index) = (self.buffer(op, x)?, self.buffer(op, index)?);
        let params = params(op, p, per_row, false)?;
        let n = p.outer * p.count * p.inner;
        self.launch_into(
            FAMILY,
            "select_along_axis",
            grid_for(n),
            &params,
            &[x, index],
            n,
        )
    }

    /// `out = base (or 0); out[o, index(o, j, i), i] += values[o, j, i]`.
    fn accumulate(
        &self,
        op: &'static str,
        base: Option<&Storage>,
        index: &Storage,
        values: &Storage,
        p: AxisIndexParams,
        per_row: bool,
    ) -> Result<Storage> {
        let index = self.buffer(op, index)?;
        let values = self.buffer(op, values)?;
        let base = base.map(|b| self.buffer(op, b)).transpose()?;
        let params = params(op, p, per_row, base.is_some())?;
        let n = p.outer * p.size * p.inner;
        let inputs = [base.unwrap_or(values), index, values];
        let out = self.alloc(n)?;
        if n > 0 {
            let buffers = [inputs[0], inputs[1], inputs[2], &out];
            self.launch(
                FAMILY,
                "accumulate_along_axis",
                grid_for(p.outer * p.inner),
                &params,
                &buffers,
            )?;
        }
        Ok(Storage::Cuda(out))
    }
}

impl IndexBackend for CudaBackend {
    fn gather(&self, x: &Storage, index: &Storage, p: AxisIndexParams) -> Result<Storage> {
        self.select("gather", x, index, p, false)
    }

    fn scatter_add(
        &self,
        base: &Storage,
        index: &Storage,
        src: &Storage,
        p: AxisIndexParams,
    ) -> Result<Storage> {
        self.accumulate("scatter_add", Some(base), index, src, p, false)
    }

    fn index_select(&self, x: &Storage, indices: &Storage, p: AxisIndexParams) -> Result<Storage> {
        self.select("index_select", x, indices, p, true)
    }

    fn index_select_backward(
        &self,
        grad_out: &Storage,
        indices: &Storage,
        p: AxisIndexParams,
    ) -> Result<Storage> {
        self.accumulate("index_select_backward", None, indices, grad_out, p, true)
    }

    fn topk(&self, x: &Storage, p: TopkParams) -> Result<(Storage, Storage)> {
        let x = self.buffer("topk", x)?;
        let params = TopkKernelParams {
            outer: dim32("topk", p.outer)?,
            size: dim32("topk", p.size)?,
            inner: dim32("topk", p.inner)?,
            k: dim32("topk", p.k)?,
            largest: u32::from(p.largest),
        };
        let n = p.outer * p.k * p.inner;
        let (values, indices) = (self.alloc(n)?, self.alloc(n)?);
        if n > 0 {
            self.launch(
                FAMILY,
                "topk",
                grid_for(p.outer * p.inner),
                &params,
                &[x, &values, &indices],
            )?;
        }
        Ok((Storage::Cuda(values), Storage::Cuda(indices)))
    }
}
