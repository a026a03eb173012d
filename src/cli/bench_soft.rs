//! `moeseg bench routing --routing soft`: wall times of soft routing on the CPU backend, next to
//! the dense layer it replaces, in the summary-line format `scripts/bench_soft_moe_torch.py`
//! prints for PyTorch eager at the same shapes:
//!
//! - `--shape enet|deeplab|small`: SoftConvMoE in place of a 3×3 conv (pad 1, bias) of C → C
//!   channels at the default placements' feature maps, n = `--experts`, p =
//!   `--slots-per-expert`, a g×g grid;
//! - `--shape vit-tiny`: the Soft-MoE layer over ViT-Tiny's 197 tokens of 192 with timm-style
//!   MLP experts (192 → 768 → 192, GELU), n = `--experts` (the Soft-MoE ViT's default is 128),
//!   next to one dense MLP; the PyTorch side runs the `soft-moe` package's own layer.
//!
//! Forward is eval mode without a graph; forward + backward is `Σ(y·g)` with a fixed random `g`,
//! gradients for the input and every parameter, cleared after each run. Every time is the median
//! of `--repeats` runs after one warm-up run.

use super::bench::{time_runs, BenchShape, RoutingArgs, Timing};
use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::moe::{Granularity, SoftConvMoE, SoftConvMoeConfig, SoftMoE, SoftMoeConfig};
use crate::nn::{named_parameters, set_training, Conv2d, ConvOptions, Mlp, Module};
use crate::ops::activation::Activation;
use crate::tensor::{Rng, Tensor};

/// Forward (eval, no graph) and forward + backward (train, `Σ(y·g)`) times of `module` on `x`.
pub(super) fn time_module(
    module: &dyn Module,
    x: &Tensor,
    upstream: &Tensor,
    repeats: usize,
) -> Result<(Timing, Timing)> {
    set_training(module, false);
    let input = x.detach();
    let forward = time_runs(repeats, || no_grad(|| module.forward(&input)).map(drop))?;
    set_training(module, true);
    Ok((forward, time_train(module, x, upstream, repeats)?))
}

/// Forward + backward times of `module` on `x` in its current mode: `Σ(y·g)` with the fixed
/// `upstream` g, gradients for the input and every parameter, cleared after each run.
pub(super) fn time_train(
    module: &dyn Module,
    x: &Tensor,
    upstream: &Tensor,
    repeats: usize,
) -> Result<Timing> {
    let leaf = x.detach().with_requires_grad(true);
    let params = named_parameters(module);
    time_runs(repeats, || {
        module
            .forward(&leaf)?
            .mul(upstream)?
            .sum_all()?
            .backward()?;
        leaf.clear_grad();
        params.iter().for_each(|(_, p)| p.clear_grad());
        Ok(())
    })
}

/// Runs the soft-routing bench.
pub(super) fn run_soft(args: &RoutingArgs) -> Result<()> {
    let (channels, [height, width], default_batch) = args.shape.dims();
    let batch = args.batch.unwrap_or(default_batch);
    if batch == 0 || args.repeats == 0 || args.grid == 0 || args.slots_per_expert == 0 {
        return Err(Error::invalid(
            "bench routing",
            format!(
                "--batch, --repeats, --grid and --slots-per-expert must be positive (got {batch}, \
                 {}, {}, {})",
                args.repeats, args.grid, args.slots_per_expert
            ),
        ));
    }
    crate::tensor::manual_seed(args.seed);
    let mut rng = Rng::new(args.seed);
    let (dense, layer, shape, slots, per_image): (
        Box<dyn Module>,
        Box<dyn Module>,
        Vec<usize>,
        _,
        _,
    ) = if args.shape == BenchShape::VitTiny {
        let mlp = || Mlp::new(channels, 4 * channels, channels, Activation::Gelu);
        let config = SoftMoeConfig::new(channels, args.experts, args.slots_per_expert);
        let layer = SoftMoE::new(config, |_| Ok(Box::new(mlp()?) as Box<dyn Module>))?;
        let slots = config.slots();
        (
            Box::new(mlp()?),
            Box::new(layer),
            vec![batch, height, channels],
            slots,
            height,
        )
    } else {
        let conv = Conv2d::new(channels, channels, 3, ConvOptions::new().padding(1))?;
        let config = SoftConvMoeConfig {
            num_experts: args.experts,
            slots_per_expert: args.slots_per_expert,
            granularity: Granularity::Grid(args.grid),
            ..SoftConvMoeConfig::default()
        };
        let layer = SoftConvMoE::from_conv(&conv, config)?;
        let slots = layer.slots();
        (
            Box::new(conv),
            Box::new(layer),
            vec![batch, channels, height, width],
            slots,
            args.grid * args.grid,
        )
    };
    let x = Tensor::randn(shape.clone(), 0.0, 1.0, &mut rng)?;
    let upstream = Tensor::randn(shape.clone(), 0.0, 1.0, &mut rng)?;
    println!(
        "moeseg bench routing --routing soft: shape {} = {shape:?}; {} n = {}, p = {}, S = {slots} \
         slots per image, {per_image} tokens per image; CPU backend ({}), {} threads; median of {} \
         runs",
        args.shape.name(),
        layer.type_name(),
        args.experts,
        args.slots_per_expert,
        crate::backend::cpu::kernels_description(),
        rayon::current_num_threads(),
        args.repeats,
    );
    let (dense_fwd, dense_train) = time_module(dense.as_ref(), &x, &upstream, args.repeats)?;
    let (layer_fwd, layer_train) = time_module(layer.as_ref(), &x, &upstream, args.repeats)?;
    let patches = per_image as f64;
    for (name, t, note) in [
        ("dense fwd", dense_fwd, String::new()),
        (
            "soft layer fwd",
            layer_fwd,
            format!(
                "{:.2}× dense, {:.2}× (S/m) × dense (S slots, m tokens)",
                layer_fwd.median / dense_fwd.median,
                layer_fwd.median / (slots as f64 / patches * dense_fwd.median)
            ),
        ),
        ("dense fwd+bwd", dense_train, String::new()),
        (
            "soft layer fwd+bwd",
            layer_train,
            format!("{:.2}× dense", layer_train.median / dense_train.median),
        ),
    ] {
        println!(
            "  {name:<24} {:9.3} ms (best {:9.3})  {note}",
            t.median, t.best
        );
    }
    println!(
        "routing=soft shape={} batch={batch} threads={} experts={} slots_per_expert={} \
         layer_fwd_ms={:.3} layer_fwd_bwd_ms={:.3} dense_fwd_ms={:.3} dense_fwd_bwd_ms={:.3}",
        args.shape.name(),
        rayon::current_num_threads(),
        args.experts,
        args.slots_per_expert,
        layer_fwd.median,
        layer_train.median,
        dense_fwd.median,
        dense_train.median,
    );
    Ok(())
}
