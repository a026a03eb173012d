//! `moeseg bench routing`: wall times of the PatchConvMoE pieces on the CPU backend at the
//! shapes of the default placements, each next to the plain operation it should be compared to.
//!
//! | part | timed | next to |
//! |---|---|---|
//! | split / reassemble | `patch_split` (halo 1) and `patch_reassemble` | a parallel copy of the split's output size into a reused buffer: the bandwidth ceiling (GB/s, %) |
//! | gating | fused `topk_gate` on `[T, E]` logits | — (µs per call) |
//! | dispatch | `dispatch_routed_conv` forward, k of E experts per token | the dense 3×3 conv on the whole map; ideal = k × dense |
//! | layer | PatchConvMoE forward (eval, no graph) and forward + backward (train) | the dense conv forward / forward + backward |
//!
//! Every time is the median of `--repeats` runs after one warm-up run. Forward + backward is
//! `Σ(y·g) + balance loss` with a fixed random `g`, gradients for the input and every parameter,
//! cleared after each run. `scripts/bench_moe_torch.py` times the same layer in PyTorch eager and
//! prints the same summary line (its last line), so the two can be compared key by key.

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::moe::{Granularity, PatchConvMoE, PatchConvMoeConfig};
use crate::nn::ConvOptions;
use crate::nn::{named_parameters, set_training, Conv2d, Module};
use crate::ops::patch_grid::PatchGrid;
use crate::ops::routed_conv::RoutedConvParams;
use crate::ops::topk_gate::TopkGateParams;
use crate::tensor::{Rng, Tensor};
use clap::{Args, Subcommand, ValueEnum};
use rayon::prelude::*;
use std::time::Instant;

/// Options of `moeseg bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand, Debug, Clone)]
enum BenchCommand {
    /// Time PatchConvMoE's split/reassemble, gating, routed dispatch and whole layer on the CPU,
    /// next to a plain copy and the dense conv of the same shape.
    Routing(RoutingArgs),
    /// Time forward and forward + backward of the six networks (batch 2, 3×256×512) on the CPU.
    Nets(super::bench_nets::NetsArgs),
    /// Time full training steps (forward, loss, backward, SGD) of a network on random data; the
    /// last line is `train_step_ms=… images_per_s=…`, as `scripts/bench_train_torch.py` prints.
    Train(super::bench_train::BenchTrainArgs),
    /// Time the main kernels (conv fwd/dgrad/wgrad, batch norm, bilinear ×2, max pool) through
    /// the backend traits on `--device cpu|cuda[:N]|cuda-emu[:N]|auto`, next to a device copy's
    /// bandwidth.
    Ops(super::bench_ops::OpsArgs),
}

/// The feature map of a default placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchShape {
    /// ENet's placement: 16 channels at 256×512 (batch 2 by default).
    Enet,
    /// DeepLabv3+'s placement: 256 channels at 128×256 (batch 1 by default).
    Deeplab,
    /// A quick run: 64 channels at 64×128 (batch 2 by default).
    Small,
}

impl BenchShape {
    /// `(channels, [height, width], default batch)`.
    pub(super) fn dims(self) -> (usize, [usize; 2], usize) {
        match self {
            BenchShape::Enet => (16, [256, 512], 2),
            BenchShape::Deeplab => (256, [128, 256], 1),
            BenchShape::Small => (64, [64, 128], 2),
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            BenchShape::Enet => "enet",
            BenchShape::Deeplab => "deeplab",
            BenchShape::Small => "small",
        }
    }
}

/// Options of `moeseg bench routing`.
#[derive(Args, Debug, Clone)]
pub struct RoutingArgs {
    /// Feature-map shape of the replaced 3×3 conv.
    #[arg(long, value_enum, default_value_t = BenchShape::Small)]
    pub shape: BenchShape,
    /// Images per batch (default: 1 for deeplab, 2 otherwise).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Experts E.
    #[arg(long, default_value_t = 8)]
    pub experts: usize,
    /// Experts per token k.
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    /// Patch grid g (g×g patches per image).
    #[arg(long, default_value_t = 3)]
    pub grid: usize,
    /// Timed runs per measurement (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 7)]
    pub repeats: usize,
    /// Seed of the weights and inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Routing: sparse (PatchConvMoE, top-k) or soft (SoftConvMoE; see `bench_soft`).
    #[arg(long, default_value = "sparse", value_parser = ["sparse", "soft"])]
    pub routing: String,
    /// Slots per expert of soft routing.
    #[arg(long, default_value_t = 1)]
    pub slots_per_expert: usize,
}

/// Runs `moeseg bench …`.
pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.command {
        BenchCommand::Routing(routing) if routing.routing == "soft" => {
            super::bench_soft::run_soft(routing)
        }
        BenchCommand::Routing(routing) => run_routing(routing),
        BenchCommand::Nets(nets) => super::bench_nets::run_nets(nets),
        BenchCommand::Train(train) => super::bench_train::run(train),
        BenchCommand::Ops(ops) => super::bench_ops::run(ops),
    }
}

