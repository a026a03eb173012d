//! Sweeps (Hydra's multirun): `moeseg train --preset P --sweep KEY=V1,V2 --sweep KEY2=A,B`
//! trains the Cartesian product of the listed values, each run in its own folder under one
//! sweep folder, with `sweep.toml` recording the runs, their overrides and their status
//! (`pending`, `running`, `interrupted`, `finished`, `failed` with the error).
//!
//! Every combination is resolved (preset, `--set`, then the sweep's overrides, each checked
//! against the schema) before the first run starts, so an unknown key or a wrongly typed value
//! stops the sweep at once. A run that fails is recorded as `failed` and the sweep goes on.
//! Running the same command again (or `moeseg train --resume SWEEP_DIR`) resumes: finished runs
//! are skipped, a run with a checkpoint continues from it, the others start.

use crate::error::{Error, Result};
use crate::train::config::Config;
use crate::train::trainer::{train, Outcome, TrainOptions};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The sweep record in a sweep folder.
pub const SWEEP_FILE: &str = "sweep.toml";

/// One `--sweep KEY=V1,V2,...` axis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Axis {
    /// The dotted configuration key.
    pub key: String,
    /// Its values, as written on the command line.
    pub values: Vec<String>,
}

impl Axis {
    /// Parses `KEY=V1,V2,...`; commas inside brackets or quotes belong to a value
    /// (`model.moe.paths=["a","b"],["c"]` has two values).
    pub fn parse(arg: &str) -> Result<Axis> {
        let (key, list) = arg.split_once('=').ok_or_else(|| {
            Error::invalid(
                "sweep",
                format!("--sweep `{arg}`: expected KEY=V1,V2,... (e.g. model.moe.k=1,2)"),
            )
        })?;
        let values = split_top_level(list);
        if key.trim().is_empty() || values.iter().any(|v| v.is_empty()) {
            return Err(Error::invalid(
                "sweep",
                format!("--sweep `{arg}`: a key and non-empty values are needed"),
            ));
        }
        Ok(Axis {
            key: key.trim().to_string(),
            values,
        })
    }
}

/// Splits at commas outside `[...]`, `{...}` and quotes; trims each piece.
fn split_top_level(list: &str) -> Vec<String> {
    let (mut out, mut current, mut depth, mut quote) = (Vec::new(), String::new(), 0i32, None);
    for c in list.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                out.push(current.trim().to_string());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current.trim().to_string());
    out
}

/// Status of one run of a sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Not started.
    Pending,
    /// Started and not ended (a crash leaves this; resumed like `interrupted`).
    Running,
    /// Stopped with a resumable checkpoint (Ctrl-C or `--stop-at`).
    Interrupted,
    /// Every step done.
    Finished,
    /// Ended with an error (in `error`).
    Failed,
}

/// One run of a sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepRun {
    /// Its folder name inside the sweep folder.
    pub name: String,
    /// Its `KEY=VALUE` overrides (on top of the preset and the sweep's `--set`).
    pub overrides: Vec<String>,
    /// Where it stands.
    pub status: Status,
    /// The error of a failed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `sweep.toml`: what was swept and where each run stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    /// The preset (name or path).
    pub preset: String,
    /// `--set` overrides shared by every run.
    #[serde(default)]
    pub set: Vec<String>,
    /// `--device`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The swept axes, in command-line order.
    pub axes: Vec<Axis>,
    /// One entry per combination (the last axis varies fastest).
    pub runs: Vec<SweepRun>,
}

/// A value as a folder-name piece.
fn name_piece(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut collapsed = String::new();
    for c in cleaned.chars() {
        if !(c == '_' && collapsed.ends_with('_')) {
            collapsed.push(c);
        }
    }
    collapsed.trim_matches('_').to_string()
}

impl Sweep {
    /// The plan of a new sweep: every combination of the axes' values, named
    /// `NNN-<last key part>=<value>-...`.
    pub fn plan(
        preset: &str,
        set: &[String],
        device: Option<&str>,
        axes: Vec<Axis>,
    ) -> Result<Sweep> {
        if axes.is_empty() {
            return Err(Error::invalid("sweep", "no --sweep axis given"));
        }
        for (i, axis) in axes.iter().enumerate() {
            if axes[..i].iter().any(|a| a.key == axis.key) {
                return Err(Error::invalid(
                    "sweep",
                    format!("--sweep {} is given twice", axis.key),
                ));
            }
        }
        let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
        for axis in &axes {
            combos = combos
                .into_iter()
                .flat_map(|combo| {
                    axis.values.iter().map(move |v| {
                        let mut next = combo.clone();
                        next.push((axis.key.clone(), v.clone()));
                        next
                    })
                })
                .collect();
        }
        let runs = combos
            .iter()
            .enumerate()
            .map(|(i, combo)| {
                let parts: Vec<String> = combo
                    .iter()
                    .map(|(key, value)| {
                        let short = key.rsplit('.').next().unwrap_or(key);
                        format!("{short}={}", name_piece(value))
                    })
                    .collect();
                SweepRun {
                    name: format!("{i:03}-{}", parts.join("-")),
                    overrides: combo.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                    status: Status::Pending,
                    error: None,
                }
            })
            .collect();
        Ok(Sweep {
            preset: preset.to_string(),
            set: set.to_vec(),
            device: device.map(str::to_string),
            axes,
            runs,
        })
    }

