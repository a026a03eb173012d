//! `nn.BatchNorm2d` and `nn.LayerNorm`.

use crate::error::{Error, Result};
use crate::nn::{Module, OwnTensor, TrainingFlag};
use crate::ops::norm::BatchNormArgs;
use crate::tensor::{DType, Storage, Tensor};
use crate::Device;
use std::any::Any;

/// `nn.BatchNorm2d(C, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True)`:
/// parameters `weight` (ones) and `bias` (zeros), buffers `running_mean` (zeros),
/// `running_var` (ones) and `num_batches_tracked` (a [`BatchCount`], kept on the host; an i64
/// count in checkpoints).
pub struct BatchNorm2d {
    /// `[C]` scale, when affine.
    pub weight: Option<Tensor>,
    /// `[C]` shift, when affine.
    pub bias: Option<Tensor>,
    /// `[C]` running mean, when tracking statistics.
    pub running_mean: Option<Tensor>,
    /// `[C]` running (unbiased) variance, when tracking statistics.
    pub running_var: Option<Tensor>,
    /// Batches seen in training, when tracking statistics.
    pub num_batches_tracked: Option<BatchCount>,
    /// Added to the variance.
    pub eps: f32,
    /// Weight of the new batch in the running statistics; `None` is the cumulative average
    /// (`1 / num_batches_tracked`), as PyTorch's `momentum=None`.
    pub momentum: Option<f32>,
    training: TrainingFlag,
}

/// `num_batches_tracked`: the number of batches a [`BatchNorm2d`] has seen in training, held in
/// host memory whatever device the layer's other tensors are on.
///
/// The count is a rank-0 CPU tensor, created here and never replaced by one on another device
/// ([`Tensor::replace_data`] keeps a tensor's device), so a training step reads it by borrowing
/// the host slice and writes it by swapping in a new host scalar: no device-to-host round trip
/// per layer and step. State dicts list that same tensor ([`BatchCount::tensor`]), so it saves
/// as an i64 and loads (strict or not, from i64 or float files) like any other buffer. Values
/// are exact integers up to 2^24, the i64 range a checkpoint load accepts.
pub struct BatchCount(Tensor);

impl BatchCount {
    /// A count of zero.
    pub fn new() -> Self {
        BatchCount(Tensor::scalar(0.0))
    }

    /// The batches seen so far (read in host memory, no copy).
    pub fn get(&self) -> Result<f32> {
        match self.0.storage() {
            Storage::Cpu(data) => Ok(data[0]),
            other => Err(Error::Unsupported(format!(
                "BatchNorm2d: num_batches_tracked is counted on the host, but its tensor is on {}",
                other.device()
            ))),
        }
    }

    /// Counts one more batch and returns the new count.
    pub fn increment(&self) -> Result<f32> {
        let seen = self.get()? + 1.0;
        self.0.replace_data(&Tensor::scalar(seen))?;
        Ok(seen)
    }

    /// The count as the rank-0 host tensor that state dicts list, save and load.
    pub fn tensor(&self) -> &Tensor {
        &self.0
    }
}

impl Default for BatchCount {
    fn default() -> Self {
        Self::new()
    }
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
                Some(BatchCount::new()),
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
                let seen = count.increment()?;
                if self.momentum.is_none() {
                    momentum = 1.0 / seen;
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
            out.push(OwnTensor::buffer(
                "num_batches_tracked",
                n.tensor(),
                DType::I64,
            ));
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

/// `nn.LayerNorm(dim, eps)` over the last axis: parameters `weight` (ones) and `bias` (zeros),
/// both `[dim]`, when elementwise-affine (the default).
pub struct LayerNorm {
    /// `[dim]` scale, when affine.
    pub weight: Option<Tensor>,
    /// `[dim]` shift, when affine.
    pub bias: Option<Tensor>,
    /// Length of the normalised last axis.
    pub dim: usize,
    /// Added to the variance.
    pub eps: f32,
}

impl LayerNorm {
    /// `nn.LayerNorm(dim, eps=eps)`: affine, weight 1 and bias 0.
    pub fn new(dim: usize, eps: f32) -> Result<Self> {
        Self::with_options(dim, eps, true)
    }

    /// `nn.LayerNorm(dim, eps, elementwise_affine)`.
    pub fn with_options(dim: usize, eps: f32, elementwise_affine: bool) -> Result<Self> {
        let cpu = Device::Cpu;
        let param = |value: f32| -> Result<Tensor> {
            Ok(Tensor::full([dim], value, &cpu)?.with_requires_grad(true))
        };
        let (weight, bias) = if elementwise_affine {
            (Some(param(1.0)?), Some(param(0.0)?))
        } else {
            (None, None)
        };
        Ok(LayerNorm {
            weight,
            bias,
            dim,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn type_name(&self) -> &'static str {
        "LayerNorm"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        if input.dims().last() != Some(&self.dim) {
            return Err(Error::shape(
                "LayerNorm",
                format!(
                    "input {} must end in the normalised size {}",
                    input.shape(),
                    self.dim
                ),
            ));
        }
        input.layer_norm(self.weight.as_ref(), self.bias.as_ref(), self.eps)
    }

    fn own_tensors(&self) -> Vec<OwnTensor> {
        match (&self.weight, &self.bias) {
            (Some(w), Some(b)) => OwnTensor::weight_and_bias(w, Some(b)),
            _ => Vec::new(),
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{named_tensors, set_training};

    #[test]
    fn the_count_stays_on_the_host_and_continues_from_a_loaded_value() {
        let bn = BatchNorm2d::new(2).unwrap();
        let x = Tensor::from_vec((0..8).map(|v| v as f32).collect(), [2, 2, 1, 2]).unwrap();
        bn.forward(&x).unwrap();
        bn.forward(&x).unwrap();
        let listed = named_tensors(&bn)
            .into_iter()
            .find(|(name, ..)| name == "num_batches_tracked")
            .unwrap()
            .1;
        assert_eq!(listed.device(), Device::Cpu);
        assert_eq!(listed.item().unwrap(), 2.0);
        // A state-dict load writes the listed tensor; training counts on from there.
        listed.replace_data(&Tensor::scalar(7.0)).unwrap();
        bn.forward(&x).unwrap();
        let count = bn.num_batches_tracked.as_ref().unwrap();
        assert_eq!(count.get().unwrap(), 8.0);
        assert_eq!(listed.item().unwrap(), 8.0);
        set_training(&bn, false);
        bn.forward(&x).unwrap();
        assert_eq!(count.get().unwrap(), 8.0);
    }
}
