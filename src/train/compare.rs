//! `moeseg compare RUN_OR_SWEEP...`: one table of runs (terminal, CSV, Markdown) with the
//! configuration keys that differ between them as columns, then best and final mIoU, pixel
//! accuracy, parameters (total, active), MACs, NRE and TEC of each MoE layer, training time and
//! images/s; plus overlaid loss and mIoU curves and a per-class IoU chart (PNG).
//!
//! A sweep folder (with `sweep.toml`) stands for its runs that have a `config.toml`, in the
//! sweep's order.

use crate::error::{Error, Result};
use crate::train::config::Config;
use crate::train::run_dir::{self, MetricRecord};
use crate::train::sweep::{Sweep, SWEEP_FILE};
use crate::train::{checkpoint, plots, report, setup};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What is compared of one run.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// The run folder.
    pub dir: PathBuf,
    /// Its short name (the folder name; `sweep/run` for a sweep's run).
    pub name: String,
    /// Its resolved configuration.
    pub config: Config,
    /// Every `metrics.jsonl` record.
    pub records: Vec<MetricRecord>,
    /// Total and active parameters, and MACs of one forward of one image.
    pub params_total: u64,
    /// Parameters one token uses.
    pub params_active: u64,
    /// MACs of one image at `input`.
    pub macs: u64,
    /// `[H, W]` the MACs are counted at.
    pub input: [usize; 2],
    /// Training time (s) and whether the run finished, from `checkpoints/last/state.json`.
    pub elapsed_s: Option<f64>,
    /// True when every step was done.
    pub finished: bool,
}

impl RunSummary {
    fn evals(&self) -> impl Iterator<Item = &MetricRecord> {
        self.records.iter().filter(|r| r.kind == "eval")
    }

    /// The best validation mIoU.
    pub fn best_miou(&self) -> Option<f64> {
        self.evals().filter_map(|r| r.miou).reduce(f64::max)
    }

    /// The last evaluation.
    pub fn final_eval(&self) -> Option<&MetricRecord> {
        self.evals().last()
    }

    /// Mean training images/s over the step records.
    pub fn images_per_s(&self) -> Option<f64> {
        let rates: Vec<f64> = self
            .records
            .iter()
            .filter(|r| r.kind == "step")
            .filter_map(|r| r.images_per_s)
            .collect();
        (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64)
    }
}

/// The input size MACs are counted at: `data.resize`, else `data.crop`, else the synthetic
/// images' size, else 512×1024.
fn macs_input(config: &Config) -> [usize; 2] {
    let data = &config.data;
    if data.resize != [0, 0] {
        data.resize
    } else if data.crop != [0, 0] {
        data.crop
    } else if data.dataset == "synthetic" {
        [data.synthetic.height, data.synthetic.width]
    } else {
        [512, 1024]
    }
}

/// Reads one run folder.
pub fn read_run(dir: &Path, name: String) -> Result<RunSummary> {
    let config = run_dir::read_config(dir)?;
    let records = run_dir::read_metrics(dir)?;
    let input = macs_input(&config);
    let net = setup::build_model(&config.model)
        .map_err(|e| Error::file(dir, format!("cannot build its network: {e}")))?;
    let counts = crate::models::complexity(
        net.as_ref() as &dyn crate::nn::Module,
        [1, 3, input[0], input[1]],
    )?;
    let state = checkpoint::find(dir, "last")
        .and_then(|last| checkpoint::read_state(&last))
        .ok();
    Ok(RunSummary {
        dir: dir.to_path_buf(),
        name,
        config,
        records,
        params_total: counts.total_params,
        params_active: counts.active_params,
        macs: counts.macs,
        input,
        elapsed_s: state.as_ref().map(|s| s.elapsed_s),
        finished: state.is_some_and(|s| s.finished),
    })
}

