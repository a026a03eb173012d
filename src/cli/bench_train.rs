//! `moeseg bench train`: wall time of full training steps (forward, loss with the MoE
//! balancing losses, backward, SGD step) of one network on random data, after a warm-up. The
//! last line is `train_step_ms=<median> images_per_s=<batch / median>`, the same line
//! `scripts/bench_train_torch.py` prints for the PyTorch original, so the two compare directly.

use crate::backend::cuda;
use crate::error::{Error, Result};
use crate::nn::{named_parameters, set_training, to_device, Module};
use crate::tensor::{manual_seed, Rng, Tensor};
use crate::train::config::{ModelSection, OptimConfig};
use crate::train::setup;
use clap::Args;
use std::time::Instant;

/// Options of `moeseg bench train`.
#[derive(Args, Debug, Clone)]
pub struct BenchTrainArgs {
    /// Network: enet, erfnet, unet, lraspp, deeplabv3plus or pspnet.
    #[arg(long, value_name = "NAME")]
    pub model: String,
    /// PatchConvMoE layers: `default` (the network's default placement, E=8, k=2, 3×3 grid,
    /// 2conv_gap, entropy), a comma-separated list of conv paths, or `none` (dense network).
    #[arg(long, value_name = "default|PATHS|none", default_value = "none")]
    pub moe: String,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Input size HxW (e.g. 512x1024).
    #[arg(long, value_name = "HxW", default_value = "256x512")]
    pub size: String,
    /// Timed steps (after the warm-up); the median is reported.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed warm-up steps (buffer pools, caches).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Output classes.
    #[arg(long, default_value_t = 19)]
    pub classes: usize,
    /// Where to compute: auto (CUDA when usable, else the CPU), cpu, cuda, cuda:N, or
    /// cuda-emu[:N] (the CUDA kernels emulated on the CPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Seed of the weights and data.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Parses `HxW`.
fn parse_size(text: &str) -> Result<[usize; 2]> {
    let parsed = text
        .split_once(['x', 'X'])
        .and_then(|(h, w)| Some([h.trim().parse().ok()?, w.trim().parse().ok()?]));
    match parsed {
        Some([h, w]) if h > 0 && w > 0 => Ok([h, w]),
        _ => Err(Error::invalid(
            "bench train",
            format!("--size `{text}`: expected HxW with positive numbers, e.g. 512x1024"),
        )),
    }
}

/// Runs `moeseg bench train`.
pub fn run(args: &BenchTrainArgs) -> Result<()> {
    let [height, width] = parse_size(&args.size)?;
    if args.batch == 0 || args.steps == 0 {
        return Err(Error::invalid(
            "bench train",
            "--batch and --steps must be at least 1",
        ));
    }
    let (device, note) = setup::resolve_device(&args.device)?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let mut section = ModelSection {
        name: args.model.clone(),
        num_classes: args.classes,
        ..ModelSection::default()
    };
    match args.moe.as_str() {
        "none" => {}
        "default" => section.moe.enabled = true,
        paths => {
            section.moe.enabled = true;
            section.moe.paths = paths.split(',').map(|p| p.trim().to_string()).collect();
        }
    }
    manual_seed(args.seed);
    let model = setup::build_model(&section)?;
    to_device(&*model as &dyn Module, &device)?;
    set_training(&*model as &dyn Module, true);
    let mut optimizer = setup::build_optimizer(
        &OptimConfig::default(),
        named_parameters(&*model as &dyn Module),
    )?;
    let mut rng = Rng::new(args.seed);
    let images =
        Tensor::randn([args.batch, 3, height, width], 0.0, 1.0, &mut rng)?.to_device(&device)?;
    let labels: Vec<f32> = (0..args.batch * height * width)
        .map(|_| rng.below(args.classes) as f32)
        .collect();
    let labels = Tensor::from_vec_on(labels, [args.batch, height, width], &device)?;
    let mut times = Vec::with_capacity(args.steps);
    for step in 0..args.warmup + args.steps {
        let start = Instant::now();
        let output = model.forward_seg(&images)?;
        let loss = crate::models::training_loss(&*model, &output, &labels, None)?.total;
        optimizer.zero_grad();
        loss.backward()?;
        optimizer.step()?;
        // CUDA kernels run asynchronously: the step is done when the device is idle.
        if let Some(device) = device.cuda() {
            cuda::backend_for(device).synchronize()?;
        }
        let ms = start.elapsed().as_secs_f64() * 1e3;
        if step >= args.warmup {
            times.push(ms);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{} (moe: {}) batch {} at {height}x{width} on {device}: {} timed steps, median {median:.1} ms, best {:.1} ms",
        args.model,
        args.moe,
        args.batch,
        args.steps,
        times[0]
    );
    if device == crate::backend::Device::Cpu {
        println!(
            "CPU kernels: {}",
            crate::backend::cpu::kernels_description()
        );
    }
    println!(
        "train_step_ms={median:.1} images_per_s={:.1}",
        args.batch as f64 * 1e3 / median
    );
    Ok(())
}
