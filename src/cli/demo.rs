//! `moeseg demo`: a tiny segmentation net trained from scratch on a synthetic task.
//!
//! Images are noisy, textured backgrounds with rectangles and discs of three classes whose
//! colours overlap, so the net needs both colour and local context. The net is
//! conv3×3-BN-ReLU → max-pool → dilated conv3×3-BN-ReLU → bilinear ×2 → conv1×1, trained with
//! SGD + momentum on cross-entropy (ignore index 255 on a one-pixel border).

use crate::autograd::no_grad;
use crate::error::Result;
use crate::ops::conv::Conv2dParams;
use crate::ops::interpolate::{InterpolateMode, Resize};
use crate::ops::loss::CrossEntropyOptions;
use crate::ops::norm::BatchNormArgs;
use crate::ops::pool::MaxPool2dParams;
use crate::tensor::{Rng, Tensor};
use crate::Device;
use clap::Args;
use std::time::Instant;

const CLASSES: usize = 4;
const IGNORE: f32 = 255.0;

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

/// A conv layer's parameters with PyTorch's default init (kaiming-uniform a=√5, bias bound
/// 1/√fan_in).
struct ConvLayer {
    weight: Tensor,
    bias: Tensor,
    params: Conv2dParams,
}

impl ConvLayer {
    fn new(rng: &mut Rng, cin: usize, cout: usize, kernel: usize, dilation: usize) -> Result<Self> {
        let fan_in = (cin * kernel * kernel) as f32;
        let bound = 1.0 / fan_in.sqrt();
        Ok(ConvLayer {
            weight: Tensor::rand_uniform([cout, cin, kernel, kernel], -bound, bound, rng)?
                .with_requires_grad(true),
            bias: Tensor::rand_uniform([cout], -bound, bound, rng)?.with_requires_grad(true),
            params: Conv2dParams::new(1, dilation * (kernel - 1) / 2, dilation, 1),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, Some(&self.bias), self.params)
    }
}

/// BatchNorm2d with affine parameters and running statistics.
struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl BatchNorm {
    fn new(channels: usize) -> Result<Self> {
        let cpu = Device::Cpu;
        Ok(BatchNorm {
            weight: Tensor::ones([channels], &cpu)?.with_requires_grad(true),
            bias: Tensor::zeros([channels], &cpu)?.with_requires_grad(true),
            running_mean: Tensor::zeros([channels], &cpu)?,
            running_var: Tensor::ones([channels], &cpu)?,
        })
    }

    fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        x.batch_norm2d(BatchNormArgs {
            running_mean: Some(&self.running_mean),
            running_var: Some(&self.running_var),
            weight: Some(&self.weight),
            bias: Some(&self.bias),
            training,
            momentum: 0.1,
            eps: 1e-5,
        })
    }
}

struct DemoNet {
    conv1: ConvLayer,
    bn1: BatchNorm,
    conv2: ConvLayer,
    bn2: BatchNorm,
    classifier: ConvLayer,
}

impl DemoNet {
    fn new(rng: &mut Rng) -> Result<Self> {
        Ok(DemoNet {
            conv1: ConvLayer::new(rng, 3, 16, 3, 1)?,
            bn1: BatchNorm::new(16)?,
            conv2: ConvLayer::new(rng, 16, 32, 3, 2)?,
            bn2: BatchNorm::new(32)?,
            classifier: ConvLayer::new(rng, 32, CLASSES, 1, 1)?,
        })
    }

    fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        let h = self
            .bn1
            .forward(&self.conv1.forward(x)?, training)?
            .relu()?;
        let h = h.max_pool2d(MaxPool2dParams::new(2))?;
        let h = self
            .bn2
            .forward(&self.conv2.forward(&h)?, training)?
            .relu()?;
        let h = h.interpolate(
            Resize::Scale([2.0, 2.0]),
            InterpolateMode::Bilinear {
                align_corners: false,
            },
        )?;
        self.classifier.forward(&h)
    }

    fn parameters(&self) -> Vec<&Tensor> {
        vec![
            &self.conv1.weight,
            &self.conv1.bias,
            &self.bn1.weight,
            &self.bn1.bias,
            &self.conv2.weight,
            &self.conv2.bias,
            &self.bn2.weight,
            &self.bn2.bias,
            &self.classifier.weight,
            &self.classifier.bias,
        ]
    }
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
    let net = DemoNet::new(&mut rng)?;
    let params = net.parameters();
    let mut velocity: Vec<Option<Tensor>> = vec![None; params.len()];
    let (val_images, val_labels) =
        synthetic_batch(&mut Rng::new(args.seed ^ 0xdead_beef), 16, args.size)?;
    let evaluate = |net: &DemoNet| -> Result<f32> {
        no_grad(|| {
            let logits = net.forward(&val_images, false)?;
            let prediction = logits.argmax(1, false)?;
            Ok(mean_iou(&prediction.to_vec(), &val_labels.to_vec()))
        })
    };
    println!(
        "moeseg demo: {} steps of batch {} at {}x{}, {} classes, SGD lr {} momentum 0.9 (CPU, {} threads)",
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
        let loss = net
            .forward(&images, true)?
            .cross_entropy(&labels, CrossEntropyOptions::default())?;
        loss.backward()?;
        no_grad(|| -> Result<()> {
            for (param, v) in params.iter().zip(velocity.iter_mut()) {
                let Some(grad) = param.grad() else { continue };
                let new_v = match v.take() {
                    Some(old) => old.mul_scalar(0.9)?.add(&grad)?,
                    None => grad,
                };
                param.replace_data(&param.sub(&new_v.mul_scalar(args.lr)?)?)?;
                *v = Some(new_v);
                param.clear_grad();
            }
            Ok(())
        })?;
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
