//! `moeseg train`: train a network from a preset into a run folder, or continue a run.

use crate::error::{Error, Result};
use crate::train::config::Config;
use crate::train::presets::{self, DEFAULT_PRESET};
use crate::train::run_dir;
use crate::train::sweep;
use crate::train::trainer::{train, Outcome, TrainOptions};
use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Options of `moeseg train`.
#[derive(Args, Debug, Clone, Default)]
pub struct TrainArgs {
    /// Preset: a built-in name `<dataset>-<net>/<variant>` (e.g. cityscapes-enet/patch_conv_moe,
    /// see `moeseg presets`) or a path to a .toml file. Default: synthetic-enet/patch_conv_moe.
    #[arg(long, value_name = "PRESET")]
    pub preset: Option<String>,
    /// Override a configuration key, typed by the schema (repeatable):
    /// `--set model.moe.num_experts=8 --set model.moe.gate=2conv_gap --set optim.lr=0.01
    /// --set model.moe.paths=["decoder.last_conv.4"] --set data.root=/data/cityscapes`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where to compute: auto (CUDA when usable, else the CPU), cpu, cuda, cuda:N, or
    /// cuda-emu[:N] (the CUDA kernels emulated on the CPU: slow, for tests). Overrides
    /// train.device.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Continue the run in this folder from its `last` checkpoint (same results as a run that
    /// never stopped). Uses the run's config.toml; --preset and --set are not allowed with it.
    /// A sweep folder (with sweep.toml) resumes the sweep.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["preset", "set", "run_dir", "sweep"])]
    pub resume: Option<PathBuf>,
    /// Folder of the new run (default: `<output.runs_dir>/<preset>-<UTC date>-<time>`).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// No progress bar, log lines or summary (errors are still printed).
    #[arg(long)]
    pub quiet: bool,
    /// Stop after this many steps (counted from the start of the run) with a resumable `last`
    /// checkpoint, as Ctrl-C does: for time-boxed jobs; continue later with --resume.
    #[arg(long, value_name = "STEPS")]
    pub stop_at: Option<u64>,
    /// Print the resolved configuration (preset + --set + --device) as TOML, with every key
    /// --set accepts, and exit without training.
    #[arg(long, conflicts_with = "resume")]
    pub print_config: bool,
    /// Sweep a key over values (repeatable; the runs are the Cartesian product):
    /// `--sweep model.moe.num_experts=4,8,16 --sweep model.moe.k=1,2`. Each run gets a folder
    /// under --run-dir (the sweep folder, default `<output.runs_dir>/<preset>-sweep-<time>`),
    /// recorded in its sweep.toml; the same command (or --resume SWEEP_DIR) resumes the sweep.
    #[arg(long, value_name = "KEY=V1,V2,...", conflicts_with = "print_config")]
    pub sweep: Vec<String>,
    /// With --sweep (or --resume of a sweep folder): list the runs and their status, run none.
    #[arg(long)]
    pub dry_run: bool,
}

/// The configuration of a new run: the preset, then the `--set` overrides, then `--device`.
pub fn resolve_config(args: &TrainArgs) -> Result<(Config, String)> {
    let preset = args
        .preset
        .clone()
        .unwrap_or_else(|| DEFAULT_PRESET.to_string());
    let (text, origin) = presets::resolve(&preset)?;
    let mut config = Config::from_toml(&text, &origin)?;
    config.apply_overrides(&args.set)?;
    if let Some(device) = &args.device {
        config.train.device = device.clone();
    }
    Ok((config, preset))
}

