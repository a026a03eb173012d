//! The experts of an ensemble: trained run folders loaded frozen (eval mode, never in an
//! optimizer, run without gradients), their weights identified by a hash, and the rule that
//! brings an expert with a class map to the ensemble's classes (see the module doc of
//! [`crate::ensemble`]).

use crate::backend::Device;
use crate::data::ClassMap;
use crate::error::{Error, Result};
use crate::models::SegNet;
use crate::tensor::{manual_seed, Tensor};
use crate::train::config::Config;
use crate::train::{checkpoint, run_dir, setup};
use std::path::{Path, PathBuf};

/// FNV-1a 64 of a file's bytes, as 16 hex digits.
pub fn weights_hash(path: &Path) -> Result<String> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read weights: {e}")))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in &bytes {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    Ok(format!("{h:016x}"))
}

/// One frozen expert.
pub struct Expert {
    /// The run folder.
    pub run: PathBuf,
    /// A short name (the run folder's name).
    pub name: String,
    /// The weights file loaded.
    pub weights: PathBuf,
    /// [`weights_hash`] of the weights file.
    pub hash: String,
    /// The run's configuration.
    pub config: Config,
    /// The network, in eval mode on the ensemble's device.
    pub model: Box<dyn SegNet>,
    /// The expert's class map (`None`: it predicts the ensemble's classes).
    pub class_map: Option<ClassMap>,
}

impl Expert {
    /// Loads an expert from `spec`: a run folder, or `PRESET::WEIGHTS` (a built-in preset or
    /// `.toml` file describing the network and its data, and a safetensors weights file).
    pub fn from_spec(
        spec: &str,
        which: &str,
        expected_hash: Option<&str>,
        device: &Device,
    ) -> Result<Expert> {
        match spec.split_once("::") {
            None => Expert::load(Path::new(spec), which, expected_hash, device),
            Some((preset, weights)) => {
                let (text, origin) = crate::train::presets::resolve(preset)?;
                let config = Config::from_toml(&text, &origin)?;
                let weights = Path::new(weights);
                if !weights.is_file() {
                    return Err(Error::file(weights, "expert weights file not found"));
                }
                let name = weights
                    .file_stem()
                    .map_or_else(|| spec.to_string(), |n| n.to_string_lossy().into());
                Expert::with_weights(
                    Path::new(preset),
                    name,
                    config,
                    weights,
                    expected_hash,
                    device,
                )
            }
        }
    }

    /// Loads checkpoint `which` (`best`, falling back to `last`, or `last`) of the run folder
    /// `run` onto `device`; `expected_hash`, when given and not empty, must match the weights.
    pub fn load(
        run: &Path,
        which: &str,
        expected_hash: Option<&str>,
        device: &Device,
    ) -> Result<Expert> {
        if !run.is_dir() {
            return Err(Error::file(
                run,
                "expert run folder not found (give a folder written by `moeseg train`)",
            ));
        }
        let config = run_dir::read_config(run)?;
        if config.ensemble.is_ensemble() {
            return Err(Error::file(
                run,
                "an expert must be a single network, not an ensemble run",
            ));
        }
        let dir = match which {
            "best" => checkpoint::find(run, "best").or_else(|_| checkpoint::find(run, "last")),
            "last" => checkpoint::find(run, "last"),
            other => {
                return Err(Error::invalid(
                    "config",
                    format!("ensemble.checkpoint = `{other}`: expected best or last"),
                ))
            }
        }?;
        let weights = dir.join(checkpoint::MODEL_FILE);
        let name = run
            .file_name()
            .map_or_else(|| run.display().to_string(), |n| n.to_string_lossy().into());
        Expert::with_weights(run, name, config, &weights, expected_hash, device)
    }

    /// The expert of `config` with the weights file `weights`.
    fn with_weights(
        run: &Path,
        name: String,
        config: Config,
        weights: &Path,
        expected_hash: Option<&str>,
        device: &Device,
    ) -> Result<Expert> {
        if config.ensemble.is_ensemble() {
            return Err(Error::file(
                run,
                "an expert must be a single network, not an ensemble",
            ));
        }
        let weights = weights.to_path_buf();
        let hash = weights_hash(&weights)?;
        if let Some(expected) = expected_hash.filter(|h| !h.is_empty()) {
            if expected != hash {
                return Err(Error::file(
                    &weights,
                    format!(
                        "the expert's weights changed: hash {hash}, the ensemble was trained with \
                         {expected} (retrain the gate or restore the expert run)"
                    ),
                ));
            }
        }
        let class_map = ClassMap::parse(&config.data.class_map, &config.data.class_map_rest)
            .map_err(|e| Error::file(run, format!("the expert's data.class_map: {e}")))?;
        manual_seed(config.train.seed);
        let model = setup::build_model(&config.model)
            .map_err(|e| Error::file(run, format!("cannot build the expert network: {e}")))?;
        checkpoint::load_weights(&weights, &*model)?;
        crate::nn::to_device(&*model, device)?;
        crate::nn::set_training(&*model, false);
        Ok(Expert {
            run: run.to_path_buf(),
            name,
            weights,
            hash,
            config,
            model,
            class_map,
        })
    }