/// Gate calls per timed run (one call takes microseconds).
const GATE_CALLS: usize = 100;

/// Median and best of `repeats` wall times, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timing {
    pub(super) median: f64,
    pub(super) best: f64,
}

impl Timing {
    fn scaled(self, factor: f64) -> Timing {
        Timing {
            median: self.median * factor,
            best: self.best * factor,
        }
    }
}

/// Times `repeats` runs after one warm-up run. The median is the reported figure; the best
/// (minimum) is printed next to it because a shared machine's load only ever adds time.
pub(super) fn time_runs(repeats: usize, mut run: impl FnMut() -> Result<()>) -> Result<Timing> {
    run()?;
    let mut times: Vec<f64> = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        run()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let mid = times.len() / 2;
    let median = if times.len() % 2 == 1 {
        times[mid]
    } else {
        0.5 * (times[mid - 1] + times[mid])
    };
    Ok(Timing {
        median,
        best: times.first().copied().unwrap_or(f64::NAN),
    })
}

/// GB/s of `floats` f32 values moved in `ms`.
fn gigabytes_per_second(floats: usize, ms: f64) -> f64 {
    (4 * floats) as f64 / (ms * 1e-3) / 1e9
}

/// One printed row: name, times, comparison (computed on the medians).
struct Row {
    name: &'static str,
    ms: Timing,
    note: String,
}

