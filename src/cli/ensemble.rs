//! `moeseg ensemble train | eval | flops`: gated ensembles of trained runs (`crate::ensemble`).

use super::model_source::write_json;
use crate::ensemble::train::{load_run, train, EnsembleTrainOptions};
use crate::ensemble::{Ensemble, Mode};
use crate::error::{Error, Result};
use crate::models::complexity;
use crate::train::config::Config;
use crate::train::evaluate::{evaluate, Inference};
use crate::train::presets;
use crate::train::report::class_names;
use crate::train::{run_dir, setup};
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The built-in gate preset.
pub const DEFAULT_ENSEMBLE_PRESET: &str = "synthetic-ensemble/default";

/// Options of `moeseg ensemble`.
#[derive(Args, Debug, Clone)]
pub struct EnsembleArgs {
    #[command(subcommand)]
    pub command: EnsembleCommand,
}

/// The ensemble commands.
#[derive(Subcommand, Debug, Clone)]
pub enum EnsembleCommand {
    /// Train a gate over frozen expert runs into an ensemble run folder.
    Train(EnsembleTrainArgs),
    /// One table over the validation split: each expert alone, the mean and max ensembles and
    /// the learned gate(s) of one or more ensemble runs: mIoU, per-class IoU, MACs per image.
    Eval(EnsembleEvalArgs),
    /// Parameters and MACs per image of an ensemble run: experts, gate, dense and top-k.
    Flops(EnsembleRunArgs),
}

