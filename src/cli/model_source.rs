//! The model-selecting options shared by `eval`, `predict`, `eval-fixed-expert` and
//! `routing-stats`: a run folder (its config and a checkpoint), or a preset plus a weights file.

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::models::SegNet;
use crate::tensor::manual_seed;
use crate::train::config::Config;
use crate::train::{checkpoint, presets, run_dir, setup};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// Which checkpoint of a run to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// The checkpoint with the best validation mIoU.
    Best,
    /// The latest checkpoint.
    Last,
}

/// Where the network, its configuration and its weights come from.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A run folder written by `moeseg train`: its config.toml and a checkpoint are used.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["preset", "weights"])]
    pub run: Option<PathBuf>,
    /// Checkpoint of --run to load.
    #[arg(long, value_enum, default_value_t = Which::Best, requires = "run")]
    pub checkpoint: Which,
    /// Preset (built-in name such as cityscapes-enet/patch_conv_moe, or a .toml file) describing
    /// the network and data when --weights is used.
    #[arg(long, value_name = "PRESET", requires = "weights")]
    pub preset: Option<String>,
    /// A safetensors file of weights (PyTorch state-dict names) for the --preset network.
    #[arg(long, value_name = "FILE", requires = "preset")]
    pub weights: Option<PathBuf>,
    /// Override a configuration key, e.g. `--set data.root=/data/cityscapes` or
    /// `--set data.val_split=test` (repeatable; typed by the schema).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where to compute: auto (CUDA when usable, else the CPU), cpu, cuda, cuda:N, or cuda-emu[:N]
    /// (the CUDA kernels emulated on the CPU).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
}

/// The resolved model and its configuration.
pub struct Loaded {
    /// Configuration (from the run or the preset, with --set applied).
    pub config: Config,
    /// The network with its weights, in eval mode, on [`Loaded::device`].
    pub model: Box<dyn SegNet>,
    /// Where the network computes (`--device`, else the configuration's `train.device`).
    pub device: Device,
    /// The run folder, when --run was given.
    pub run: Option<PathBuf>,
    /// What was loaded, for messages.
    pub origin: String,
}

impl ModelArgs {
    /// Builds the network and loads its weights.
    pub fn load(&self) -> Result<Loaded> {
        let (mut config, weights, origin) = match (&self.run, &self.preset, &self.weights) {
            (Some(run), _, _) => {
                let config = run_dir::read_config(run)?;
                let name = match self.checkpoint {
                    Which::Best => "best",
                    Which::Last => "last",
                };
                // A run stopped before its first evaluation has no `best` yet: fall back to last.
                let dir = checkpoint::find(run, name).or_else(|e| match self.checkpoint {
                    Which::Best => checkpoint::find(run, "last"),
                    Which::Last => Err(e),
                })?;
                let origin = dir.display().to_string();
                (config, dir.join(checkpoint::MODEL_FILE), origin)
            }
            (None, Some(preset), Some(weights)) => {
                let (text, origin) = presets::resolve(preset)?;
                let config = Config::from_toml(&text, &origin)?;
                (config, weights.clone(), weights.display().to_string())
            }
            _ => {
                return Err(Error::invalid(
                    "arguments",
                    "give either --run RUN_DIR, or --preset PRESET with --weights FILE",
                ))
            }
        };
        config.apply_overrides(&self.set)?;
        if let Some(device) = &self.device {
            config.train.device = device.clone();
        }
        let (device, note) = setup::resolve_device(&config.train.device)?;
        if let Some(note) = note {
            eprintln!("{note}");
        }
        let model: Box<dyn SegNet> = if config.ensemble.is_ensemble() {
            // A gated ensemble run (`moeseg ensemble train`): experts plus the gate's weights.
            Box::new(crate::ensemble::train::load_weights(
                &config, &weights, &device,
            )?)
        } else {
            manual_seed(config.train.seed);
            let model = setup::build_model(&config.model)?;
            checkpoint::load_weights(&weights, &*model)?;
            model
        };
        crate::nn::to_device(&*model, &device)?;
        crate::nn::set_training(&*model, false);
        Ok(Loaded {
            config,
            model,
            device,
            run: self.run.clone(),
            origin,
        })
    }
}

/// `explicit`, else `RUN/<name>` with --run, else `./<name>`.
pub fn output_path(explicit: &Option<PathBuf>, run: &Option<PathBuf>, name: &str) -> PathBuf {
    match (explicit, run) {
        (Some(path), _) => path.clone(),
        (None, Some(run)) => run.join(name),
        (None, None) => PathBuf::from(name),
    }
}

/// Writes pretty JSON to `path`, atomically.
pub fn write_json(path: &std::path::Path, value: &serde_json::Value) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::file(parent, format!("cannot create: {e}")))?;
    }
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::invalid("json", format!("cannot encode: {e}")))?;
    crate::io::safetensors::write_atomically(path, text.as_bytes())
}