/// The runs named on the command line: run folders, and sweep folders standing for their runs.
pub fn collect_runs(paths: &[PathBuf]) -> Result<Vec<RunSummary>> {
    let mut runs = Vec::new();
    for path in paths {
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| path.display().to_string());
        if path.join(SWEEP_FILE).exists() {
            let sweep = Sweep::read(path)?;
            for run in &sweep.runs {
                let dir = path.join(&run.name);
                if dir.join(run_dir::CONFIG_FILE).exists() {
                    runs.push(read_run(&dir, format!("{base}/{}", run.name))?);
                }
            }
        } else if path.join(run_dir::CONFIG_FILE).exists() {
            runs.push(read_run(path, base)?);
        } else {
            return Err(Error::file(
                path,
                "is neither a run folder (config.toml) nor a sweep folder (sweep.toml)",
            ));
        }
    }
    if runs.is_empty() {
        return Err(Error::invalid("compare", "no run to compare"));
    }
    Ok(runs)
}

/// The configuration keys whose values differ between the runs (`train.device` and
/// `output.runs_dir` left out), with each run's value.
pub fn differing_keys(runs: &[RunSummary]) -> Result<Vec<(String, Vec<String>)>> {
    let keyed: Vec<Vec<(String, String)>> = runs
        .iter()
        .map(|r| r.config.keys())
        .collect::<Result<_>>()?;
    let all: BTreeSet<&String> = keyed.iter().flatten().map(|(k, _)| k).collect();
    let mut out = Vec::new();
    for key in all {
        if key == "train.device" || key == "output.runs_dir" {
            continue;
        }
        let values: Vec<String> = keyed
            .iter()
            .map(|keys| {
                keys.iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| unquote(v))
                    .unwrap_or_default()
            })
            .collect();
        if values.iter().any(|v| v != &values[0]) {
            out.push((key.clone(), values));
        }
    }
    Ok(out)
}

/// A TOML string value without its quotes (`"2conv_gap"` → `2conv_gap`); others unchanged.
fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) if !inner.contains('"') => inner.to_string(),
        _ => value.to_string(),
    }
}

/// The table: a header row and one row per run, as text cells.
pub fn table(runs: &[RunSummary]) -> Result<Vec<Vec<String>>> {
    let keys = differing_keys(runs)?;
    let layers: BTreeSet<String> = runs
        .iter()
        .filter_map(|r| r.final_eval().and_then(|e| e.routing.clone()))
        .flat_map(|routing| routing.into_keys())
        .collect();
    let mut header: Vec<String> = vec!["run".into()];
    header.extend(keys.iter().map(|(k, _)| k.clone()));
    header.extend(
        [
            "best mIoU",
            "final mIoU",
            "pixel acc",
            "params",
            "active params",
            "GMACs",
            "input",
        ]
        .map(String::from),
    );
    for layer in &layers {
        header.push(format!("NRE {layer}"));
        header.push(format!("TEC {layer}"));
    }
    header.extend(["train s", "img/s", "status"].map(String::from));
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let mut rows = vec![header];
    for (i, run) in runs.iter().enumerate() {
        let last = run.final_eval();
        let mut row = vec![run.name.clone()];
        row.extend(keys.iter().map(|(_, values)| values[i].clone()));
        row.push(opt(run.best_miou(), 4));
        row.push(opt(last.and_then(|e| e.miou), 4));
        row.push(opt(last.and_then(|e| e.pixel_accuracy), 4));
        row.push(run.params_total.to_string());
        row.push(run.params_active.to_string());
        row.push(format!("{:.4}", run.macs as f64 / 1e9));
        row.push(format!("{}x{}", run.input[0], run.input[1]));
        for layer in &layers {
            let figures = last
                .and_then(|e| e.routing.as_ref())
                .and_then(|r| r.get(layer));
            row.push(opt(figures.map(|f| f.nre), 3));
            row.push(opt(figures.map(|f| f.tec), 3));
        }
        row.push(opt(run.elapsed_s, 1));
        row.push(opt(run.images_per_s(), 1));
        row.push(
            if run.finished {
                "finished"
            } else {
                "unfinished"
            }
            .into(),
        );
        rows.push(row);
    }
    Ok(rows)
}

