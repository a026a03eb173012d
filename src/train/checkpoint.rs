//! Checkpoints of a run: `RUN/checkpoints/{last,best}/` each holding `model.safetensors` (the
//! PyTorch-named state dict), `optimizer.safetensors` (optimizer and LR-scheduler state, exact
//! to the bit) and `state.json` ([`TrainState`]: where in training it was taken).
//!
//! Crash safety: a checkpoint is written file by file (each atomically) into a staging folder
//! `.NAME.staging`, then swapped in: `NAME` → `.NAME.old`, staging → `NAME`, `.NAME.old`
//! removed. At every instant either `NAME` or `.NAME.old` is a complete checkpoint, and
//! [`find`] falls back to `.NAME.old` when a crash hit between the two renames.

use crate::error::{Error, Result};
use crate::io::safetensors;
use crate::nn::state_dict::{load_state_dict, save_state_dict, LoadOptions};
use crate::nn::Module;
use crate::optim::{LrScheduler, Optimizer};
use crate::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The model weights file of a checkpoint.
pub const MODEL_FILE: &str = "model.safetensors";
/// The optimizer and scheduler state file of a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The training-position file of a checkpoint.
pub const STATE_FILE: &str = "state.json";

/// Where training stood when a checkpoint was taken (`state.json`). Together with the seed in
/// the run's config this fixes the data order, augmentation and dropout of every later step, so
/// a resumed run repeats an uninterrupted one exactly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: u64,
    /// Epoch of the next step (0-based).
    pub epoch: usize,
    /// Batches of that epoch already consumed (the loader restarts there).
    pub batch_in_epoch: usize,
    /// Total steps of the run.
    pub total_steps: u64,
    /// Seed of the run (init, loader, per-step dropout / noise generator `seed ⊕ step`).
    pub seed: u64,
    /// Best validation mIoU so far.
    pub best_miou: Option<f64>,
    /// Step of the best mIoU.
    pub best_step: Option<u64>,
    /// Epoch (1-based, completed) of the best mIoU.
    pub best_epoch: Option<usize>,
    /// Training time so far in seconds (evaluation included).
    pub elapsed_s: f64,
    /// True once the last step was taken.
    pub finished: bool,
    /// Loss sums of the epoch in progress, so its `epoch` record is the same after a resume.
    #[serde(default)]
    pub epoch_losses: LossSums,
}

/// Sums of the loss parts over an interval of steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LossSums {
    /// Σ total loss.
    pub loss: f64,
    /// Σ main cross-entropy.
    pub main: f64,
    /// Σ weighted auxiliary cross-entropy.
    pub aux: f64,
    /// Σ balancing loss.
    pub balance: f64,
    /// Steps summed.
    pub steps: u64,
}

/// `RUN/checkpoints`.
pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// Writes checkpoint `name` (`last` or `best`) of a run, crash-safely (see the module doc).
pub fn save(
    run: &Path,
    name: &str,
    model: &dyn Module,
    optimizer: &dyn Optimizer,
    scheduler: &LrScheduler,
    state: &TrainState,
) -> Result<()> {
    let dir = checkpoints_dir(run);
    let final_dir = dir.join(name);
    let staging = dir.join(format!(".{name}.staging"));
    let old = dir.join(format!(".{name}.old"));
    let io = |path: &Path, what: &str, e: std::io::Error| Error::file(path, format!("{what}: {e}"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .map_err(|e| io(&staging, "cannot remove a stale staging folder", e))?;
    }
    std::fs::create_dir_all(&staging)
        .map_err(|e| io(&staging, "cannot create the checkpoint folder", e))?;
    save_state_dict(model, staging.join(MODEL_FILE))?;
    let mut extra = optimizer.state_tensors();
    extra.extend(scheduler.state_tensors());
    safetensors::save(
        staging.join(OPTIMIZER_FILE),
        extra.iter().map(|(k, t)| (k.as_str(), t, DType::F32)),
    )?;
    let json = serde_json::to_string_pretty(state)
        .map_err(|e| Error::invalid("checkpoint", format!("cannot encode the state: {e}")))?;
    safetensors::write_atomically(&staging.join(STATE_FILE), json.as_bytes())?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| io(&old, "cannot remove", e))?;
    }
    if final_dir.exists() {
        std::fs::rename(&final_dir, &old).map_err(|e| io(&final_dir, "cannot move aside", e))?;
    }
    std::fs::rename(&staging, &final_dir).map_err(|e| io(&staging, "cannot move into place", e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| io(&old, "cannot remove", e))?;
    }
    Ok(())
}

/// The folder of checkpoint `name` of a run: `NAME`, or `.NAME.old` when a crash interrupted a
/// swap. An error says what the run folder holds when there is neither.
pub fn find(run: &Path, name: &str) -> Result<PathBuf> {
    let dir = checkpoints_dir(run);
    for candidate in [dir.join(name), dir.join(format!(".{name}.old"))] {
        if candidate.join(STATE_FILE).is_file() && candidate.join(MODEL_FILE).is_file() {
            return Ok(candidate);
        }
    }
    Err(Error::file(
        dir.join(name),
        format!(
            "no `{name}` checkpoint in {} (is it a run folder written by `moeseg train`?)",
            run.display()
        ),
    ))
}

/// Reads a checkpoint's `state.json`.
pub fn read_state(checkpoint: &Path) -> Result<TrainState> {
    let path = checkpoint.join(STATE_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::file(&path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| Error::file(&path, format!("not a valid state: {e}")))
}

/// Loads a checkpoint's weights into `model` (strict: same network and MoE placement).
pub fn load_model(checkpoint: &Path, model: &dyn Module) -> Result<()> {
    load_weights(&checkpoint.join(MODEL_FILE), model)
}

/// Loads a weights file into `model`, strictly, accepting Lightning (`model.`) and
/// DataParallel (`module.`) prefixes.
pub fn load_weights(path: &Path, model: &dyn Module) -> Result<()> {
    let options = LoadOptions {
        strip_prefixes: vec!["model.".into(), "module.".into()],
        ..LoadOptions::default()
    };
    load_state_dict(model, path, options).map_err(|e| naming(path, e))?;
    Ok(())
}

/// `error` as an error of the file `path` unless its message names that file already.
fn naming(path: &Path, error: Error) -> Error {
    if error.to_string().contains(&path.display().to_string()) {
        error
    } else {
        Error::file(path, error.to_string())
    }
}

/// Restores optimizer and scheduler state from a checkpoint.
pub fn load_optimizer(
    checkpoint: &Path,
    optimizer: &mut dyn Optimizer,
    scheduler: &mut LrScheduler,
) -> Result<()> {
    let path = checkpoint.join(OPTIMIZER_FILE);
    let tensors: BTreeMap<String, Tensor> = safetensors::load(&path)
        .map_err(|e| naming(&path, e))?
        .into_iter()
        .map(|(k, (t, _))| (k, t))
        .collect();
    optimizer
        .load_state(&tensors)
        .and_then(|()| scheduler.load_state(&tensors))
        .map_err(|e| naming(&path, e))
}
