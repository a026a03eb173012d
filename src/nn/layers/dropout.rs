//! `nn.Dropout` and `nn.Dropout2d`: active in training mode only.

use crate::error::{Error, Result};
use crate::nn::{Module, TrainingFlag};
use crate::tensor::Tensor;
use std::any::Any;

fn check_p(layer: &'static str, p: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::invalid(
            layer,
            format!("dropout probability must be in [0, 1], got {p}"),
        ));
    }
    Ok(())
}

/// `nn.Dropout(p)`: zeroes elements with probability `p`, scales the rest by `1/(1−p)`.
#[derive(Debug)]
pub struct Dropout {
    /// Drop probability.
    pub p: f32,
    training: TrainingFlag,
}

impl Dropout {
    /// A dropout layer.
    pub fn new(p: f32) -> Result<Self> {
        check_p("Dropout", p)?;
        Ok(Dropout {
            p,
            training: TrainingFlag::default(),
        })
    }
}

impl Module for Dropout {
    fn type_name(&self) -> &'static str {
        "Dropout"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.dropout(self.p, self.training.get())
    }

    fn set_own_training(&self, training: bool) {
        self.training.set(training);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `nn.Dropout2d(p)`: zeroes whole channels with probability `p`.
#[derive(Debug)]
pub struct Dropout2d {
    /// Drop probability per channel.
    pub p: f32,
    training: TrainingFlag,
}

impl Dropout2d {
    /// A channel-dropout layer.
    pub fn new(p: f32) -> Result<Self> {
        check_p("Dropout2d", p)?;
        Ok(Dropout2d {
            p,
            training: TrainingFlag::default(),
        })
    }
}

impl Module for Dropout2d {
    fn type_name(&self) -> &'static str {
        "Dropout2d"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.dropout2d(self.p, self.training.get())
    }

    fn set_own_training(&self, training: bool) {
        self.training.set(training);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
