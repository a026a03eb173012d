//! The `moeseg` command line. With no subcommand it runs `moeseg train` with the default
//! synthetic preset (ENet with one PatchConvMoE layer), which is what `cargo run --release`
//! does.

mod bench;
mod bench_dynamic;
mod bench_nets;
mod bench_ops;
mod bench_soft;
mod bench_train;
mod compare;
mod demo;
pub mod ensemble;
mod eval;
mod model_source;
pub mod model_tools;
mod predict;
mod train;
pub mod verify;

use clap::{Parser, Subcommand};

/// moeseg: Mixture-of-Experts CNN semantic segmentation on a Rust tensor engine.
///
/// Train with presets (`moeseg train --preset cityscapes-enet/patch_conv_moe --set
/// model.moe.num_experts=4`), evaluate, predict and analyse the routing of the trained runs.
/// Every run writes a folder with its resolved config, metrics.jsonl, checkpoints and plots.
#[derive(Parser, Debug)]
#[command(name = "moeseg", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a network from a preset (default: synthetic-enet/patch_conv_moe) into a run folder,
    /// or continue a run with --resume.
    Train(train::TrainArgs),
    /// Evaluate a run's checkpoint (or --preset with --weights) on the validation split: per-class
    /// IoU table, mIoU, pixel accuracy; writes JSON.
    Eval(eval::EvalArgs),
    /// Segment an image or a folder of images: colour maps, overlays, Cityscapes label ids or
    /// train ids, optionally with routing overlays.
    Predict(predict::PredictArgs),
    /// Evaluate E+1 times: with every token forced to expert e (for each e), then with normal
    /// routing; table of mIoU and mean cross-entropy per pass.
    EvalFixedExpert(eval::AnalysisArgs),
    /// Routing statistics of every MoE layer over the validation split (usage, NRE, TEC,
    /// co-activation, expert x class) as JSON and plots.
    RoutingStats(eval::AnalysisArgs),
    /// List the built-in presets.
    Presets,
    /// Compare runs and sweeps: one table (terminal, CSV, Markdown) of the differing config
    /// keys, mIoU, pixel accuracy, params, MACs, NRE/TEC, time and images/s; curves and a
    /// per-class IoU chart (PNG).
    Compare(compare::CompareArgs),
    /// Benchmarks: `moeseg bench routing` (PatchConvMoE pieces) and `moeseg bench train` (full
    /// training steps of a network).
    Bench(bench::BenchArgs),
    /// Print a network's state-dict keys, shapes and dtypes (the manifest format) and counts.
    Inspect(model_tools::InspectArgs),
    /// Count parameters (total, active) and multiply-accumulates at an input size, with and
    /// without the MoE layers.
    Flops(model_tools::FlopsArgs),
    /// Run a network on a safetensors input and write the logits (and, with --train, the loss,
    /// gradients and updated buffers): the parity check against PyTorch.
    Forward(model_tools::ForwardArgs),
    /// Train a small conv net with one PatchConvMoE layer on a toy task (the engine end to end in
    /// seconds).
    Demo(demo::DemoArgs),
    /// Gated ensembles of trained runs: `ensemble train --expert RUN_A --expert RUN_B`,
    /// `ensemble eval --run DIR` (experts, mean, max and learned gate in one table),
    /// `ensemble flops --run DIR`.
    Ensemble(ensemble::EnsembleArgs),
    /// Every CUDA kernel, forward and backward, against the CPU backend (`--json PATH`: also
    /// write the run as JSON; `--device cpu`: the table CPU against CPU; `--compile-only`:
    /// compile every kernel family with NVRTC, no GPU needed).
    Verify(verify::VerifyArgs),
}

/// Parses the arguments and runs the chosen command.
pub fn run() -> crate::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Train(args)) => train::run(&args),
        Some(Command::Eval(args)) => eval::run_eval(&args),
        Some(Command::Predict(args)) => predict::run(&args),
        Some(Command::EvalFixedExpert(args)) => eval::run_fixed_expert(&args),
        Some(Command::RoutingStats(args)) => eval::run_routing_stats(&args),
        Some(Command::Presets) => train::list_presets(),
        Some(Command::Compare(args)) => compare::run(&args),
        Some(Command::Bench(args)) => bench::run(&args),
        Some(Command::Inspect(args)) => model_tools::run_inspect(&args),
        Some(Command::Flops(args)) => model_tools::run_flops(&args),
        Some(Command::Forward(args)) => model_tools::run_forward(&args),
        Some(Command::Demo(args)) => demo::run(&args),
        Some(Command::Verify(args)) => verify::run(&args),
        Some(Command::Ensemble(args)) => ensemble::run(&args),
        None => train::run(&train::TrainArgs::default()),
    }
}
