//! The run folder: `config.toml` (the resolved configuration), `metrics.jsonl` (one JSON object
//! per line), `checkpoints/`, `plots/`, `samples/`, and `eval.json` from `moeseg eval`.
//!
//! `metrics.jsonl` records have a `kind`: `step` (every `log_interval` steps: step, epoch, loss,
//! main_loss, aux_loss, balance_loss, lr, images_per_s), `epoch` (means over the epoch's steps)
//! and `eval` (miou, pixel_accuracy, per-class iou, mean cross-entropy, NRE and TEC per MoE layer).

use crate::error::{Error, Result};
use crate::train::config::Config;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The resolved configuration of a run.
pub const CONFIG_FILE: &str = "config.toml";
/// The metrics log of a run.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`. Fields that do not apply to a kind are left out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    /// `step`, `epoch` or `eval`.
    pub kind: String,
    /// Optimizer steps done.
    pub step: u64,
    /// Epoch (1-based) the record belongs to.
    pub epoch: usize,
    /// Total loss (mean over the interval for `epoch` records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Cross-entropy of the main output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub main_loss: Option<f64>,
    /// Weighted cross-entropy of the auxiliary heads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aux_loss: Option<f64>,
    /// Sum of the MoE balancing losses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance_loss: Option<f64>,
    /// Budget loss of a dynamic routing network (step records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_loss: Option<f64>,
    /// Batch-mean expected GFLOPs of a dynamic routing network (step records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_gflops: Option<f64>,
    /// Batch-mean real GFLOPs of a dynamic routing network (step records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_gflops: Option<f64>,
    /// Learning rate of the step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Training throughput since the previous record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images_per_s: Option<f64>,
    /// Validation mIoU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub miou: Option<f64>,
    /// Validation pixel accuracy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pixel_accuracy: Option<f64>,
    /// Validation mean cross-entropy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Per-class IoU (`null` for a class with no ground truth and no prediction).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iou: Option<Vec<Option<f64>>>,
    /// NRE and TEC of every MoE layer over the validation split (`eval` records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<BTreeMap<String, LayerRoutingMetrics>>,
}

/// The routing figures of one MoE layer in an `eval` record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerRoutingMetrics {
    /// Normalised routing entropy of the expert usage.
    pub nre: f64,
    /// Top-expert concentration.
    pub tec: f64,
}

/// Appends records to `RUN/metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// The log of a run folder. With `keep_up_to = Some(step)` (resuming), records after `step`
    /// (written after the checkpoint that is resumed) are dropped first.
    pub fn open(run: &Path, keep_up_to: Option<u64>) -> Result<MetricsLog> {
        let path = run.join(METRICS_FILE);
        match keep_up_to {
            None => std::fs::write(&path, b"")
                .map_err(|e| Error::file(&path, format!("cannot create: {e}")))?,
            Some(step) => {
                let kept: Vec<MetricRecord> = read_metrics(run)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|r| r.step <= step)
                    .collect();
                let mut text = String::new();
                for record in &kept {
                    text.push_str(&encode(record)?);
                    text.push('\n');
                }
                crate::io::safetensors::write_atomically(&path, text.as_bytes())?;
            }
        }
        Ok(MetricsLog { path })
    }

    /// Appends one record as a JSON line.
    pub fn append(&mut self, record: &MetricRecord) -> Result<()> {
        let line = encode(record)?;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| Error::file(&self.path, format!("cannot open: {e}")))?;
        writeln!(file, "{line}").map_err(|e| Error::file(&self.path, format!("cannot write: {e}")))
    }
}

fn encode(record: &MetricRecord) -> Result<String> {
    serde_json::to_string(record)
        .map_err(|e| Error::invalid("metrics", format!("cannot encode a record: {e}")))
}

/// Every record of a run's `metrics.jsonl`; an unparsable line is an error naming its number.
pub fn read_metrics(run: &Path) -> Result<Vec<MetricRecord>> {
    let path = run.join(METRICS_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::file(&path, format!("cannot read: {e}")))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line)
                .map_err(|e| Error::file(&path, format!("line {}: {e}", n + 1)))
        })
        .collect()
}

/// Creates a fresh run folder (it must not hold a run already) and writes `config.toml`.
pub fn create(run: &Path, config: &Config) -> Result<()> {
    if run.join(CONFIG_FILE).exists() {
        return Err(Error::file(
            run,
            "already holds a run; continue it with `moeseg train --resume`, or pick another \
             --run-dir",
        ));
    }
    for sub in ["checkpoints", "plots", "samples"] {
        let dir = run.join(sub);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::file(&dir, format!("cannot create: {e}")))?;
    }
    write_config(run, config)
}

/// Writes `RUN/config.toml`.
pub fn write_config(run: &Path, config: &Config) -> Result<()> {
    let text = format!(
        "# Resolved configuration of this run (moeseg {}).\n{}",
        env!("CARGO_PKG_VERSION"),
        config.to_toml()?
    );
    crate::io::safetensors::write_atomically(&run.join(CONFIG_FILE), text.as_bytes())
}

/// Reads `RUN/config.toml`.
pub fn read_config(run: &Path) -> Result<Config> {
    let path = run.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::file(
            &path,
            format!("cannot read ({e}); is this a run folder written by `moeseg train`?"),
        )
    })?;
    Config::from_toml(&text, &path.display().to_string())
}

/// `runs_dir/<preset with / as ->-<UTC time>`: a new folder name for a run.
pub fn default_run_dir(runs_dir: &str, preset: &str) -> PathBuf {
    let stem = Path::new(preset)
        .with_extension("")
        .to_string_lossy()
        .replace(['/', '\\'], "-")
        .trim_start_matches("models-")
        .trim_matches('.')
        .to_string();
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let base = Path::new(runs_dir).join(format!(
        "{stem}-{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    ));
    let mut candidate = base.clone();
    let mut n = 1;
    while candidate.exists() {
        n += 1;
        candidate = PathBuf::from(format!("{}-{n}", base.display()));
    }
    candidate
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
