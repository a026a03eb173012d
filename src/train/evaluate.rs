//! Evaluation over a split: one confusion matrix over every labelled pixel (Cityscapes'
//! convention), the mean cross-entropy, and the routing statistics of every MoE layer.
//!
//! Inference is full-resolution (the whole image in one forward) or sliding-window: windows of
//! `crop` pixels every `stride` pixels (the last window of a row or column aligned to the image
//! border; images smaller than the window padded with zeros, their labels with 255), with the
//! logits of overlapping windows averaged.

use crate::autograd::no_grad;
use crate::data::Loader;
use crate::error::{Error, Result};
use crate::models::SegNet;
use crate::moe::{collect_routing_stats, RoutingStats};
use crate::nn::{module_device, set_training, Module};
use crate::ops::loss::{CrossEntropyOptions, Reduction};
use crate::tensor::Tensor;
use crate::train::config::TrainConfig;
use crate::train::metrics::ConfusionMatrix;
use std::collections::BTreeMap;
use std::time::Instant;

/// How images are fed to the network at evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inference {
    /// The whole image in one forward.
    Full,
    /// Windows of `crop = [h, w]` every `stride = [h, w]` pixels.
    Sliding {
        /// Window size.
        crop: [usize; 2],
        /// Step between windows.
        stride: [usize; 2],
    },
}

impl Inference {
    /// The inference of `[train]` (`eval_mode`, `eval_crop`, `eval_stride`).
    pub fn from_config(train: &TrainConfig) -> Result<Inference> {
        match train.eval_mode.as_str() {
            "full" => Ok(Inference::Full),
            "sliding" => {
                if train.eval_crop.contains(&0) || train.eval_stride.contains(&0) {
                    return Err(Error::invalid(
                        "config",
                        "train.eval_crop and train.eval_stride must be positive for sliding eval",
                    ));
                }
                Ok(Inference::Sliding {
                    crop: train.eval_crop,
                    stride: train.eval_stride,
                })
            }
            other => Err(Error::invalid(
                "config",
                format!("train.eval_mode = `{other}`: expected full or sliding"),
            )),
        }
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        match self {
            Inference::Full => "full-resolution".to_string(),
            Inference::Sliding { crop, stride } => format!(
                "sliding window {}x{} stride {}x{}",
                crop[0], crop[1], stride[0], stride[1]
            ),
        }
    }
}

/// What an evaluation found.
pub struct Evaluation {
    /// Confusion matrix over every labelled pixel.
    pub confusion: ConfusionMatrix,
    /// Mean cross-entropy per labelled pixel.
    pub mean_ce: f64,
    /// Routing statistics per MoE layer path.
    pub routing: BTreeMap<String, RoutingStats>,
    /// Images evaluated.
    pub images: usize,
    /// Wall time in seconds.
    pub seconds: f64,
    /// FLOPs per image of a dynamic routing network (empty for the other networks).
    pub dynamic_flops: crate::models::dynamic::FlopsSummary,
}

/// Logits `[B, C, H, W]` of `images` in eval mode, full or sliding; `on_window` is called after
/// each forward with the window's labels (for the routing statistics).
pub fn infer(
    model: &dyn SegNet,
    images: &Tensor,
    labels: Option<&Tensor>,
    inference: Inference,
    on_window: &mut dyn FnMut(Option<&Tensor>) -> Result<()>,
) -> Result<Tensor> {
    match inference {
        Inference::Full => {
            // Pad right and bottom to a multiple of SIZE_MULTIPLE (the networks downsample up to
            // 32×), labels with 255, and crop the logits back.
            images.expect_rank("evaluate", "images", 4)?;
            let (h, w) = (images.dims()[2], images.dims()[3]);
            let (ph, pw) = (pad_to(h), pad_to(w));
            if ph + pw == 0 {
                let logits = model.forward(images)?;
                on_window(labels)?;
                return Ok(logits);
            }
            let padded = images.pad(&[0, pw, 0, ph], 0.0)?;
            let labels = labels.map(|l| l.pad(&[0, pw, 0, ph], 255.0)).transpose()?;
            let logits = model.forward(&padded)?;
            on_window(labels.as_ref())?;
            logits.narrow(2, 0, h)?.narrow(3, 0, w)
        }
        Inference::Sliding { crop, stride } => {
            sliding_window(model, images, labels, crop, stride, on_window)
        }
    }
}

/// Full-resolution inputs are padded to a multiple of this many pixels.
pub const SIZE_MULTIPLE: usize = 32;

/// Pixels to add to `size` to reach a multiple of [`SIZE_MULTIPLE`].
fn pad_to(size: usize) -> usize {
    size.next_multiple_of(SIZE_MULTIPLE) - size
}

/// Window starts along one axis: every `stride`, the last one flush with the end.
fn window_starts(size: usize, crop: usize, stride: usize) -> Vec<usize> {
    if size <= crop {
        return vec![0];
    }
    let mut starts: Vec<usize> = (0..)
        .map(|i| i * stride)
        .take_while(|&s| s + crop < size)
        .collect();
    starts.push(size - crop);
    starts
}