/// The table aligned for a terminal.
pub fn render_text(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            row.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The table as CSV (RFC 4180 quoting).
pub fn render_csv(rows: &[Vec<String>]) -> String {
    let quote = |cell: &String| {
        if cell.contains([',', '"', '\n']) {
            format!("\"{}\"", cell.replace('"', "\"\""))
        } else {
            cell.clone()
        }
    };
    rows.iter()
        .map(|row| row.iter().map(quote).collect::<Vec<_>>().join(",") + "\n")
        .collect()
}

/// The table as a Markdown table.
pub fn render_markdown(rows: &[Vec<String>]) -> String {
    let line = |row: &Vec<String>| format!("| {} |\n", row.join(" | ").replace('\n', " "));
    let mut text = String::new();
    if let Some(header) = rows.first() {
        text.push_str(&line(header));
        text.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    }
    for row in rows.iter().skip(1) {
        text.push_str(&line(row));
    }
    text
}

/// Writes `compare.csv`, `compare.md`, `compare_loss.png`, `compare_miou.png` and
/// `compare_iou.png` into `out`; returns the terminal table.
pub fn write_comparison(runs: &[RunSummary], out: &Path) -> Result<String> {
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, format!("cannot create: {e}")))?;
    let rows = table(runs)?;
    for (file, text) in [
        ("compare.csv", render_csv(&rows)),
        ("compare.md", render_markdown(&rows)),
    ] {
        crate::io::safetensors::write_atomically(&out.join(file), text.as_bytes())?;
    }
    let curves =
        |kind: &str, value: fn(&MetricRecord) -> Option<f64>| -> Vec<(String, Vec<(f64, f64)>)> {
            runs.iter()
                .map(|run| {
                    let points = run
                        .records
                        .iter()
                        .filter(|r| r.kind == kind)
                        .filter_map(|r| value(r).map(|v| (r.step as f64, v)))
                        .collect();
                    (run.name.clone(), points)
                })
                .collect()
        };
    plots::line_plot(
        &out.join("compare_loss.png"),
        "training loss",
        "step",
        "loss",
        &curves("step", |r| r.loss),
    )?;
    plots::line_plot(
        &out.join("compare_miou.png"),
        "validation mIoU",
        "step",
        "mIoU",
        &curves("eval", |r| r.miou),
    )?;
    let classes = runs
        .iter()
        .map(|r| r.config.model.num_classes)
        .max()
        .unwrap_or(0);
    let per_class: Vec<(String, Vec<f64>)> = runs
        .iter()
        .map(|run| {
            let iou = run
                .final_eval()
                .and_then(|e| e.iou.clone())
                .unwrap_or_default();
            let values = (0..classes)
                .map(|c| iou.get(c).copied().flatten().unwrap_or(f64::NAN))
                .collect();
            (run.name.clone(), values)
        })
        .collect();
    plots::grouped_bar_plot(
        &out.join("compare_iou.png"),
        "per-class IoU (final evaluation)",
        "IoU",
        &report::class_names(classes),
        &per_class,
    )?;
    Ok(render_text(&rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_show_strings_without_quotes_and_quote_csv_cells() {
        assert_eq!(unquote("\"2conv_gap\""), "2conv_gap");
        assert_eq!(unquote("8"), "8");
        assert_eq!(unquote("[\"a\", \"b\"]"), "[\"a\", \"b\"]");
        let rows = vec![
            vec!["run".to_string(), "model.moe.paths".to_string()],
            vec!["r0".to_string(), "[\"a\", \"b\"]".to_string()],
        ];
        assert_eq!(
            render_csv(&rows),
            "run,model.moe.paths\nr0,\"[\"\"a\"\", \"\"b\"\"]\"\n"
        );
        assert_eq!(
            render_markdown(&rows),
            "| run | model.moe.paths |\n|---|---|\n| r0 | [\"a\", \"b\"] |\n"
        );
    }
}