    /// The resolved configuration of run `index`; an unknown key or a wrongly typed value is
    /// an error naming the run and the key.
    pub fn config(&self, index: usize) -> Result<Config> {
        let run = self.runs.get(index).ok_or_else(|| {
            Error::invalid(
                "sweep",
                format!("no run {index} in a sweep of {}", self.runs.len()),
            )
        })?;
        let (text, origin) = crate::train::presets::resolve(&self.preset)?;
        let mut config = Config::from_toml(&text, &origin)?;
        config.apply_overrides(&self.set)?;
        config.apply_overrides(&run.overrides).map_err(|e| {
            Error::invalid(
                "sweep",
                format!("run {} ({}): {e}", run.name, run.overrides.join(" ")),
            )
        })?;
        if let Some(device) = &self.device {
            config.train.device = device.clone();
        }
        Ok(config)
    }

    /// Every run's configuration, checked before anything runs.
    pub fn configs(&self) -> Result<Vec<Config>> {
        (0..self.runs.len()).map(|i| self.config(i)).collect()
    }

    /// Reads `DIR/sweep.toml`.
    pub fn read(dir: &Path) -> Result<Sweep> {
        let path = dir.join(SWEEP_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::file(&path, format!("cannot read: {e}")))?;
        toml::from_str(&text).map_err(|e| Error::file(&path, format!("not a sweep record: {e}")))
    }

    /// Writes `DIR/sweep.toml` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(SWEEP_FILE);
        let text = toml::to_string_pretty(self)
            .map_err(|e| Error::file(&path, format!("cannot encode: {e}")))?;
        let text = format!(
            "# moeseg sweep: `moeseg train --resume {}` (or the same command) resumes it.\n{text}",
            dir.display()
        );
        crate::io::safetensors::write_atomically(&path, text.as_bytes())
    }

    /// The plan as printed by `--dry-run` (and before a sweep starts).
    pub fn describe(&self, dir: &Path) -> String {
        let mut text = format!(
            "sweep of {} over {} ({} runs) in {}\n",
            self.preset,
            self.axes
                .iter()
                .map(|a| format!("{}={}", a.key, a.values.join(",")))
                .collect::<Vec<_>>()
                .join(" x "),
            self.runs.len(),
            dir.display()
        );
        for run in &self.runs {
            text.push_str(&format!(
                "  {:<12} {}  {}\n",
                format!("{:?}", run.status).to_lowercase(),
                run.name,
                run.overrides.join(" ")
            ));
        }
        text
    }
}

/// How a sweep is run.
pub struct SweepOptions {
    /// The sweep folder.
    pub dir: PathBuf,
    /// No progress output from the runs.
    pub quiet: bool,
    /// Ctrl-C: the running run saves a checkpoint, the sweep stops.
    pub interrupt: Arc<AtomicBool>,
    /// `--stop-at` for every run (each stops there, resumable, and the sweep goes on).
    pub stop_at: Option<u64>,
}

/// Counts of a sweep's runs by how they ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepSummary {
    /// Finished runs (including those finished before).
    pub finished: usize,
    /// Failed runs.
    pub failed: usize,
    /// Runs stopped with a checkpoint, or not reached after Ctrl-C.
    pub unfinished: usize,
}

