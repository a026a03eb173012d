//! `moeseg bench nets`: forward and forward + backward wall times of the six networks on the
//! CPU backend (batch 2, 3×256×512 by default), with and without their default MoE layer.
//!
//! Forward is eval mode without a graph; forward + backward is train mode with the pixel-wise
//! cross-entropy (ignore 255) plus the balancing losses, gradients for every parameter, cleared
//! after each run. Each time is the median of `--repeats` runs after one warm-up run.
//! `scripts/bench_nets_torch.py` times the same networks in PyTorch eager on the same machine
//! and prints the same `key=value` lines, so the two can be put side by side.

use super::bench::time_runs;
use crate::autograd::no_grad;
use crate::error::Result;
use crate::models::{build, place_moe, training_loss, ModelConfig, ModelName, MoePlacement};
use crate::nn::{named_parameters, set_training};
use crate::tensor::{Rng, Tensor};
use clap::Args;

/// Options of `moeseg bench nets`.
#[derive(Args, Debug, Clone)]
pub struct NetsArgs {
    /// Networks to time (default: all six).
    #[arg(long = "model")]
    pub models: Vec<ModelName>,
    /// Also time each network with its default PatchConvMoE layer.
    #[arg(long)]
    pub moe: bool,
    /// Images per batch.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Input size `HxW`.
    #[arg(long, default_value = "256x512")]
    pub size: String,
    /// Timed runs per measurement (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Skip forward + backward (forward only).
    #[arg(long)]
    pub forward_only: bool,
}

/// Runs `moeseg bench nets`.
pub fn run_nets(args: &NetsArgs) -> Result<()> {
    let [height, width] = super::model_tools::parse_size("--size", &args.size)?;
    let models = if args.models.is_empty() {
        ModelName::ALL.to_vec()
    } else {
        args.models.clone()
    };
    let mut rng = Rng::new(7);
    let input = Tensor::randn([args.batch, 3, height, width], 0.0, 1.0, &mut rng)?;
    let target: Vec<f32> = (0..args.batch * height * width)
        .map(|i| if i % 97 == 0 { 255.0 } else { (i % 19) as f32 })
        .collect();
    let target = Tensor::from_vec(target, [args.batch, height, width])?;
    println!(
        "moeseg bench nets: batch {}, 3x{height}x{width}, {} threads, median of {} runs; CPU kernels {}",
        args.batch,
        rayon::current_num_threads(),
        args.repeats,
        crate::backend::cpu::kernels_description()
    );
    println!(
        "{:<22} {:>12} {:>16}",
        "network", "forward ms", "fwd+bwd ms"
    );
    let variants: &[bool] = if args.moe { &[false, true] } else { &[false] };
    for &model in &models {
        for &with_moe in variants {
            let mut net = build(model, &ModelConfig::default())?;
            if with_moe {
                place_moe(net.as_mut(), &[MoePlacement::default_for(model)])?;
            }
            let name = format!("{model}{}", if with_moe { "-moe" } else { "" });
            set_training(net.as_ref(), false);
            let forward = time_runs(args.repeats, || no_grad(|| net.forward(&input)).map(drop))?;
            let train = if args.forward_only {
                None
            } else {
                set_training(net.as_ref(), true);
                let params = named_parameters(net.as_ref());
                Some(time_runs(args.repeats, || {
                    let output = net.forward_seg(&input)?;
                    let loss = training_loss(net.as_ref(), &output, &target, None)?.total;
                    loss.backward()?;
                    params.iter().for_each(|(_, p)| p.clear_grad());
                    Ok(())
                })?)
            };
            let train_text = train.map_or("-".to_string(), |t| format!("{:.1}", t.median));
            println!("{name:<22} {:>12.1} {train_text:>16}", forward.median);
            println!(
                "bench_nets model={name} forward_ms={:.1} train_ms={train_text}",
                forward.median
            );
        }
    }
    Ok(())
}
