//! Placing PatchConvMoE layers in a network by parameter path (`../shared/spec/networks.md`,
//! "Default MoE placement"), and loading ImageNet backbone weights.

use super::{ModelName, SegNet};
use crate::error::{Error, Result};
use crate::moe::{
    replace_conv_with_moe, replace_conv_with_soft_moe, Granularity, PatchConvMoeConfig,
    SoftConvMoeConfig,
};
use crate::nn::state_dict::{load_state_dict, LoadOptions, LoadReport};
use crate::nn::Module;
use std::fmt::Write;
use std::path::Path;

/// One PatchConvMoE to place: the path of the stride-1 conv it replaces and its settings.
#[derive(Clone, Debug)]
pub struct MoePlacement {
    /// Parameter path of the replaced conv (`regular5_1.ext_conv2.0`); the layer keeps it.
    pub path: String,
    /// Experts, k, grid, gate, loss, alpha, ….
    pub config: PatchConvMoeConfig,
    /// Soft routing instead (a SoftConvMoE with these settings; `config` is then unused).
    pub soft: Option<SoftConvMoeConfig>,
}

impl MoePlacement {
    /// The spec's default for `name`: E = 8, k = 2, a 3×3 grid, `2conv_gap`, entropy loss.
    pub fn default_for(name: ModelName) -> Self {
        MoePlacement {
            path: name.default_moe_path().to_string(),
            config: PatchConvMoeConfig::default(),
            soft: None,
        }
    }

    /// `path, E=8 k=2 g=3 2conv_gap`: the form the manifests' headers use.
    /// `path, E=8 k=2 g=3 2conv_gap` (soft: `path, soft E=8 p=1 g=3`): the form the
    /// manifests' headers use.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let (mut out, granularity) = match &self.soft {
            Some(s) => (
                format!(
                    "{}, soft E={} p={}",
                    self.path, s.num_experts, s.slots_per_expert
                ),
                s.granularity,
            ),
            None => (
                format!("{}, E={} k={}", self.path, c.num_experts, c.k),
                c.granularity,
            ),
        };
        let _ = match granularity {
            Granularity::Grid(g) => write!(out, " g={g}"),
            Granularity::PatchSize([h, w]) => write!(out, " patch={h}x{w}"),
            Granularity::Image => write!(out, " image"),
        };
        if self.soft.is_none() {
            let _ = write!(out, " {}", c.gate.kind);
        }
        out
    }
}

/// Replaces the conv at each placement's path by a PatchConvMoE (in order); a path that is not
/// a stride-1 conv is an error naming it.
pub fn place_moe(net: &mut dyn SegNet, placements: &[MoePlacement]) -> Result<()> {
    let root: &mut dyn Module = net;
    for placement in placements {
        match placement.soft {
            Some(soft) => replace_conv_with_soft_moe(root, &placement.path, soft)?,
            None => replace_conv_with_moe(root, &placement.path, placement.config)?,
        }
    }
    Ok(())
}

/// Loads ImageNet weights saved from a torchvision classification model (ResNet or
/// MobileNetV3-Large, as safetensors) into the network's `backbone.`: non-strict, the
/// classifier (`fc.*`, `classifier.*`) skipped, MobileNetV3's `features.` prefix mapped onto
/// `backbone.`. The report lists what was loaded, missing and skipped.
pub fn load_imagenet_backbone(net: &dyn SegNet, path: &Path) -> Result<LoadReport> {
    let options = LoadOptions {
        strict: false,
        strip_prefixes: vec!["features.".to_string()],
        add_prefix: Some("backbone.".to_string()),
        skip_unexpected_prefixes: vec!["fc.".to_string(), "classifier.".to_string()],
    };
    let root: &dyn Module = net;
    let report = load_state_dict(root, path, options)?;
    if report.loaded.is_empty() {
        return Err(Error::file(
            path,
            "no tensor of the file matches a `backbone.` key of the network (expected \
             torchvision ResNet or MobileNetV3-Large keys)",
        ));
    }
    Ok(report)
}