/// Options of `moeseg ensemble train`.
#[derive(Args, Debug, Clone, Default)]
pub struct EnsembleTrainArgs {
    /// An expert: a run folder, or PRESET::WEIGHTS (preset name or .toml file, and a
    /// safetensors file); repeat, two at least.
    #[arg(long = "expert", value_name = "RUN_DIR")]
    pub experts: Vec<PathBuf>,
    /// Gate preset (built-in name or .toml file; default synthetic-ensemble/default).
    #[arg(long, value_name = "PRESET")]
    pub preset: Option<String>,
    /// Override a configuration key (`--set ensemble.k=1`, repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where to compute (cpu, cuda, cuda-emu, auto).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// The run folder (default: runs/<preset>-<time>).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Continue the ensemble run in this folder from its last checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["preset", "set", "run_dir", "experts"])]
    pub resume: Option<PathBuf>,
    /// Stop after this many steps in total (resume later).
    #[arg(long, value_name = "STEPS")]
    pub stop_at: Option<u64>,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// Options naming one ensemble run.
#[derive(Args, Debug, Clone)]
pub struct EnsembleRunArgs {
    /// The ensemble run folder.
    #[arg(long, value_name = "RUN_DIR")]
    pub run: PathBuf,
    /// Override a configuration key of the run (e.g. `data.synthetic.val_len=16`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where to compute.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
}

/// Options of `moeseg ensemble eval`.
#[derive(Args, Debug, Clone)]
pub struct EnsembleEvalArgs {
    /// Ensemble run folders over the same experts (repeatable: one gate row each; the experts,
    /// mean and max rows come from the first).
    #[arg(long = "run", value_name = "RUN_DIR", required = true)]
    pub runs: Vec<PathBuf>,
    /// Override a configuration key of every run.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where to compute.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Also write the table as JSON here (default: FIRST_RUN/ensemble_eval.json).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Runs `moeseg ensemble`.
pub fn run(args: &EnsembleArgs) -> Result<()> {
    match &args.command {
        EnsembleCommand::Train(a) => run_train(a),
        EnsembleCommand::Eval(a) => run_eval(a),
        EnsembleCommand::Flops(a) => run_flops(a),
    }
}

/// An expert as given on the command line, with its existing paths made absolute so the
/// ensemble run reads the same experts from any working directory: a run folder, or
/// `PRESET::WEIGHTS` whose sides are made absolute where they name existing files (a built-in
/// preset name stays as it is).
fn expert_spec_absolute(spec: &str) -> String {
    let absolute = |part: &str| {
        let path = Path::new(part);
        match path.exists().then(|| std::path::absolute(path)) {
            Some(Ok(abs)) => abs.display().to_string(),
            _ => part.to_string(),
        }
    };
    match spec.split_once("::") {
        Some((preset, weights)) => format!("{}::{}", absolute(preset), absolute(weights)),
        None => absolute(spec),
    }
}

fn run_train(args: &EnsembleTrainArgs) -> Result<()> {
    let (config, run, resume) = match &args.resume {
        Some(run) => (run_dir::read_config(run)?, run.clone(), true),
        None => {
            let preset = args
                .preset
                .clone()
                .unwrap_or_else(|| DEFAULT_ENSEMBLE_PRESET.into());
            let (text, origin) = presets::resolve(&preset)?;
            let mut config = Config::from_toml(&text, &origin)?;
            config.apply_overrides(&args.set)?;
            if !args.experts.is_empty() {
                config.ensemble.experts = args
                    .experts
                    .iter()
                    .map(|p| expert_spec_absolute(&p.display().to_string()))
                    .collect();
                config.ensemble.expert_hashes.clear();
            }
            let run = args
                .run_dir
                .clone()
                .unwrap_or_else(|| run_dir::default_run_dir(&config.output.runs_dir, &preset));
            (config, run, false)
        }
    };
    let mut config = config;
    if let Some(device) = &args.device {
        config.train.device = device.clone();
    }
    train(
        &config,
        &EnsembleTrainOptions {
            run_dir: run,
            resume,
            stop_at: args.stop_at,
            quiet: args.quiet,
        },
    )
}

/// Reads an ensemble run's config with `--set` and `--device` applied.
fn run_config(run: &std::path::Path, set: &[String], device: &Option<String>) -> Result<Config> {
    let mut config = run_dir::read_config(run)?;
    if !config.ensemble.is_ensemble() {
        return Err(Error::file(
            run,
            "not an ensemble run (its config.toml names no ensemble.experts)",
        ));
    }
    config.apply_overrides(set)?;
    if let Some(device) = device {
        config.train.device = device.clone();
    }
    Ok(config)
}

/// MACs of one forward of `module` on a `[1, 3, h, w]` input.
fn macs(module: &dyn crate::nn::Module, hw: [usize; 2]) -> Result<u64> {
    Ok(complexity(module, [1, 3, hw[0], hw[1]])?.macs)
}

/// Per-image MACs of every expert, and of the gate plus refinement.
fn cost(ensemble: &Ensemble, hw: [usize; 2]) -> Result<(Vec<u64>, u64)> {
    let experts = ensemble
        .experts
        .iter()
        .map(|e| macs(&*e.model as &dyn crate::nn::Module, hw))
        .collect::<Result<Vec<u64>>>()?;
    let mut gate = match ensemble.gate.kind {
        crate::ensemble::GateKind::Image => macs(&ensemble.gate, hw)?,
        // The MLP on pooled features: one MAC per weight of its two linear layers.
        crate::ensemble::GateKind::Features => crate::nn::named_parameters(&ensemble.gate)
            .iter()
            .filter(|(n, _)| n.ends_with("weight"))
            .map(|(_, t)| t.numel() as u64)
            .sum(),
    };
    if let Some(r) = &ensemble.refine {
        gate += complexity(r, [1, ensemble.classes, hw[0], hw[1]])?.macs;
    }
    Ok((experts, gate))
}

/// The evaluation image size of a config: `data.resize`, else the first validation image's.
fn eval_size(config: &Config) -> Result<[usize; 2]> {
    if config.data.resize != [0, 0] {
        return Ok(config.data.resize);
    }
    let dataset = setup::open_dataset(&config.data, &config.data.val_split, false)?;
    let sample = dataset.get(0)?;
    Ok([
        sample.image.height() as usize,
        sample.image.width() as usize,
    ])
}

/// One row of the table.
struct Row {
    name: String,
    miou: f64,
    iou: Vec<Option<f64>>,
    macs: f64,
    usage: Vec<f64>,
}

/// Evaluates `ensemble` in `mode` over the validation split.
fn eval_row(
    name: String,
    ensemble: &Ensemble,
    mode: Mode,
    config: &Config,
    cost: &(Vec<u64>, u64),
) -> Result<Row> {
    ensemble.set_mode(mode.clone())?;
    ensemble.reset_usage();
    let dataset = setup::open_dataset(&config.data, &config.data.val_split, false)?;
    let loader = setup::eval_loader(config, dataset)?;
    let evaluation = evaluate(
        ensemble,
        &loader,
        ensemble.classes,
        Inference::from_config(&config.train)?,
        config.data.max_val_images,
    )?;
    let (counts, images) = ensemble.usage();
    let usage: Vec<f64> = counts
        .iter()
        .map(|&c| c as f64 / images.max(1) as f64)
        .collect();
    let gate = if mode == Mode::Gate {
        cost.1 as f64
    } else {
        0.0
    };
    let macs = gate
        + usage
            .iter()
            .zip(&cost.0)
            .map(|(u, &m)| u * m as f64)
            .sum::<f64>();
    ensemble.set_mode(Mode::Gate)?;
    Ok(Row {
        name,
        miou: evaluation.confusion.miou(),
        iou: evaluation.confusion.iou(),
        macs,
        usage,
    })
}

/// A gate row's name: weights, refinement, k.
fn gate_name(config: &Config, ensemble: &Ensemble) -> String {
    let s = &config.ensemble;
    format!(
        "gate {} {}{} k={}/{}",
        s.gate,
        if s.weights == "class" {
            "class-wise"
        } else {
            "per-image"
        },
        if s.refine { " +refine" } else { "" },
        ensemble.k,
        ensemble.experts.len()
    )
}

fn run_eval(args: &EnsembleEvalArgs) -> Result<()> {
    let mut rows = Vec::new();
    let mut classes = 0;
    let mut class_names_used = Vec::new();
    for (i, run) in args.runs.iter().enumerate() {
        let config = run_config(run, &args.set, &args.device)?;
        let ensemble = load_run(run, &config)?;
        let cost = cost(&ensemble, eval_size(&config)?)?;
        if i == 0 {
            classes = ensemble.classes;
            class_names_used = class_names(classes);
            let k = ensemble.experts.len();
            for e in 0..k {
                let mut w = vec![0f32; k];
                w[e] = 1.0;
                let name = format!("expert {}", ensemble.experts[e].name);
                rows.push(eval_row(name, &ensemble, Mode::Fixed(w), &config, &cost)?);
            }
            let uniform = Mode::Fixed(vec![1.0 / k as f32; k]);
            rows.push(eval_row(
                "mean ensemble".into(),
                &ensemble,
                uniform,
                &config,
                &cost,
            )?);
            rows.push(eval_row(
                "max ensemble".into(),
                &ensemble,
                Mode::Max,
                &config,
                &cost,
            )?);
        } else if ensemble.classes != classes {
            return Err(Error::file(
                run,
                format!("{} classes, the first run has {classes}", ensemble.classes),
            ));
        }
        let name = gate_name(&config, &ensemble);
        rows.push(eval_row(name, &ensemble, Mode::Gate, &config, &cost)?);
    }
    print_table(&rows, &class_names_used);
    let path = args
        .json
        .clone()
        .unwrap_or_else(|| args.runs[0].join("ensemble_eval.json"));
    let json_rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            json!({
                "name": r.name, "miou": r.miou, "macs_per_image": r.macs,
                "expert_share": r.usage,
                "iou": class_names_used.iter().zip(&r.iou).map(|(n, v)| (n.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    write_json(&path, &json!({ "runs": args.runs, "rows": json_rows }))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The method table (mIoU, GMACs per image, share of images per expert), then per-class IoU
/// with one column per method.
fn print_table(rows: &[Row], names: &[String]) {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(6).max(6);
    println!(
        "{:<width$}  {:>7}  {:>10}  experts run per image",
        "method", "mIoU", "GMACs/img"
    );
    for r in rows {
        let usage: Vec<String> = r.usage.iter().map(|u| format!("{u:.2}")).collect();
        println!(
            "{:<width$}  {:>7.4}  {:>10.4}  [{}]",
            r.name,
            r.miou,
            r.macs / 1e9,
            usage.join(" ")
        );
    }
    println!();
    print!("{:<14}", "IoU");
    for i in 0..rows.len() {
        print!(" {:>7}", format!("#{}", i + 1));
    }
    println!();
    for (c, name) in names.iter().enumerate() {
        print!("{name:<14}");
        for r in rows {
            match r.iou.get(c).copied().flatten() {
                Some(v) => print!(" {v:>7.4}"),
                None => print!(" {:>7}", "-"),
            }
        }
        println!();
    }
    println!("(columns #i: the methods above in order; - : class neither present nor predicted)");
}

fn run_flops(args: &EnsembleRunArgs) -> Result<()> {
    flops_of_run(&args.run, &args.set, &args.device)
}

/// `moeseg ensemble flops --run DIR` (and `moeseg flops --run DIR`): parameters and MACs per
/// image of the experts and the gate, dense and top-k.
pub fn flops_of_run(run: &Path, set: &[String], device: &Option<String>) -> Result<()> {
    let config = run_config(run, set, device)?;
    let ensemble = load_run(run, &config)?;
    let hw = eval_size(&config)?;
    let (experts, gate) = cost(&ensemble, hw)?;
    println!("ensemble {} at 1x3x{}x{}", run.display(), hw[0], hw[1]);
    for (e, m) in ensemble.experts.iter().zip(&experts) {
        let params = crate::nn::parameter_count(&*e.model as &dyn crate::nn::Module);
        println!(
            "  expert {:<24} {:>12} params  {:>14} MACs",
            e.name, params, m
        );
    }
    let gate_params = crate::nn::parameter_count(&ensemble);
    println!("  gate (+refine)  {gate_params:>12} params  {gate:>14} MACs");
    let mut sorted = experts.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let dense: u64 = experts.iter().sum::<u64>() + gate;
    let worst: u64 = sorted.iter().take(ensemble.k).sum::<u64>() + gate;
    println!("  dense (every expert):          {dense:>14} MACs/image");
    println!(
        "  top-{} (at most, largest experts): {worst:>14} MACs/image",
        ensemble.k
    );
    Ok(())
}