/// Runs `moeseg train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    if args.print_config {
        let (config, preset) = resolve_config(args)?;
        println!(
            "# resolved configuration of {preset}\n{}",
            config.to_toml()?
        );
        return Ok(());
    }
    if let Some(dir) = args
        .resume
        .as_ref()
        .filter(|dir| dir.join(sweep::SWEEP_FILE).exists())
    {
        let stored = sweep::Sweep::read(dir)?;
        let device = args.device.clone().or(stored.device.clone());
        let plan = sweep::Sweep { device, ..stored };
        return run_sweep(args, plan, dir.clone());
    }
    if !args.sweep.is_empty() {
        let preset = args
            .preset
            .clone()
            .unwrap_or_else(|| DEFAULT_PRESET.to_string());
        let axes = args
            .sweep
            .iter()
            .map(|a| sweep::Axis::parse(a))
            .collect::<Result<Vec<_>>>()?;
        let plan = sweep::Sweep::plan(&preset, &args.set, args.device.as_deref(), axes)?;
        let dir = match &args.run_dir {
            Some(dir) => dir.clone(),
            None => {
                let config = plan.config(0)?;
                run_dir::default_run_dir(&config.output.runs_dir, &format!("{preset}-sweep"))
            }
        };
        return run_sweep(args, plan, dir);
    }
    if args.dry_run {
        return Err(Error::invalid(
            "train",
            "--dry-run lists the runs of a sweep: give --sweep KEY=V1,V2 (or --resume SWEEP_DIR)",
        ));
    }
    let (config, run, resume) = match &args.resume {
        Some(run) => {
            let mut config = run_dir::read_config(run)?;
            if let Some(device) = &args.device {
                config.train.device = device.clone();
            }
            (config, run.clone(), true)
        }
        None => {
            let (config, preset) = resolve_config(args)?;
            let run = match &args.run_dir {
                Some(dir) => dir.clone(),
                None => run_dir::default_run_dir(&config.output.runs_dir, &preset),
            };
            (config, run, false)
        }
    };
    let interrupt = ctrl_c_flag();
    let options = TrainOptions {
        run_dir: run.clone(),
        resume,
        quiet: args.quiet,
        interrupt,
        stop_at: args.stop_at,
    };
    match train(&config, &options)? {
        Outcome::Finished => Ok(()),
        Outcome::Interrupted { step } => {
            eprintln!(
                "stopped after step {step}: saved {}; continue with `moeseg train --resume {}`",
                run.join("checkpoints").join("last").display(),
                run.display()
            );
            Ok(())
        }
    }
}

/// Checks every run of a sweep, then (unless --dry-run) runs or resumes it.
fn run_sweep(args: &TrainArgs, plan: sweep::Sweep, dir: PathBuf) -> Result<()> {
    if args.dry_run {
        // The stored statuses when the folder holds this sweep already.
        let shown = match sweep::Sweep::read(&dir) {
            Ok(stored) if stored.axes == plan.axes && stored.preset == plan.preset => stored,
            _ => plan,
        };
        shown.configs()?;
        print!("{}", shown.describe(&dir));
        return Ok(());
    }
    let options = sweep::SweepOptions {
        dir: dir.clone(),
        quiet: args.quiet,
        interrupt: ctrl_c_flag(),
        stop_at: args.stop_at,
    };
    let summary = sweep::run_sweep(plan, &options)?;
    if summary.failed > 0 {
        return Err(Error::invalid(
            "sweep",
            format!(
                "{} of the runs failed (see {}); the others are done",
                summary.failed,
                dir.join(sweep::SWEEP_FILE).display()
            ),
        ));
    }
    Ok(())
}

/// A flag set by Ctrl-C: the first one finishes the step and saves `last`, a second exits.
fn ctrl_c_flag() -> Arc<AtomicBool> {
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    // First Ctrl-C: finish the step, save `last`, exit cleanly. A second one exits at once.
    let handler = move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("second Ctrl-C: exiting without saving");
            std::process::exit(130);
        }
        eprintln!("Ctrl-C: saving a resumable checkpoint after this step (again to quit now)");
    };
    if let Err(e) = ctrlc::set_handler(handler) {
        eprintln!("warning: Ctrl-C will not save a checkpoint ({e})");
    }
    interrupt
}

/// Runs `moeseg presets`: lists the built-in presets.
pub fn list_presets() -> Result<()> {
    for name in presets::names() {
        println!("{name}");
    }
    if presets::names().is_empty() {
        return Err(Error::Unsupported("no preset is built in".into()));
    }
    Ok(())
}
