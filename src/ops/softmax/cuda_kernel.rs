//! CUDA launchers of the softmax family (kernels in `kernels/softmax.cu`).

use super::SoftmaxBackend;
use crate::backend::cuda::runtime::{dim32, grid_for};
use crate::backend::cuda::CudaBackend;
use crate::error::Result;
use crate::tensor::Storage;
use cudarc::driver::DeviceRepr;

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
}