    /// Classes of the network's output.
    pub fn out_classes(&self) -> usize {
        self.config.model.num_classes
    }
}

/// The ensemble's class count for `experts`: the common `model.num_classes` of the experts
/// without class map; every class-mapped expert must fit in it. Errors name the experts.
pub fn ensemble_classes(experts: &[Expert]) -> Result<usize> {
    let full: Vec<&Expert> = experts.iter().filter(|e| e.class_map.is_none()).collect();
    let Some(first) = full.first() else {
        return Err(Error::invalid(
            "ensemble",
            "every expert has a data.class_map: one expert at least must predict the full class \
             set (its distribution spreads the class-mapped experts' groups)",
        ));
    };
    let classes = first.out_classes();
    for e in &full {
        if e.out_classes() != classes {
            return Err(Error::invalid(
                "ensemble",
                format!(
                    "experts `{}` ({} classes) and `{}` ({} classes) predict different class sets \
                     and neither has a data.class_map to reconcile them",
                    first.name,
                    classes,
                    e.name,
                    e.out_classes()
                ),
            ));
        }
    }
    for e in experts {
        if let Some(map) = &e.class_map {
            if let Some(&bad) = map
                .groups
                .iter()
                .flatten()
                .find(|&&c| c as usize >= classes)
            {
                return Err(Error::invalid(
                    "ensemble",
                    format!(
                        "expert `{}` maps class {bad}, outside the ensemble's {classes} classes",
                        e.name
                    ),
                ));
            }
            if map.num_classes() != e.out_classes() {
                return Err(Error::invalid(
                    "ensemble",
                    format!(
                        "expert `{}`: data.class_map gives {} classes but the network predicts {}",
                        e.name,
                        map.num_classes(),
                        e.out_classes()
                    ),
                ));
            }
        }
    }
    Ok(classes)
}

/// A `[1, C, 1, 1]` indicator of `ids` on `device`.
fn indicator(ids: &[usize], classes: usize, device: &Device) -> Result<Tensor> {
    let mut v = vec![0f32; classes];
    for &c in ids {
        v[c] = 1.0;
    }
    Tensor::from_vec_on(v, [1, classes, 1, 1], device)
}

/// Brings an expert's probabilities `q` `[B, G, H, W]` to `classes` through its class map,
/// with `reference` `[B, C, H, W]` (`None`: uniform), by the rule of the module doc.
pub fn project(
    map: &ClassMap,
    q: &Tensor,
    reference: Option<&Tensor>,
    classes: usize,
) -> Result<Tensor> {
    let device = q.device();
    let d = q.dims().to_vec();
    let reference = match reference {
        Some(r) => r.clone(),
        None => Tensor::full([d[0], classes, d[2], d[3]], 1.0 / classes as f32, &device)?,
    };
    let covered: Vec<usize> = map.groups.iter().flatten().map(|&c| c as usize).collect();
    let rest: Vec<usize> = (0..classes).filter(|c| !covered.contains(c)).collect();
    let mass = |ids: &[usize]| -> Result<Tensor> {
        reference
            .mul(&indicator(ids, classes, &device)?)?
            .sum(&[1], true)
    };
    // One term per group g: q_g · r · 1[S_g] / r(S_g) (scaled by r(S) for `ignore`).
    let share = |ids: &[usize], g: usize, scale: Option<&Tensor>| -> Result<Tensor> {
        let qg = q.narrow(1, g, 1)?;
        let qg = match scale {
            Some(s) => qg.mul(s)?,
            None => qg,
        };
        let within = reference
            .mul(&indicator(ids, classes, &device)?)?
            .div(&mass(ids)?.add_scalar(1e-12)?)?;
        within.mul(&qg)
    };
    let ids = |g: &Vec<u8>| g.iter().map(|&c| c as usize).collect::<Vec<usize>>();
    let scale = match map.rest {
        crate::data::subset::Rest::Ignore => Some(mass(&covered)?),
        crate::data::subset::Rest::Other => None,
    };
    let mut out = match map.rest {
        crate::data::subset::Rest::Other => share(&rest, map.groups.len(), None)?,
        crate::data::subset::Rest::Ignore => reference.mul(&indicator(&rest, classes, &device)?)?,
    };
    for (g, group) in map.groups.iter().enumerate() {
        out = out.add(&share(&ids(group), g, scale.as_ref())?)?;
    }
    Ok(out)
}
