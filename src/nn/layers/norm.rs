//! `nn.BatchNorm2d`.

use crate::error::Result;
use crate::nn::{Module, OwnTensor, TrainingFlag};
use crate::ops::norm::BatchNormArgs;
use crate::tensor::{DType, Tensor};
use crate::Device;
use std::any::Any;

/// `nn.BatchNorm2d(C, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True)`:
/// parameters `weight` (ones) and `bias` (zeros), buffers `running_mean` (zeros),
/// `running_var` (ones) and `num_batches_tracked` (an i64 count in checkpoints).
pub struct BatchNorm2d {
    /// `[C]` scale, when affine.
    pub weight: Option<Tensor>,
    /// `[C]` shift, when affine.
    pub bias: Option<Tensor>,
    /// `[C]` running mean, when tracking statistics.
    pub running_mean: Option<Tensor>,
    /// `[C]` running (unbiased) variance, when tracking statistics.
    pub running_var: Option<Tensor>,
    /// Batches seen in training (a rank-0 tensor), when tracking statistics.
    pub num_batches_tracked: Option<Tensor>,
    /// Added to the variance.
    pub eps: f32,
    /// Weight of the new batch in the running statistics; `None` is the cumulative average
    /// (`1 / num_batches_tracked`), as PyTorch's `momentum=None`.
    pub momentum: Option<f32>,
    training: TrainingFlag,
}

impl BatchNorm2d {
    /// PyTorch's defaults: eps 1e-5, momentum 0.1, affine, tracking running statistics.
    pub fn new(channels: usize) -> Result<Self> {
        Self::with_options(channels, 1e-5, Some(0.1), true, true)
    }

    /// Every option of `nn.BatchNorm2d`.
    pub fn with_options(
        channels: usize,
        eps: f32,
        momentum: Option<f32>,
        affine: bool,
        track_running_stats: bool,
    ) -> Result<Self> {
        let cpu = Device::Cpu;
        let param = |value: f32| -> Result<Tensor> {
            Ok(Tensor::full([channels], value, &cpu)?.with_requires_grad(true))
        };
        let (weight, bias) = if affine {
            (Some(param(1.0)?), Some(param(0.0)?))
        } else {
            (None, None)
        };
        let (running_mean, running_var, num_batches_tracked) = if track_running_stats {
            (
                Some(Tensor::zeros([channels], &cpu)?),
                Some(Tensor::ones([channels], &cpu)?),
                Some(Tensor::scalar(0.0)),
            )
        } else {
            (None, None, None)
        };
        Ok(BatchNorm2d {
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
            eps,
            momentum,
            training: TrainingFlag::default(),
        })
    }

    /// True in training mode.
    pub fn is_training(&self) -> bool {
        self.training.get()
    }
}

impl Module for BatchNorm2d {
    fn type_name(&self) -> &'static str {
        "BatchNorm2d"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let training = self.training.get();
        let mut momentum = self.momentum.unwrap_or(0.0);
        if training {
            if let Some(count) = &self.num_batches_tracked {
                // Counted on the count's device: no device-to-host copy per layer and step
                // unless the cumulative average needs the value.
                let seen = count.add_scalar(1.0)?;
                count.replace_data(&seen)?;
                if self.momentum.is_none() {
                    momentum = 1.0 / seen.item()?;
                }
            }
        }
        // Without running statistics PyTorch normalises with batch statistics in eval too.
        let use_batch_stats = training || self.running_mean.is_none();
        input.batch_norm2d(BatchNormArgs {
            running_mean: self.running_mean.as_ref(),
            running_var: self.running_var.as_ref(),
            weight: self.weight.as_ref(),
            bias: self.bias.as_ref(),
            training: use_batch_stats,
            momentum,
            eps: self.eps,
        })
    }

    fn own_tensors(&self) -> Vec<OwnTensor> {
        let mut out = Vec::new();
        if let (Some(w), Some(b)) = (&self.weight, &self.bias) {
            out.push(OwnTensor::parameter("weight", w));
            out.push(OwnTensor::parameter("bias", b));
        }
        if let (Some(m), Some(v), Some(n)) = (
            &self.running_mean,
            &self.running_var,
            &self.num_batches_tracked,
        ) {
            out.push(OwnTensor::buffer("running_mean", m, DType::F32));
            out.push(OwnTensor::buffer("running_var", v, DType::F32));
            out.push(OwnTensor::buffer("num_batches_tracked", n, DType::I64));
        }
        out
    }

    fn set_own_training(&self, training: bool) {
        self.training.set(training);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
