//! `nn.Upsample`.

use crate::error::Result;
use crate::nn::Module;
use crate::ops::interpolate::{InterpolateMode, Resize};
use crate::tensor::Tensor;
use std::any::Any;

/// `nn.Upsample(size | scale_factor, mode, align_corners)`.
#[derive(Clone, Copy, Debug)]
pub struct Upsample {
    /// Target size or scale factors.
    pub resize: Resize,
    /// Bilinear (with its align_corners) or nearest.
    pub mode: InterpolateMode,
}

impl Module for Upsample {
    fn type_name(&self) -> &'static str {
        "Upsample"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.interpolate(self.resize, self.mode)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
