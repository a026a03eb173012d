//! `moeseg demo`: a tiny segmentation net trained from scratch on a synthetic task.
//!
//! Images are noisy, textured backgrounds with rectangles and discs of three classes whose
//! colours overlap, so the net needs both colour and local context. The net is
//! conv3×3-BN-ReLU → max-pool → dilated conv3×3-BN-ReLU → bilinear ×2 → conv1×1, with the
//! dilated conv replaced by a PatchConvMoE (4 experts, top-2, 2×2 grid). It trains with SGD +
//! momentum and a poly learning-rate schedule on cross-entropy (ignore index 255 on a one-pixel
//! border) plus the MoE balancing loss, and prints the routing statistics before and after.

use crate::autograd::no_grad;
use crate::error::Result;
use crate::moe::{
    balance_loss, collect_routing_stats, replace_conv_with_moe, Granularity, PatchConvMoeConfig,
};
use crate::nn::ConvOptions;
use crate::nn::{
    named_parameters, parameter_count, set_training, ActivationLayer, BatchNorm2d, Conv2d,
    MaxPool2d, Module, Sequential, Upsample,
};
use crate::ops::interpolate::{InterpolateMode, Resize};
use crate::ops::loss::CrossEntropyOptions;
use crate::ops::pool::MaxPool2dParams;
use crate::optim::{LrSchedule, LrScheduler, Optimizer, Sgd, SgdOptions};
use crate::tensor::{Rng, Tensor};
use clap::Args;
use std::collections::BTreeMap;
use std::time::Instant;

const CLASSES: usize = 4;
const IGNORE: f32 = 255.0;
/// The conv replaced by a PatchConvMoE layer.
const MOE_PATH: &str = "4";

/// Options of `moeseg demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Training steps.
    #[arg(long, default_value_t = 120)]
    pub steps: usize,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Image height and width.
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    /// Seed of data and initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            steps: 120,
            batch: 8,
            size: 32,
            lr: 0.05,
            seed: 0,
        }
    }
}

/// One synthetic batch: images `[B, 3, S, S]` and labels `[B, S, S]`.
fn synthetic_batch(rng: &mut Rng, batch: usize, size: usize) -> Result<(Tensor, Tensor)> {
    // Class colours (background, red-ish, green-ish, blue-ish), deliberately close.
    const COLOURS: [[f32; 3]; CLASSES] = [
        [0.45, 0.45, 0.45],
        [0.75, 0.35, 0.35],
        [0.35, 0.7, 0.4],
        [0.35, 0.4, 0.75],
    ];
    let plane = size * size;
    let mut images = vec![0.0f32; batch * 3 * plane];
    let mut labels = vec![0.0f32; batch * plane];
    for b in 0..batch {
        let label = &mut labels[b * plane..(b + 1) * plane];
        for _ in 0..3 {
            let class = 1 + rng.below(CLASSES - 1);
            let (cy, cx) = (rng.below(size) as isize, rng.below(size) as isize);
            let half = (size / 8 + rng.below(size / 5 + 1)) as isize;
            let disc = rng.bernoulli(0.5) > 0.0;
            for y in 0..size as isize {
                for x in 0..size as isize {
                    let (dy, dx) = (y - cy, x - cx);
                    let inside = if disc {
                        dy * dy + dx * dx <= half * half
                    } else {
                        dy.abs() <= half && dx.abs() <= half
                    };
                    if inside {
                        label[(y as usize) * size + x as usize] = class as f32;
                    }
                }
            }
        }
        let brightness = rng.uniform(0.8, 1.2);
        for p in 0..plane {
            let class = label[p] as usize;
            let stripe = if (p / size + p % size) % 4 < 2 {
                0.05
            } else {
                -0.05
            };
            for c in 0..3 {
                let value = COLOURS[class][c] * brightness + stripe + rng.normal(0.0, 0.12);
                images[(b * 3 + c) * plane + p] = (value - 0.5) / 0.25;
            }
        }
        // A one-pixel void border, as real datasets have unlabelled pixels.
        for i in 0..size {
            for p in [i, (size - 1) * size + i, i * size, i * size + size - 1] {
                label[p] = IGNORE;
            }
        }
    }
    Ok((
        Tensor::from_vec(images, [batch, 3, size, size])?,
        Tensor::from_vec(labels, [batch, size, size])?,
    ))
}

/// conv3×3-BN-ReLU → max-pool → dilated conv3×3-BN-ReLU → bilinear ×2 → conv1×1.
fn demo_net() -> Result<Sequential> {
    Ok(Sequential::default()
        .push(Conv2d::new(3, 16, 3, ConvOptions::new().padding(1))?)
        .push(BatchNorm2d::new(16)?)
        .push(ActivationLayer::relu())
        .push(MaxPool2d(MaxPool2dParams::new(2)))
        .push(Conv2d::new(
            16,
            32,
            3,
            ConvOptions::new().padding(2).dilation(2),
        )?)
        .push(BatchNorm2d::new(32)?)
        .push(ActivationLayer::relu())
        .push(Upsample {
            resize: Resize::Scale([2.0, 2.0]),
            mode: InterpolateMode::Bilinear {
                align_corners: false,
            },
        })
        .push(Conv2d::new(32, CLASSES, 1, ConvOptions::new())?))
}

