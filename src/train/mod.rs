//! Training and evaluation: presets, the training loop, checkpoints, metrics and plots.
//!
//! - [`config`]: the TOML schema of presets and runs, `--set` overrides; [`presets`]: the
//!   built-in `models/*.toml`.
//! - [`setup`]: device, network (+ PatchConvMoE placement), optimizer, schedule, data loaders
//!   from a config.
//! - [`trainer`]: the loop (loss, logging, evaluation, checkpoints, resume, Ctrl-C, NaN stop);
//!   [`checkpoint`]: crash-safe `last` / `best`; [`run_dir`]: the run folder and metrics.jsonl.
//! - [`evaluate`]: full-resolution or sliding-window evaluation with one confusion matrix;
//!   [`metrics`]: the confusion matrix and IoU; [`plots`], [`report`]: pictures and summaries.

pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod config_dynamic;
pub mod dynamic_step;
pub mod evaluate;
pub mod metrics;
pub mod plots;
pub mod presets;
pub mod report;
pub mod run_dir;
pub mod setup;
pub mod sweep;
pub mod tensorboard;
pub mod trainer;