fn run_routing(args: &RoutingArgs) -> Result<()> {
    let (channels, [height, width], default_batch) = args.shape.dims();
    let batch = args.batch.unwrap_or(default_batch);
    if batch == 0 || args.repeats == 0 || args.grid == 0 {
        return Err(Error::invalid(
            "bench routing",
            format!(
                "--batch, --repeats and --grid must be positive (got {batch}, {}, {})",
                args.repeats, args.grid
            ),
        ));
    }
    let (experts, k) = (args.experts, args.k);
    crate::tensor::manual_seed(args.seed);
    let mut rng = Rng::new(args.seed);

    // The replaced conv (3×3, pad 1, bias) and its PatchConvMoE (2conv_gap, entropy loss).
    let conv = Conv2d::new(channels, channels, 3, ConvOptions::new().padding(1))?;
    let config = PatchConvMoeConfig {
        num_experts: experts,
        k,
        granularity: Granularity::Grid(args.grid),
        ..PatchConvMoeConfig::default()
    };
    let layer = PatchConvMoE::from_conv(&conv, config)?;
    let map_shape = [batch, channels, height, width];
    let x = Tensor::randn(map_shape, 0.0, 1.0, &mut rng)?.with_requires_grad(true);
    let upstream = Tensor::randn(map_shape, 0.0, 1.0, &mut rng)?;
    let grid = PatchGrid::from_grid(batch, channels, height, width, args.grid, [1, 1])?;
    let tokens_count = grid.tokens();
    let [th, tw] = grid.token_size();
    println!(
        "moeseg bench routing: shape {} = [{batch}, {channels}, {height}, {width}], 3×3 conv; \
         E = {experts}, k = {k}, grid {g}×{g} → T = {tokens_count} tokens of {}×{} (+ halo 1 = \
         {th}×{tw}); 2conv_gap gate, entropy loss; CPU backend ({}), {} threads; median of {} runs",
        args.shape.name(),
        grid.patch[0],
        grid.patch[1],
        crate::backend::cpu::kernels_description(),
        rayon::current_num_threads(),
        args.repeats,
        g = args.grid,
    );
    let mut rows: Vec<Row> = Vec::new();

    // (a) Split with halo, reassemble, and a plain copy of the split's output size.
    let map_len = batch * channels * height * width;
    let tokens_len = tokens_count * channels * th * tw;
    let patches_len = tokens_count * channels * grid.patch[0] * grid.patch[1];
    let input = x.detach();
    let split = time_runs(args.repeats, || {
        no_grad(|| input.patch_split(grid)).map(drop)
    })?;
    let patches = Tensor::randn(
        [tokens_count, channels, grid.patch[0], grid.patch[1]],
        0.0,
        1.0,
        &mut rng,
    )?;
    let reassemble = time_runs(args.repeats, || {
        no_grad(|| patches.patch_reassemble(grid)).map(drop)
    })?;
    let source = vec![1.0f32; tokens_len];
    let mut out = vec![0.0f32; tokens_len];
    let copy = time_runs(args.repeats, || {
        out.par_chunks_mut(1 << 16)
            .zip(source.par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s));
        std::hint::black_box(&out);
        Ok(())
    })?;
    let copy_rate = gigabytes_per_second(2 * tokens_len, copy.median);
    let split_rate = gigabytes_per_second(map_len + tokens_len, split.median);
    let reassemble_rate = gigabytes_per_second(patches_len + map_len, reassemble.median);
    rows.push(Row {
        name: "patch_split (halo 1)",
        ms: split,
        note: format!(
            "{split_rate:6.1} GB/s = {:5.1}% of copy",
            100.0 * split_rate / copy_rate
        ),
    });
    rows.push(Row {
        name: "patch_reassemble",
        ms: reassemble,
        note: format!(
            "{reassemble_rate:6.1} GB/s = {:5.1}% of copy",
            100.0 * reassemble_rate / copy_rate
        ),
    });
    rows.push(Row {
        name: "copy (reused output)",
        ms: copy,
        note: format!(
            "{copy_rate:6.1} GB/s ({:.1} MB read + written)",
            (8 * tokens_len) as f64 / 1e6
        ),
    });

    // (b) Fused top-k gating on [T, E] logits.
    let logits = Tensor::randn([tokens_count, experts], 0.0, 2.0, &mut rng)?;
    let gate_params = TopkGateParams::new(k);
    let gate = time_runs(args.repeats, || {
        for _ in 0..GATE_CALLS {
            no_grad(|| logits.topk_gate(gate_params, None)).map(drop)?;
        }
        Ok(())
    })?
    .scaled(1.0 / GATE_CALLS as f64);
    rows.push(Row {
        name: "topk_gate [T, E]",
        ms: gate,
        note: format!("{:.1} µs per call", gate.median * 1e3),
    });

    // (c) Routed dispatch forward vs the dense conv on the whole map.
    let tokens = no_grad(|| input.patch_split(grid))?;
    let expert_convs: Vec<Conv2d> = (0..experts)
        .map(|e| layer.expert(e))
        .collect::<Result<_>>()?;
    let expert_weights: Vec<&Tensor> = expert_convs.iter().map(|c| &c.weight).collect();
    let expert_biases: Option<Vec<&Tensor>> =
        expert_convs.iter().map(|c| c.bias.as_ref()).collect();
    // k distinct experts per token, spread evenly over all E.
    let ids: Vec<f32> = (0..tokens_count)
        .flat_map(|t| (0..k).map(move |j| ((t * k + j) % experts) as f32))
        .collect();
    let indices = Tensor::from_vec(ids, [tokens_count, k])?;
    let routing = Tensor::rand_uniform([tokens_count, k], 0.1, 1.0, &mut rng)?;
    let dispatch = time_runs(args.repeats, || {
        no_grad(|| {
            tokens.dispatch_routed_conv(
                &expert_weights,
                expert_biases.as_deref(),
                &indices,
                &routing,
                RoutedConvParams::default(),
            )
        })
        .map(drop)
    })?;
    let dense_fwd = time_runs(args.repeats, || no_grad(|| conv.forward(&input)).map(drop))?;
    rows.push(Row {
        name: "dispatch_routed_conv fwd",
        ms: dispatch,
        note: format!(
            "{:.2}× of k × dense (ideal 1; padded map {}×{} vs {height}×{width})",
            dispatch.median / (k as f64 * dense_fwd.median),
            grid.padded_size()[0],
            grid.padded_size()[1]
        ),
    });

    // Forward + backward of the dispatch alone: gradients for the tokens, the experts' weights
    // and biases, and the routing weights.
    let tokens_leaf = tokens.detach().with_requires_grad(true);
    let routing_leaf = routing.detach().with_requires_grad(true);
    let expert_params: Vec<Tensor> = expert_weights
        .iter()
        .map(|w| w.detach().with_requires_grad(true))
        .collect();
    let expert_refs: Vec<&Tensor> = expert_params.iter().collect();
    let slot_upstream = Tensor::randn(
        [tokens_count, channels, grid.patch[0], grid.patch[1]],
        0.0,
        1.0,
        &mut rng,
    )?;
    let dispatch_fwd_bwd = || {
        time_runs(args.repeats, || {
            let y = tokens_leaf.dispatch_routed_conv(
                &expert_refs,
                expert_biases.as_deref(),
                &indices,
                &routing_leaf,
                RoutedConvParams::default(),
            )?;
            y.mul(&slot_upstream)?.sum_all()?.backward()?;
            tokens_leaf.clear_grad();
            routing_leaf.clear_grad();
            expert_params.iter().for_each(Tensor::clear_grad);
            Ok(())
        })
    };
    let dispatch_train = dispatch_fwd_bwd()?;
    rows.push(Row {
        name: "dispatch_routed_conv fwd+bwd",
        ms: dispatch_train,
        note: "∂tokens, ∂expert weights, ∂routing weights".to_string(),
    });

    // (d) The whole layer and the dense conv, forward (eval, no graph) and forward + backward.
    set_training(&layer, false);
    let layer_fwd = time_runs(args.repeats, || no_grad(|| layer.forward(&input)).map(drop))?;
    set_training(&layer, true);
    let layer_params = named_parameters(&layer);
    let layer_train = || {
        time_runs(args.repeats, || {
            let y = layer.forward(&x)?;
            let mut loss = y.mul(&upstream)?.sum_all()?;
            if let Some(record) = layer.last_routing() {
                loss = loss.add(&record.balance_loss)?;
            }
            loss.backward()?;
            x.clear_grad();
            layer_params.iter().for_each(|(_, p)| p.clear_grad());
            Ok(())
        })
    };
    let layer_fwd_bwd = layer_train()?;
    let usage = match layer.last_routing() {
        Some(record) => {
            // A CPU-backend layer: read the indices in place.
            let indices = record.indices.storage();
            expert_usage(indices.as_cpu("bench routing")?, experts)
        }
        None => Vec::new(),
    };
    let conv_params = named_parameters(&conv);
    let dense_fwd_bwd = time_runs(args.repeats, || {
        conv.forward(&x)?.mul(&upstream)?.sum_all()?.backward()?;
        x.clear_grad();
        conv_params.iter().for_each(|(_, p)| p.clear_grad());
        Ok(())
    })?;
    rows.push(Row {
        name: "dense conv fwd",
        ms: dense_fwd,
        note: String::new(),
    });
    rows.push(Row {
        name: "PatchConvMoE fwd",
        ms: layer_fwd,
        note: format!(
            "{:.2}× dense, {:.2}× k × dense",
            layer_fwd.median / dense_fwd.median,
            layer_fwd.median / (k as f64 * dense_fwd.median)
        ),
    });
    rows.push(Row {
        name: "dense conv fwd+bwd",
        ms: dense_fwd_bwd,
        note: String::new(),
    });
    rows.push(Row {
        name: "PatchConvMoE fwd+bwd",
        ms: layer_fwd_bwd,
        note: format!(
            "{:.2}× dense, {:.2}× k × dense (train; assignments per expert {usage:?})",
            layer_fwd_bwd.median / dense_fwd_bwd.median,
            layer_fwd_bwd.median / (k as f64 * dense_fwd_bwd.median)
        ),
    });

    // (e) The same dispatch and layer in their reference forms (im2col + GEMM convolutions,
    // the routed conv by slot outputs: k convolutions per token), in the same run.
    if !crate::backend::cpu::portable_forced() {
        use crate::backend::cpu::with_portable_kernels;
        let portable_dispatch = with_portable_kernels(dispatch_fwd_bwd)?;
        let portable_layer = with_portable_kernels(layer_train)?;
        rows.push(Row {
            name: "dispatch fwd+bwd, reference",
            ms: portable_dispatch,
            note: format!(
                "slot outputs, im2col + GEMM: the default takes {:.2}× its time",
                dispatch_train.median / portable_dispatch.median
            ),
        });
        rows.push(Row {
            name: "PatchConvMoE fwd+bwd, reference",
            ms: portable_layer,
            note: format!(
                "slot outputs, im2col + GEMM: the default takes {:.2}× its time",
                layer_fwd_bwd.median / portable_layer.median
            ),
        });
    }

    println!(
        "\n  {:<30} {:>10} {:>10}  comparison (on the medians)",
        "part", "median ms", "best ms"
    );
    for row in &rows {
        println!(
            "  {:<30} {:>10.3} {:>10.3}  {}",
            row.name, row.ms.median, row.ms.best, row.note
        );
    }
    let mut summary = format!(
        "shape={} batch={batch} threads={} gate_us={:.2}",
        args.shape.name(),
        rayon::current_num_threads(),
        gate.median * 1e3
    );
    let keyed = [
        ("split", split),
        ("reassemble", reassemble),
        ("copy", copy),
        ("dispatch_fwd", dispatch),
        ("dispatch_fwd_bwd", dispatch_train),
        ("layer_fwd", layer_fwd),
        ("layer_fwd_bwd", layer_fwd_bwd),
        ("dense_fwd", dense_fwd),
        ("dense_fwd_bwd", dense_fwd_bwd),
    ];
    for (key, timing) in keyed {
        summary.push_str(&format!(" {key}_ms={:.3}", timing.median));
    }
    for (key, timing) in &keyed[5..] {
        summary.push_str(&format!(" {key}_best_ms={:.3}", timing.best));
    }
    println!("\n{summary}");
    Ok(())
}

/// Assignments per expert from `[T, k]` indices (exact integers in f32).
fn expert_usage(indices: &[f32], experts: usize) -> Vec<usize> {
    let mut counts = vec![0; experts];
    for &e in indices {
        if let Some(c) = counts.get_mut(e as usize) {
            *c += 1;
        }
    }
    counts
}