/// Per-class IoU from predictions and labels (label 255 ignored); classes absent from both
/// are left out of the mean, as Cityscapes does.
fn mean_iou(prediction: &[f32], label: &[f32]) -> f32 {
    let mut confusion = [[0u64; CLASSES]; CLASSES];
    for (&p, &l) in prediction.iter().zip(label) {
        if l != IGNORE {
            confusion[l as usize][p as usize] += 1;
        }
    }
    let mut ious = Vec::new();
    for (c, row) in confusion.iter().enumerate() {
        let tp = row[c];
        let fn_: u64 = row.iter().sum::<u64>() - tp;
        let fp: u64 = (0..CLASSES).map(|r| confusion[r][c]).sum::<u64>() - tp;
        if tp + fn_ + fp > 0 {
            ious.push(tp as f32 / (tp + fn_ + fp) as f32);
        }
    }
    ious.iter().sum::<f32>() / ious.len().max(1) as f32
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> Result<()> {
    if args.size < 8 || !args.size.is_multiple_of(2) || args.batch == 0 {
        return Err(crate::Error::invalid(
            "demo",
            format!(
                "--size must be even and at least 8 and --batch positive (got size {}, batch {})",
                args.size, args.batch
            ),
        ));
    }
    let mut rng = Rng::new(args.seed);
    crate::tensor::manual_seed(args.seed);
    let mut net = demo_net()?;
    // The dilated 3×3 conv becomes a PatchConvMoE: 4 experts, top-2, a 2×2 patch grid.
    let moe = PatchConvMoeConfig {
        num_experts: 4,
        k: 2,
        granularity: Granularity::Grid(2),
        alpha: 0.01,
        ..PatchConvMoeConfig::default()
    };
    replace_conv_with_moe(&mut net, MOE_PATH, moe)?;
    let options = SgdOptions {
        momentum: 0.9,
        weight_decay: 1e-4,
        ..SgdOptions::new(args.lr as f64)
    };
    let mut sgd = Sgd::with_params(named_parameters(&net), options)?;
    let mut schedule = LrScheduler::new(LrSchedule::poly(args.steps as u64), &mut sgd)?;
    let (val_images, val_labels) =
        synthetic_batch(&mut Rng::new(args.seed ^ 0xdead_beef), 16, args.size)?;
    let evaluate = |net: &Sequential| -> Result<f32> {
        set_training(net, false);
        let miou = no_grad(|| {
            let prediction = net.forward(&val_images)?.argmax(1, false)?;
            let mut stats = BTreeMap::new();
            collect_routing_stats(net, Some(&val_labels), CLASSES, &mut stats)?;
            if let Some(s) = stats.get(MOE_PATH) {
                let usage: Vec<String> = s.usage().iter().map(|u| format!("{u:.2}")).collect();
                println!(
                    "  routing of `{MOE_PATH}`: usage [{}], NRE {:.3}, TEC {:.3}",
                    usage.join(", "),
                    s.nre(),
                    s.tec()
                );
            }
            // The demo runs on the CPU: read both in place.
            let (prediction, labels) = (prediction.storage(), val_labels.storage());
            Ok(mean_iou(prediction.as_cpu("demo")?, labels.as_cpu("demo")?))
        });
        set_training(net, true);
        miou
    };
    println!(
        "moeseg demo: {} parameters, {} steps of batch {} at {}x{}, {} classes, SGD lr {} momentum 0.9, poly schedule (CPU, {} threads)",
        parameter_count(&net),
        args.steps,
        args.batch,
        args.size,
        args.size,
        CLASSES,
        args.lr,
        rayon::current_num_threads()
    );
    println!("mIoU before training: {:.3}", evaluate(&net)?);
    let start = Instant::now();
    for step in 1..=args.steps {
        let (images, labels) = synthetic_batch(&mut rng, args.batch, args.size)?;
        let task = net
            .forward(&images)?
            .cross_entropy(&labels, CrossEntropyOptions::default())?;
        let loss = match balance_loss(&net)? {
            Some(balance) => task.add(&balance)?,
            None => task,
        };
        loss.backward()?;
        sgd.step()?;
        sgd.zero_grad();
        schedule.step(&mut sgd)?;
        if step == 1 || step % 20 == 0 || step == args.steps {
            println!(
                "step {step:>4}  loss {:.4}  ({:.1} s)",
                loss.item()?,
                start.elapsed().as_secs_f32()
            );
        }
    }
    println!(
        "mIoU after training:  {:.3} (16 held-out images)",
        evaluate(&net)?
    );
    Ok(())
}
