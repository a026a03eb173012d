//! The `moeseg` command line. Until training lands, the default command is `demo`: a small
//! conv net trained on a synthetic segmentation task on the CPU, exercising the engine end to end.

mod bench;
mod bench_nets;
mod demo;
pub mod model_tools;

use clap::{Parser, Subcommand};

/// moeseg: Mixture-of-Experts CNN semantic segmentation on a Rust tensor engine.
#[derive(Parser, Debug)]
#[command(name = "moeseg", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a small conv-BN-ReLU-pool-upsample net on a synthetic segmentation task (CPU) and
    /// report its loss curve and mIoU: forward, backward and SGD through the whole engine.
    Demo(demo::DemoArgs),
    /// Benchmarks on the CPU backend (`moeseg bench routing`: PatchConvMoE's pieces and whole
    /// layer next to a plain copy and the dense conv of the same shape).
    Bench(bench::BenchArgs),
    /// Print a network's state-dict keys, shapes and dtypes (the manifest format) and counts.
    Inspect(model_tools::InspectArgs),
    /// Count parameters (total, active) and multiply-accumulates at an input size, with and
    /// without the MoE layers.
    Flops(model_tools::FlopsArgs),
    /// Run a network on a safetensors input and write the logits (and, with --train, the loss,
    /// gradients and updated buffers): the parity check against PyTorch.
    Forward(model_tools::ForwardArgs),
}

/// Parses the arguments and runs the chosen command.
pub fn run() -> crate::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Demo(args)) => demo::run(&args),
        Some(Command::Bench(args)) => bench::run(&args),
        Some(Command::Inspect(args)) => model_tools::run_inspect(&args),
        Some(Command::Flops(args)) => model_tools::run_flops(&args),
        Some(Command::Forward(args)) => model_tools::run_forward(&args),
        None => demo::run(&demo::DemoArgs::default()),
    }
}
