//! CUDA launchers of the interpolate family (kernels in `kernels/interpolate.cu`).

use super::{InterpolateBackend, InterpolateGeometry, InterpolateMode};
use crate::backend::cuda::runtime::{dim32, grid_for};
use crate::backend::cuda::CudaBackend;
use crate::error::Result;
use crate::tensor::Storage;
use cudarc::driver::DeviceRepr;

const FAMILY: &str = "interpolate";

/// One launch (mirror: `InterpolateParams` in interpolate.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InterpolateParams {
    pub planes: u32,
    pub in_h: u32,
    pub in_w: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub bilinear: u32,
    pub align_corners: u32,
    pub pad: u32,
    pub step_h: f32,
    pub step_w: f32,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu struct.
unsafe impl DeviceRepr for InterpolateParams {}
const _: () = assert!(
    std::mem::size_of::<InterpolateParams>() == 40,
    "InterpolateParams: size of the .cu struct"
);

/// The f32 source step of one axis, exactly as the CPU kernel computes it.
fn step(input: usize, output: usize, mode: InterpolateMode, scale: Option<f64>) -> f32 {
    let from_scale = || match scale {
        Some(s) if s > 0.0 => (1.0 / s) as f32,
        _ => input as f32 / output as f32,
    };
    match mode {
        InterpolateMode::Bilinear {
            align_corners: true,
        } => {
            if output > 1 {
                (input.saturating_sub(1)) as f32 / (output - 1) as f32
            } else {
                0.0
            }
        }
        _ => from_scale(),
    }
}

fn params(op: &'static str, g: InterpolateGeometry) -> Result<InterpolateParams> {
    let (bilinear, align_corners) = match g.mode {
        InterpolateMode::Nearest => (0, 0),
        InterpolateMode::Bilinear { align_corners } => (1, u32::from(align_corners)),
    };
    Ok(InterpolateParams {
        planes: dim32(op, g.planes)?,
        in_h: dim32(op, g.input[0])?,
        in_w: dim32(op, g.input[1])?,
        out_h: dim32(op, g.output[0])?,
        out_w: dim32(op, g.output[1])?,
        bilinear,
        align_corners,
        pad: 0,
        step_h: step(g.input[0], g.output[0], g.mode, g.scales[0]),
        step_w: step(g.input[1], g.output[1], g.mode, g.scales[1]),
    })
}

impl InterpolateBackend for CudaBackend {
    fn interpolate(&self, x: &Storage, geometry: InterpolateGeometry) -> Result<Storage> {
        let x = self.buffer("interpolate", x)?;
        let p = params("interpolate", geometry)?;
        let n = geometry.planes * geometry.output[0] * geometry.output[1];
        self.launch_into(FAMILY, "interpolate", grid_for(n), &p, &[x], n)
    }

    fn interpolate_backward(
        &self,
        grad_out: &Storage,
        geometry: InterpolateGeometry,
    ) -> Result<Storage> {
        let g = self.buffer("interpolate_backward", grad_out)?;
        let p = params("interpolate_backward", geometry)?;
        let n = geometry.planes * geometry.input[0] * geometry.input[1];
        self.launch_into(FAMILY, "interpolate_backward", grid_for(n), &p, &[g], n)
    }
}
