//! `[model.dynamic]`: the dynamic routing network's space, gates and budget constraint, with
//! the original's configuration names (`MODEL.BACKBONE`, `MODEL.GATE`, `MODEL.BUDGET`).

use crate::error::Result;
use crate::models::dynamic::{BudgetConfig, DynamicConfig};
use serde::{Deserialize, Serialize};

/// `[model.dynamic]` (used when `model.name` is `dynamic`, `dynamic16` or `dynamic33`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamicSection {
    /// `LAYER_NUM` (16 or 33 in the original; `dynamic16` / `dynamic33` set it). At least 3.
    pub layers: usize,
    /// `INIT_CHANNEL`: channels at stride 4 (64).
    pub channels: usize,
    /// `SMALL_GATE`: gates see their input bilinearly downsampled ×0.25.
    pub small_gate: bool,
    /// `GATE_INIT_BIAS` (1.5).
    pub gate_bias: f32,
    /// The network's input: `imagenet` (the data as loaded) or `bgr255` (the original's BGR in
    /// 0–255 minus PIXEL_MEAN, converted inside the network: for its converted checkpoints).
    pub input_convention: String,
    /// `[model.dynamic.budget]`: the budget constraint.
    pub budget: BudgetSection,
}

impl Default for DynamicSection {
    fn default() -> Self {
        DynamicSection {
            layers: 16,
            channels: 64,
            small_gate: false,
            gate_bias: 1.5,
            input_convention: "imagenet".into(),
            budget: BudgetSection::default(),
        }
    }
}

/// `[model.dynamic.budget]`: `MODEL.BUDGET` of the original.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetSection {
    /// `CONSTRAIN`: add the budget loss.
    pub constrain: bool,
    /// `LOSS_WEIGHT` (λ).
    pub loss_weight: f32,
    /// `LOSS_MU` (μ).
    pub mu: f32,
    /// `FLOPS_ALL` (MFLOPs), the normaliser; 0 = the full space's expected FLOPs at the
    /// training crop, computed when the run starts.
    pub flops_all: f32,
    /// `UNUPDATE_RATE`: share of the steps before the loss starts.
    pub unupdate_rate: f32,
    /// `WARM_UP`: ramp its weight over 2 % of the steps.
    pub warm_up: bool,
}

impl Default for BudgetSection {
    fn default() -> Self {
        let base = BudgetConfig::default();
        BudgetSection {
            constrain: base.constrain,
            loss_weight: base.loss_weight,
            mu: base.mu,
            flops_all: base.flops_all,
            unupdate_rate: base.unupdate_rate,
            warm_up: base.warm_up,
        }
    }
}

impl DynamicSection {
    /// The network configuration for `[model] name` (`dynamic16` / `dynamic33` fix the layers).
    pub fn network(&self, name: &str, num_classes: usize) -> Result<DynamicConfig> {
        let layers = match name {
            "dynamic16" => 16,
            "dynamic33" => 33,
            _ => self.layers,
        };
        let config = DynamicConfig {
            layers,
            channels: self.channels,
            num_classes,
            small_gate: self.small_gate,
            gate_bias: self.gate_bias,
        };
        config.validate()?;
        Ok(config)
    }

    /// The budget constraint, with `flops_all` = `full_space` where the section leaves it 0.
    pub fn budget(&self, full_space: f64) -> Result<BudgetConfig> {
        let b = &self.budget;
        let config = BudgetConfig {
            constrain: b.constrain,
            loss_weight: b.loss_weight,
            mu: b.mu,
            flops_all: if b.flops_all > 0.0 {
                b.flops_all
            } else {
                full_space as f32
            },
            unupdate_rate: b.unupdate_rate,
            warm_up: b.warm_up,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Builds the network of `[model]` (`name` dynamic, dynamic16 or dynamic33).
pub fn build_dynamic(
    name: &str,
    num_classes: usize,
    section: &DynamicSection,
) -> Result<crate::models::dynamic::DynamicNet4Seg> {
    let mut net = crate::models::dynamic::DynamicNet4Seg::new(section.network(name, num_classes)?)?;
    net.input_convention = section.input_convention.parse()?;
    Ok(net)
}

/// The `[model] name`s of the dynamic networks.
pub fn is_dynamic_name(name: &str) -> bool {
    matches!(name, "dynamic" | "dynamic16" | "dynamic33")
}
