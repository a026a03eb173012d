//! Resizing NCHW planes (`F.interpolate`): bilinear (both `align_corners` modes) and nearest,
//! with PyTorch's exact source-coordinate rules, and the gradient kernel.
//!
//! Source coordinates per output index `o` on an axis (in → out):
//! - bilinear, `align_corners`: `o · (in−1)/(out−1)` (0 when out = 1);
//! - bilinear otherwise: `max(0, r·(o + ½) − ½)`;
//! - nearest: `min(⌊o·r⌋, in−1)`;
//!
//! where `r = 1/scale` when the size came from a scale factor (PyTorch's default
//! `recompute_scale_factor=None`), else `in/out`. An axis whose size does not change is copied.

mod cpu_kernel;
mod cuda_kernel;

use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// The target of [`Tensor::interpolate`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Resize {
    /// An explicit output `[height, width]` (`size=`).
    Size([usize; 2]),
    /// Scale factors `[height, width]` (`scale_factor=`): output `⌊in·scale⌋`, and the source
    /// coordinates use `1/scale` itself.
    Scale([f64; 2]),
}

/// How [`Tensor::interpolate`] samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterpolateMode {
    /// `mode='nearest'`: the source pixel `⌊o·r⌋` (PyTorch's legacy, not `nearest-exact`).
    Nearest,
    /// `mode='bilinear'`: weighted mean of the four neighbours of the source coordinate.
    Bilinear {
        /// Map the corner pixels' centres onto each other instead of the corners' edges.
        align_corners: bool,
    },
}

/// One resize call as the kernels see it: `planes = N·C` planes from `input` to `output` size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InterpolateGeometry {
    /// `N·C`.
    pub planes: usize,
    /// `[H, W]` of the input.
    pub input: [usize; 2],
    /// `[H, W]` of the output.
    pub output: [usize; 2],
    /// The scale factors the output size came from, if any (they set the source step).
    pub scales: [Option<f64>; 2],
    /// Sampling mode.
    pub mode: InterpolateMode,
}

/// Kernels of this family.
pub trait InterpolateBackend {
    /// Resamples every plane (see the module docs for the coordinate rules).
    fn interpolate(&self, x: &Storage, geometry: InterpolateGeometry) -> Result<Storage>;

    /// Gradient of [`InterpolateBackend::interpolate`]: each output gradient spread back onto
    /// the (up to four) input pixels it was computed from, with the same weights.
    fn interpolate_backward(
        &self,
        grad_out: &Storage,
        geometry: InterpolateGeometry,
    ) -> Result<Storage>;
}

/// The output size and the scales passed on to the kernels, validated.
fn resolve_size(x: &Tensor, resize: Resize) -> Result<([usize; 2], [Option<f64>; 2])> {
    let op = "interpolate";
    let input = [x.dims()[2], x.dims()[3]];
    match resize {
        Resize::Size(size) => {
            if size.contains(&0) {
                return Err(Error::invalid(
                    op,
                    format!(
                        "output size {size:?} must be positive (input shape {})",
                        x.shape()
                    ),
                ));
            }
            Ok((size, [None, None]))
        }
        Resize::Scale(scale) => {
            if scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                return Err(Error::invalid(
                    op,
                    format!("scale factors {scale:?} must be positive and finite"),
                ));
            }
            // PyTorch: `int64_t(input_size * scale)` in double precision.
            let size = [0, 1].map(|a| (input[a] as f64 * scale[a]).floor());
            if size.iter().any(|&s| s < 1.0) {
                return Err(Error::shape(
                    op,
                    format!(
                        "scale factors {scale:?} shrink input of shape {} to an empty size",
                        x.shape()
                    ),
                ));
            }
            Ok((size.map(|s| s as usize), scale.map(Some)))
        }
    }
}

impl Tensor {
    /// Resizes an NCHW tensor's planes (`F.interpolate(x, size | scale_factor, mode,
    /// align_corners)` with `recompute_scale_factor=None`).
    pub fn interpolate(&self, resize: Resize, mode: InterpolateMode) -> Result<Tensor> {
        let op = "interpolate";
        self.expect_rank(op, "input", 4)?;
        let d = self.dims();
        if d[2] == 0 || d[3] == 0 {
            return Err(Error::shape(
                op,
                format!("input of shape {} has an empty spatial plane", self.shape()),
            ));
        }
        let (output, scales) = resolve_size(self, resize)?;
        let geometry = InterpolateGeometry {
            planes: d[0] * d[1],
            input: [d[2], d[3]],
            output,
            scales,
            mode,
        };
        let storage = self.backend().interpolate(&self.storage(), geometry)?;
        let input_shape = self.shape().clone();
        let out_shape = vec![d[0], d[1], output[0], output[1]];
        Tensor::from_op(op, storage, out_shape, &[self], move || {
            Box::new(move |g: &Tensor, _: &[bool]| {
                let grad = g.backend().interpolate_backward(&g.storage(), geometry)?;
                Ok(vec![Some(Tensor::from_storage(grad, input_shape)?)])
            })
        })
    }
}
