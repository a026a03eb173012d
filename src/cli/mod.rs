//! The `moeseg` command line. Until training lands, the default command is `demo`: a small
//! conv net trained on a synthetic segmentation task on the CPU, exercising the engine end to end.

mod bench;
mod demo;
pub mod verify;

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
    /// Every CUDA kernel, forward and backward, against the CPU backend (`--compile-only`:
    /// compile every kernel family with NVRTC, no GPU needed).
    Verify(verify::VerifyArgs),
}

/// Parses the arguments and runs the chosen command.
pub fn run() -> crate::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Demo(args)) => demo::run(&args),
        Some(Command::Bench(args)) => bench::run(&args),
        Some(Command::Verify(args)) => verify::run(&args),
        None => demo::run(&demo::DemoArgs::default()),
    }
}
