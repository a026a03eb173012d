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
    /// Time the dynamic routing network's eval forward: the full space against per-image path
    /// skipping with a share of the paths forced off.
    Dynamic(super::bench_dynamic::DynamicArgs),
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
    /// ViT-Tiny's MLP layer: 197 tokens of 192 (batch 2 by default); `--routing soft` only.
    VitTiny,
}

impl BenchShape {
    /// `(channels, [height, width], default batch)`.
    pub(super) fn dims(self) -> (usize, [usize; 2], usize) {
        match self {
            BenchShape::Enet => (16, [256, 512], 2),
            BenchShape::Deeplab => (256, [128, 256], 1),
            BenchShape::Small => (64, [64, 128], 2),
            BenchShape::VitTiny => (192, [197, 1], 2),
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            BenchShape::Enet => "enet",
            BenchShape::Deeplab => "deeplab",
            BenchShape::Small => "small",
            BenchShape::VitTiny => "vit-tiny",
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
        BenchCommand::Routing(routing) if routing.shape == BenchShape::VitTiny => {
            Err(Error::invalid(
                "bench routing",
                "--shape vit-tiny is a token layer (Soft-MoE over ViT-Tiny's MLP): use it with \
                 --routing soft",
            ))
        }
        BenchCommand::Routing(routing) => run_routing(routing),
        BenchCommand::Nets(nets) => super::bench_nets::run_nets(nets),
        BenchCommand::Train(train) => super::bench_train::run(train),
        BenchCommand::Ops(ops) => super::bench_ops::run(ops),
        BenchCommand::Dynamic(dynamic) => super::bench_dynamic::run(dynamic),
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
    let mut bench = RoutingBench::setup(args)?;
    bench.print_header();
    let mut rows: Vec<Row> = Vec::new();
    let split = bench.split_and_copy(&mut rows)?;
    let gate = bench.gating(&mut rows)?;
    let dispatch = bench.dispatch(&mut rows)?;
    let layer = bench.whole_layer(&mut rows, &dispatch)?;
    bench.reference_forms(&mut rows, &dispatch, &layer)?;
    print_rows(&rows);
    let keyed = [
        ("split", split[0]),
        ("reassemble", split[1]),
        ("copy", split[2]),
        ("dispatch_fwd", dispatch.forward),
        ("dispatch_fwd_bwd", dispatch.train),
        ("layer_fwd", layer.forward),
        ("layer_fwd_bwd", layer.train),
        ("dense_fwd", dispatch.dense_forward),
        ("dense_fwd_bwd", layer.dense_train),
    ];
    println!("\n{}", summary_line(args, bench.batch, gate, &keyed));
    Ok(())
}

/// The layer, its dense conv and the inputs every measurement of `moeseg bench routing` shares.
struct RoutingBench<'a> {
    args: &'a RoutingArgs,
    batch: usize,
    channels: usize,
    size: [usize; 2],
    conv: Conv2d,
    layer: PatchConvMoE,
    /// The feature map (a leaf with a gradient) and a fixed upstream gradient.
    x: Tensor,
    upstream: Tensor,
    /// `x` detached.
    input: Tensor,
    grid: PatchGrid,
    rng: Rng,
}

/// Times of the routed dispatch, and what its reference-form rerun needs.
struct DispatchTimes {
    forward: Timing,
    train: Timing,
    dense_forward: Timing,
    inputs: DispatchInputs,
}

/// Leaves of the dispatch's forward + backward: tokens, experts, routing and upstream.
struct DispatchInputs {
    tokens: Tensor,
    routing: Tensor,
    experts: Vec<Tensor>,
    biases: Vec<Tensor>,
    indices: Tensor,
    upstream: Tensor,
}

/// Times of the whole layer and of the dense conv with a backward.
struct LayerTimes {
    forward: Timing,
    train: Timing,
    dense_train: Timing,
}

impl<'a> RoutingBench<'a> {
    /// Checks the arguments; builds the conv, its PatchConvMoE (2conv_gap, entropy loss) and
    /// the random map and upstream gradient from the seed.
    fn setup(args: &'a RoutingArgs) -> Result<RoutingBench<'a>> {
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
        crate::tensor::manual_seed(args.seed);
        let mut rng = Rng::new(args.seed);
        // The replaced conv (3×3, pad 1, bias) and its PatchConvMoE.
        let conv = Conv2d::new(channels, channels, 3, ConvOptions::new().padding(1))?;
        let config = PatchConvMoeConfig {
            num_experts: args.experts,
            k: args.k,
            granularity: Granularity::Grid(args.grid),
            ..PatchConvMoeConfig::default()
        };
        let layer = PatchConvMoE::from_conv(&conv, config)?;
        let map_shape = [batch, channels, height, width];
        let x = Tensor::randn(map_shape, 0.0, 1.0, &mut rng)?.with_requires_grad(true);
        let upstream = Tensor::randn(map_shape, 0.0, 1.0, &mut rng)?;
        let grid = PatchGrid::from_grid(batch, channels, height, width, args.grid, [1, 1])?;
        let input = x.detach();
        Ok(RoutingBench {
            args,
            batch,
            channels,
            size: [height, width],
            conv,
            layer,
            x,
            upstream,
            input,
            grid,
            rng,
        })
    }

    fn print_header(&self) {
        let (args, grid) = (self.args, &self.grid);
        let [height, width] = self.size;
        let [th, tw] = grid.token_size();
        println!(
            "moeseg bench routing: shape {} = [{}, {}, {height}, {width}], 3×3 conv; \
             E = {}, k = {}, grid {g}×{g} → T = {} tokens of {}×{} (+ halo 1 = \
             {th}×{tw}); 2conv_gap gate, entropy loss; CPU backend ({}), {} threads; median of {} runs",
            args.shape.name(),
            self.batch,
            self.channels,
            args.experts,
            args.k,
            grid.tokens(),
            grid.patch[0],
            grid.patch[1],
            crate::backend::cpu::kernels_description(),
            rayon::current_num_threads(),
            args.repeats,
            g = args.grid,
        );
    }

    /// (a) Split with halo, reassemble, and a plain copy of the split's output size:
    /// `[split, reassemble, copy]`.
    fn split_and_copy(&mut self, rows: &mut Vec<Row>) -> Result<[Timing; 3]> {
        let (grid, channels, repeats) = (self.grid, self.channels, self.args.repeats);
        let [th, tw] = grid.token_size();
        let map_len = self.batch * channels * self.size[0] * self.size[1];
        let tokens_len = grid.tokens() * channels * th * tw;
        let patches_len = grid.tokens() * channels * grid.patch[0] * grid.patch[1];
        let input = &self.input;
        let split = time_runs(repeats, || no_grad(|| input.patch_split(grid)).map(drop))?;
        let patches = Tensor::randn(
            [grid.tokens(), channels, grid.patch[0], grid.patch[1]],
            0.0,
            1.0,
            &mut self.rng,
        )?;
        let reassemble = time_runs(repeats, || {
            no_grad(|| patches.patch_reassemble(grid)).map(drop)
        })?;
        let source = vec![1.0f32; tokens_len];
        let mut out = vec![0.0f32; tokens_len];
        let copy = time_runs(repeats, || {
            out.par_chunks_mut(1 << 16)
                .zip(source.par_chunks(1 << 16))
                .for_each(|(d, s)| d.copy_from_slice(s));
            std::hint::black_box(&out);
            Ok(())
        })?;
        let copy_rate = gigabytes_per_second(2 * tokens_len, copy.median);
        let split_rate = gigabytes_per_second(map_len + tokens_len, split.median);
        let reassemble_rate = gigabytes_per_second(patches_len + map_len, reassemble.median);
        let of_copy = |rate: f64| {
            format!(
                "{rate:6.1} GB/s = {:5.1}% of copy",
                100.0 * rate / copy_rate
            )
        };
        rows.push(Row {
            name: "patch_split (halo 1)",
            ms: split,
            note: of_copy(split_rate),
        });
        rows.push(Row {
            name: "patch_reassemble",
            ms: reassemble,
            note: of_copy(reassemble_rate),
        });
        rows.push(Row {
            name: "copy (reused output)",
            ms: copy,
            note: format!(
                "{copy_rate:6.1} GB/s ({:.1} MB read + written)",
                (8 * tokens_len) as f64 / 1e6
            ),
        });
        Ok([split, reassemble, copy])
    }

    /// (b) Fused top-k gating on `[T, E]` logits, per call.
    fn gating(&mut self, rows: &mut Vec<Row>) -> Result<Timing> {
        let logits = Tensor::randn(
            [self.grid.tokens(), self.args.experts],
            0.0,
            2.0,
            &mut self.rng,
        )?;
        let gate_params = TopkGateParams::new(self.args.k);
        let gate = time_runs(self.args.repeats, || {
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
        Ok(gate)
    }

    /// (c) Routed dispatch forward vs the dense conv on the whole map, and the dispatch's
    /// forward + backward.
    fn dispatch(&mut self, rows: &mut Vec<Row>) -> Result<DispatchTimes> {
        let (experts, k, grid) = (self.args.experts, self.args.k, self.grid);
        let tokens_count = grid.tokens();
        let tokens = no_grad(|| self.input.patch_split(grid))?;
        let expert_convs: Vec<Conv2d> = (0..experts)
            .map(|e| self.layer.expert(e))
            .collect::<Result<_>>()?;
        let weights: Vec<&Tensor> = expert_convs.iter().map(|c| &c.weight).collect();
        let biases: Option<Vec<&Tensor>> = expert_convs.iter().map(|c| c.bias.as_ref()).collect();
        // k distinct experts per token, spread evenly over all E.
        let ids: Vec<f32> = (0..tokens_count)
            .flat_map(|t| (0..k).map(move |j| ((t * k + j) % experts) as f32))
            .collect();
        let indices = Tensor::from_vec(ids, [tokens_count, k])?;
        let routing = Tensor::rand_uniform([tokens_count, k], 0.1, 1.0, &mut self.rng)?;
        let forward = time_runs(self.args.repeats, || {
            no_grad(|| {
                tokens.dispatch_routed_conv(
                    &weights,
                    biases.as_deref(),
                    &indices,
                    &routing,
                    RoutedConvParams::default(),
                )
            })
            .map(drop)
        })?;
        let input = &self.input;
        let dense_forward = time_runs(self.args.repeats, || {
            no_grad(|| self.conv.forward(input)).map(drop)
        })?;
        rows.push(Row {
            name: "dispatch_routed_conv fwd",
            ms: forward,
            note: format!(
                "{:.2}× of k × dense (ideal 1; padded map {}×{} vs {}×{})",
                forward.median / (k as f64 * dense_forward.median),
                grid.padded_size()[0],
                grid.padded_size()[1],
                self.size[0],
                self.size[1]
            ),
        });
        // Forward + backward of the dispatch alone: gradients for the tokens, the experts'
        // weights and biases, and the routing weights.
        let inputs = DispatchInputs {
            tokens: tokens.detach().with_requires_grad(true),
            routing: routing.detach().with_requires_grad(true),
            experts: weights
                .iter()
                .map(|w| w.detach().with_requires_grad(true))
                .collect(),
            biases: biases.into_iter().flatten().cloned().collect(),
            indices,
            upstream: Tensor::randn(
                [tokens_count, self.channels, grid.patch[0], grid.patch[1]],
                0.0,
                1.0,
                &mut self.rng,
            )?,
        };
        let train = self.time_dispatch_train(&inputs)?;
        rows.push(Row {
            name: "dispatch_routed_conv fwd+bwd",
            ms: train,
            note: "∂tokens, ∂expert weights, ∂routing weights".to_string(),
        });
        Ok(DispatchTimes {
            forward,
            train,
            dense_forward,
            inputs,
        })
    }

    fn time_dispatch_train(&self, inputs: &DispatchInputs) -> Result<Timing> {
        let experts: Vec<&Tensor> = inputs.experts.iter().collect();
        let biases: Vec<&Tensor> = inputs.biases.iter().collect();
        let biases = (!biases.is_empty()).then_some(biases);
        time_runs(self.args.repeats, || {
            let y = inputs.tokens.dispatch_routed_conv(
                &experts,
                biases.as_deref(),
                &inputs.indices,
                &inputs.routing,
                RoutedConvParams::default(),
            )?;
            y.mul(&inputs.upstream)?.sum_all()?.backward()?;
            inputs.tokens.clear_grad();
            inputs.routing.clear_grad();
            inputs.experts.iter().for_each(Tensor::clear_grad);
            Ok(())
        })
    }

    /// Forward + backward of the whole layer (train mode, with its balancing loss).
    fn time_layer_train(&self) -> Result<Timing> {
        let params = named_parameters(&self.layer);
        time_runs(self.args.repeats, || {
            let y = self.layer.forward(&self.x)?;
            let mut loss = y.mul(&self.upstream)?.sum_all()?;
            if let Some(record) = self.layer.last_routing() {
                loss = loss.add(&record.balance_loss)?;
            }
            loss.backward()?;
            self.x.clear_grad();
            params.iter().for_each(|(_, p)| p.clear_grad());
            Ok(())
        })
    }

    /// (d) The whole layer and the dense conv, forward (eval, no graph) and forward + backward.
    fn whole_layer(&self, rows: &mut Vec<Row>, dispatch: &DispatchTimes) -> Result<LayerTimes> {
        let k = self.args.k as f64;
        set_training(&self.layer, false);
        let forward = time_runs(self.args.repeats, || {
            no_grad(|| self.layer.forward(&self.input)).map(drop)
        })?;
        set_training(&self.layer, true);
        let train = self.time_layer_train()?;
        let usage = match self.layer.last_routing() {
            Some(record) => {
                // A CPU-backend layer: read the indices in place.
                let indices = record.indices.storage();
                expert_usage(indices.as_cpu("bench routing")?, self.args.experts)
            }
            None => Vec::new(),
        };
        let dense_train =
            super::bench_soft::time_train(&self.conv, &self.x, &self.upstream, self.args.repeats)?;
        let dense_forward = dispatch.dense_forward;
        rows.push(Row {
            name: "dense conv fwd",
            ms: dense_forward,
            note: String::new(),
        });
        rows.push(Row {
            name: "PatchConvMoE fwd",
            ms: forward,
            note: format!(
                "{:.2}× dense, {:.2}× k × dense",
                forward.median / dense_forward.median,
                forward.median / (k * dense_forward.median)
            ),
        });
        rows.push(Row {
            name: "dense conv fwd+bwd",
            ms: dense_train,
            note: String::new(),
        });
        rows.push(Row {
            name: "PatchConvMoE fwd+bwd",
            ms: train,
            note: format!(
                "{:.2}× dense, {:.2}× k × dense (train; assignments per expert {usage:?})",
                train.median / dense_train.median,
                train.median / (k * dense_train.median)
            ),
        });
        Ok(LayerTimes {
            forward,
            train,
            dense_train,
        })
    }

    /// (e) The same dispatch and layer in their reference forms (im2col + GEMM convolutions,
    /// the routed conv by slot outputs: k convolutions per token), in the same run.
    fn reference_forms(
        &self,
        rows: &mut Vec<Row>,
        dispatch: &DispatchTimes,
        layer: &LayerTimes,
    ) -> Result<()> {
        if crate::backend::cpu::portable_forced() {
            return Ok(());
        }
        use crate::backend::cpu::with_portable_kernels;
        let portable_dispatch =
            with_portable_kernels(|| self.time_dispatch_train(&dispatch.inputs))?;
        let portable_layer = with_portable_kernels(|| self.time_layer_train())?;
        for (name, reference, default) in [
            (
                "dispatch fwd+bwd, reference",
                portable_dispatch,
                dispatch.train,
            ),
            (
                "PatchConvMoE fwd+bwd, reference",
                portable_layer,
                layer.train,
            ),
        ] {
            rows.push(Row {
                name,
                ms: reference,
                note: format!(
                    "slot outputs, im2col + GEMM: the default takes {:.2}× its time",
                    default.median / reference.median
                ),
            });
        }
        Ok(())
    }
}

fn print_rows(rows: &[Row]) {
    println!(
        "\n  {:<30} {:>10} {:>10}  comparison (on the medians)",
        "part", "median ms", "best ms"
    );
    for row in rows {
        println!(
            "  {:<30} {:>10.3} {:>10.3}  {}",
            row.name, row.ms.median, row.ms.best, row.note
        );
    }
}

/// The last line: `shape=… batch=… threads=… gate_us=… <key>_ms=…`, then the best times of
/// the layer and dense rows (`keyed[5..]`), as `scripts/bench_moe_torch.py` prints.
fn summary_line(
    args: &RoutingArgs,
    batch: usize,
    gate: Timing,
    keyed: &[(&str, Timing)],
) -> String {
    let mut summary = format!(
        "shape={} batch={batch} threads={} gate_us={:.2}",
        args.shape.name(),
        rayon::current_num_threads(),
        gate.median * 1e3
    );
    for (key, timing) in keyed {
        summary.push_str(&format!(" {key}_ms={:.3}", timing.median));
    }
    for (key, timing) in &keyed[5..] {
        summary.push_str(&format!(" {key}_best_ms={:.3}", timing.best));
    }
    summary
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
