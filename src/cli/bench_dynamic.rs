//! `moeseg bench dynamic`: the measured saving of per-image path skipping in the dynamic
//! routing network's eval forward. Times, on the same weights and input, the dense forward (the
//! full routing space, every path computed) and the skipping forward with a share of the gate
//! outputs forced to α = 0 (their bias set to −20), and prints the real FLOPs of each.

use super::bench::time_runs;
use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::models::dynamic::{DynamicConfig, DynamicNet4Seg};
use crate::nn::{named_tensors, set_training, Module};
use crate::tensor::{Rng, Tensor};
use clap::Args;

/// Options of `moeseg bench dynamic`.
#[derive(Args, Debug, Clone)]
pub struct DynamicArgs {
    /// Layers of the routing space (16: Layer16).
    #[arg(long, default_value_t = 16)]
    pub layers: usize,
    /// Channels at stride 4 (64 in the original).
    #[arg(long, default_value_t = 64)]
    pub channels: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Input size `HxW`.
    #[arg(long, default_value = "256x512")]
    pub size: String,
    /// Share of the gate outputs forced to α = 0 (chosen at random, seed 0).
    #[arg(long, default_value_t = 0.5)]
    pub off: f64,
    /// Timed runs per measurement (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
}

/// Runs `moeseg bench dynamic`.
pub fn run(args: &DynamicArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.off) {
        return Err(Error::invalid(
            "arguments",
            format!("--off {}: a share in [0, 1]", args.off),
        ));
    }
    let [h, w] = super::model_tools::parse_size("--size", &args.size)?;
    let net = DynamicNet4Seg::new(DynamicConfig {
        layers: args.layers,
        channels: args.channels,
        ..DynamicConfig::layer16(19)
    })?;
    set_training(&net, false);
    let mut rng = Rng::new(0);
    let input = Tensor::randn([args.batch, 3, h, w], 0.0, 1.0, &mut rng)?;
    let time = |skip: bool| -> Result<(f64, f64)> {
        net.set_skip_in_eval(skip);
        let timing = time_runs(args.repeats, || no_grad(|| net.forward(&input).map(|_| ())))?;
        let record = net
            .last_record()
            .ok_or_else(|| Error::invalid("bench", "no route record after a forward"))?;
        let real = record.real.iter().sum::<f64>() / record.real.len().max(1) as f64;
        Ok((timing.median, real / 1e3))
    };
    let (dense_ms, dense_gflops) = time(false)?;
    let mut off_paths = 0;
    let mut all_paths = 0;
    for (name, tensor, _) in named_tensors(&net) {
        if !name.ends_with("gate_conv_beta.2.bias") {
            continue;
        }
        let mut values = tensor.try_to_vec()?;
        for v in values.iter_mut() {
            all_paths += 1;
            if f64::from(rng.next_f32()) < args.off {
                *v = -20.0;
                off_paths += 1;
            }
        }
        tensor.replace_data(&Tensor::from_vec_on(
            values,
            tensor.shape().clone(),
            &tensor.device(),
        )?)?;
    }
    let (skip_ms, skip_gflops) = time(true)?;
    let (dense_off_ms, _) = time(false)?;
    println!(
        "dynamic routing space: {} layers, {} channels, batch {}x3x{h}x{w}, {off_paths} of {all_paths} gate outputs forced to 0",
        args.layers, args.channels, args.batch
    );
    println!("  full space (dense, gates untouched)   {dense_ms:9.1} ms  real {dense_gflops:.3} GFLOPs/image");
    println!(
        "  dense forward, paths forced off        {dense_off_ms:9.1} ms  (computes every path)"
    );
    println!("  skipping forward, paths forced off     {skip_ms:9.1} ms  real {skip_gflops:.3} GFLOPs/image");
    println!(
        "dense_ms={dense_off_ms:.1} skip_ms={skip_ms:.1} speedup={:.2}",
        dense_off_ms / skip_ms.max(1e-9)
    );
    Ok(())
}