/// Starts `sweep` in `options.dir`, or resumes it when the folder holds a `sweep.toml` of the
/// same plan. Every run's configuration is checked first.
pub fn run_sweep(sweep: Sweep, options: &SweepOptions) -> Result<SweepSummary> {
    let dir = options.dir.as_path();
    let mut sweep = if dir.join(SWEEP_FILE).exists() {
        let stored = Sweep::read(dir)?;
        let same =
            stored.preset == sweep.preset && stored.set == sweep.set && stored.axes == sweep.axes;
        if !same {
            return Err(Error::file(
                dir.join(SWEEP_FILE),
                "holds another sweep (preset, --set or --sweep differ); pick another --run-dir",
            ));
        }
        Sweep {
            device: sweep.device.or(stored.device.clone()),
            ..stored
        }
    } else {
        sweep
    };
    let configs = sweep.configs()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create: {e}")))?;
    sweep.write(dir)?;
    if !options.quiet {
        print!("{}", sweep.describe(dir));
    }
    for (index, config) in configs.iter().enumerate() {
        if sweep.runs[index].status == Status::Finished {
            continue;
        }
        if options.interrupt.load(Ordering::SeqCst) {
            break;
        }
        let run_dir = dir.join(&sweep.runs[index].name);
        let resume = run_dir.join(crate::train::run_dir::CONFIG_FILE).exists()
            && crate::train::checkpoint::find(&run_dir, "last").is_ok();
        if resume {
            // The run's own config.toml is what the checkpoint belongs to.
            let stored = crate::train::run_dir::read_config(&run_dir)?;
            if stored.to_toml()? != config.to_toml()? && !same_but_device(&stored, config)? {
                return Err(Error::file(
                    &run_dir,
                    "holds a run with another configuration than the sweep gives it",
                ));
            }
        } else if run_dir.exists() {
            // A run that failed before its first checkpoint: start it afresh.
            std::fs::remove_dir_all(&run_dir)
                .map_err(|e| Error::file(&run_dir, format!("cannot clear: {e}")))?;
        }
        sweep.runs[index].status = Status::Running;
        sweep.runs[index].error = None;
        sweep.write(dir)?;
        if !options.quiet {
            println!(
                "== sweep run {}/{}: {} ({})",
                index + 1,
                sweep.runs.len(),
                sweep.runs[index].name,
                if resume { "resumed" } else { "new" }
            );
        }
        let train_options = TrainOptions {
            run_dir: run_dir.clone(),
            resume,
            quiet: options.quiet,
            interrupt: options.interrupt.clone(),
            stop_at: options.stop_at,
        };
        let (status, error) = match train(config, &train_options) {
            Ok(Outcome::Finished) => (Status::Finished, None),
            Ok(Outcome::Interrupted { .. }) => (Status::Interrupted, None),
            Err(e) => (Status::Failed, Some(e.to_string())),
        };
        if let Some(error) = &error {
            eprintln!("sweep run {} failed: {error}", sweep.runs[index].name);
        }
        sweep.runs[index].status = status;
        sweep.runs[index].error = error;
        sweep.write(dir)?;
    }
    let count = |s: Status| sweep.runs.iter().filter(|r| r.status == s).count();
    let summary = SweepSummary {
        finished: count(Status::Finished),
        failed: count(Status::Failed),
        unfinished: sweep.runs.len() - count(Status::Finished) - count(Status::Failed),
    };
    if !options.quiet {
        println!(
            "sweep {}: {} finished, {} failed, {} not finished (record: {})",
            dir.display(),
            summary.finished,
            summary.failed,
            summary.unfinished,
            dir.join(SWEEP_FILE).display()
        );
    }
    Ok(summary)
}

/// True when two configurations differ at most in `train.device` (`--device` may change
/// between the start and the resume of a sweep).
fn same_but_device(a: &Config, b: &Config) -> Result<bool> {
    let mut a = a.clone();
    a.train.device = b.train.device.clone();
    Ok(a.to_toml()? == b.to_toml()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_split_at_top_level_commas_and_multiply_out() {
        let axis = Axis::parse("model.moe.paths=[\"a\",\"b\"],[\"c\"]").unwrap();
        assert_eq!(axis.values, vec!["[\"a\",\"b\"]", "[\"c\"]"]);
        let sweep = Sweep::plan(
            "synthetic-enet/tiny",
            &[],
            None,
            vec![
                Axis::parse("model.moe.num_experts=4,8,16").unwrap(),
                Axis::parse("model.moe.k=1,2").unwrap(),
            ],
        )
        .unwrap();
        let names: Vec<&str> = sweep.runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "000-num_experts=4-k=1",
                "001-num_experts=4-k=2",
                "002-num_experts=8-k=1",
                "003-num_experts=8-k=2",
                "004-num_experts=16-k=1",
                "005-num_experts=16-k=2"
            ]
        );
        assert_eq!(
            sweep.runs[3].overrides,
            ["model.moe.num_experts=8", "model.moe.k=2"]
        );
        assert!(Axis::parse("model.moe.k").is_err());
        assert!(Axis::parse("model.moe.k=1,,2").is_err());
    }
}
