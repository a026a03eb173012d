//! CUDA launcher of the dropout family (kernel in `kernels/dropout.cu`): the same counter-based
//! SplitMix64 hash as the CPU, so a seed gives the identical mask on both devices.

use super::DropoutBackend;
use crate::backend::cuda::runtime::grid_for;
use crate::backend::cuda::CudaBackend;
use crate::error::Result;
use crate::tensor::Storage;
use cudarc::driver::DeviceRepr;

/// One launch (mirror: `DropoutParams` in dropout.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DropoutParams {
    pub n: u64,
    pub seed: u64,
    pub p: f32,
    pub keep_scale: f32,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu struct.
unsafe impl DeviceRepr for DropoutParams {}
const _: () = assert!(
    std::mem::size_of::<DropoutParams>() == 24,
    "DropoutParams: size of the .cu struct"
);
const _: () = assert!(
    std::mem::offset_of!(DropoutParams, p) == 16,
    "DropoutParams: 64-bit field offset"
);

impl DropoutBackend for CudaBackend {
    fn dropout_mask(&self, len: usize, p: f32, seed: u64) -> Result<Storage> {
        let params = DropoutParams {
            n: len as u64,
            seed,
            p,
            keep_scale: if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 },
        };
        self.launch_into("dropout", "dropout_mask", grid_for(len), &params, &[], len)
    }
}
