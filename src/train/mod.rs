//! Training and evaluation: presets, the training loop, checkpoints, metrics and plots.

pub mod metrics;
pub mod plots;