fn sliding_window(
    model: &dyn SegNet,
    images: &Tensor,
    labels: Option<&Tensor>,
    crop: [usize; 2],
    stride: [usize; 2],
    on_window: &mut dyn FnMut(Option<&Tensor>) -> Result<()>,
) -> Result<Tensor> {
    images.expect_rank("sliding window", "images", 4)?;
    let [batch, _, height, width] = [
        images.dims()[0],
        images.dims()[1],
        images.dims()[2],
        images.dims()[3],
    ];
    let (pad_h, pad_w) = (
        crop[0].saturating_sub(height),
        crop[1].saturating_sub(width),
    );
    let (images, labels) = if pad_h + pad_w > 0 {
        (
            images.pad(&[0, pad_w, 0, pad_h], 0.0)?,
            labels
                .map(|l| l.pad(&[0, pad_w, 0, pad_h], 255.0))
                .transpose()?,
        )
    } else {
        (images.clone(), labels.cloned())
    };
    let (h, w) = (height + pad_h, width + pad_w);
    let mut sum: Option<Vec<f32>> = None;
    let mut count = vec![0u32; h * w];
    let mut classes = 0;
    for y in window_starts(h, crop[0], stride[0]) {
        for x in window_starts(w, crop[1], stride[1]) {
            let window = images.narrow(2, y, crop[0])?.narrow(3, x, crop[1])?;
            let logits = model.forward(&window)?;
            let window_labels = labels
                .as_ref()
                .map(|l| l.narrow(1, y, crop[0])?.narrow(2, x, crop[1]))
                .transpose()?;
            on_window(window_labels.as_ref())?;
            classes = logits.dims()[1];
            let total = sum.get_or_insert_with(|| vec![0.0; batch * classes * h * w]);
            let values = logits.try_to_vec()?;
            for bc in 0..batch * classes {
                for wy in 0..crop[0] {
                    let src = (bc * crop[0] + wy) * crop[1];
                    let dst = (bc * h + y + wy) * w + x;
                    for (d, s) in total[dst..dst + crop[1]]
                        .iter_mut()
                        .zip(&values[src..src + crop[1]])
                    {
                        *d += s;
                    }
                }
            }
            for wy in 0..crop[0] {
                for c in &mut count[(y + wy) * w + x..(y + wy) * w + x + crop[1]] {
                    *c += 1;
                }
            }
        }
    }
    let mut total = sum.unwrap_or_default();
    for (i, v) in total.iter_mut().enumerate() {
        *v /= count[i % (h * w)].max(1) as f32;
    }
    let logits = Tensor::from_vec_on(total, [batch, classes, h, w], &images.device())?;
    logits.narrow(2, 0, height)?.narrow(3, 0, width)
}

/// Evaluates `model` over every batch of `loader` (at most `max_images` images when > 0) on
/// the device of the model's weights. Leaves the model in eval mode.
pub fn evaluate(
    model: &dyn SegNet,
    loader: &Loader,
    classes: usize,
    inference: Inference,
    max_images: usize,
) -> Result<Evaluation> {
    let start = Instant::now();
    set_training(model as &dyn Module, false);
    let mut confusion = ConfusionMatrix::new(classes);
    let mut routing = BTreeMap::new();
    let mut dynamic_flops = crate::models::dynamic::FlopsSummary::default();
    let (mut ce_sum, mut pixels, mut images) = (0.0f64, 0.0f64, 0usize);
    let device = module_device(model as &dyn Module);
    no_grad(|| -> Result<()> {
        for batch in loader.epoch(0) {
            let batch = batch?;
            // The loader makes batches on the host.
            let labels = batch.labels.to_device(&device)?;
            let images_hw = [batch.images.dims()[2], batch.images.dims()[3]];
            let logits = infer(
                model,
                &batch.images.to_device(&device)?,
                Some(&labels),
                inference,
                &mut |labels| {
                    dynamic_flops.add_latest(model as &dyn Module, images_hw)?;
                    collect_routing_stats(model, labels, classes, &mut routing)
                },
            )?;
            confusion.update_from_logits(&logits, &batch.labels)?;
            let options = CrossEntropyOptions {
                reduction: Reduction::Sum,
                ..CrossEntropyOptions::default()
            };
            ce_sum += logits.cross_entropy(&labels, options)?.item()? as f64;
            pixels += batch
                .labels
                .try_to_vec()?
                .iter()
                .filter(|&&v| v != 255.0)
                .count() as f64;
            images += batch.images.dims()[0];
            if max_images > 0 && images >= max_images {
                break;
            }
        }
        Ok(())
    })?;
    Ok(Evaluation {
        confusion,
        mean_ce: if pixels > 0.0 {
            ce_sum / pixels
        } else {
            f64::NAN
        },
        routing,
        images,
        seconds: start.elapsed().as_secs_f64(),
        dynamic_flops,
    })
}
