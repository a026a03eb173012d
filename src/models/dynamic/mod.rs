//! Dynamic routing networks for segmentation (Li et al., CVPR 2020; yanwei-li/DynamicRouting),
//! weight-compatible with the original's `DynamicNet4Seg` (`../shared/spec/dynamic_routing.md`,
//! `moe.md` §7): a stride-4 stem, an `init_layer` node, L layers of nodes over 4 scales
//! (1/4…1/32, channels C·2^j), soft conditional gates per node, and a top-down decoder head.
//!
//! - `layers.rs`: the stem, the cell op, the gate and the `dl_lib` conv wrapper;
//! - `cell.rs`: a node and its dense (training) forward;
//! - `network.rs`: the routing space, the head, the forward with expected / real FLOPs;
//! - `skip.rs`: the eval forward that computes each path only for the images whose α > 0;
//! - `flops.rs`: the original's analytic per-op counts; `budget.rs`: the budget loss.

pub mod budget;
pub mod cell;
pub mod flops;
pub mod layers;
pub mod network;
pub mod report;
pub mod routes;
pub mod skip;

pub use budget::BudgetConfig;
pub use cell::{Cell, Direction, GATE_EPS};
pub use network::{dynamic_net, DynamicNet4Seg, RouteRecord};
pub use report::FlopsSummary;

use crate::error::{Error, Result};

/// The original's cells per layer: `[2, 3, 4]` then 4 for every later layer.
pub fn cells_per_layer(layers: usize) -> Vec<usize> {
    (0..layers)
        .map(|i| [2, 3, 4].get(i).copied().unwrap_or(4))
        .collect()
}

/// The shape of a routing space and its gates.
#[derive(Clone, Debug, PartialEq)]
pub struct DynamicConfig {
    /// Layers of nodes (16 for `Layer16`, 33 for `Layer33`; at least 3 so the last layer has
    /// the 4 scales the head reads).
    pub layers: usize,
    /// Channels at stride 4 (`INIT_CHANNEL`, 64); scale j has `channels·2^j`.
    pub channels: usize,
    /// Output classes.
    pub num_classes: usize,
    /// `SMALL_GATE`: the gate sees its input bilinearly downsampled ×0.25.
    pub small_gate: bool,
    /// `GATE_INIT_BIAS`: the gates' last bias (1.5).
    pub gate_bias: f32,
}

/// What the network's first layer sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InputConvention {
    /// The project's ImageNet-normalised RGB, as given.
    #[default]
    Imagenet,
    /// The original's: BGR in 0–255 minus `PIXEL_MEAN` (converted from the ImageNet-normalised
    /// RGB input inside the forward), so converted checkpoints see what they were trained on.
    Bgr255,
}

impl std::str::FromStr for InputConvention {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        match text {
            "imagenet" => Ok(InputConvention::Imagenet),
            "bgr255" => Ok(InputConvention::Bgr255),
            other => Err(Error::invalid(
                "dynamic",
                format!("input convention `{other}`: expected imagenet or bgr255"),
            )),
        }
    }
}

/// The original's `PIXEL_MEAN` (BGR order, 0–255).
pub const PIXEL_MEAN_BGR: [f32; 3] = [103.530, 116.280, 123.675];

impl DynamicConfig {
    /// `Seg.Layer16` with `num_classes` outputs.
    pub fn layer16(num_classes: usize) -> Self {
        DynamicConfig {
            layers: 16,
            channels: 64,
            num_classes,
            small_gate: false,
            gate_bias: 1.5,
        }
    }

    /// `Layer33` with `num_classes` outputs.
    pub fn layer33(num_classes: usize) -> Self {
        DynamicConfig {
            layers: 33,
            ..Self::layer16(num_classes)
        }
    }

    /// The configuration of a registry name: `dynamic16` or `dynamic33`.
    pub fn named(name: &str, num_classes: usize) -> Option<Self> {
        match name {
            "dynamic16" => Some(Self::layer16(num_classes)),
            "dynamic33" => Some(Self::layer33(num_classes)),
            _ => None,
        }
    }

    /// Checks the sizes.
    pub fn validate(&self) -> Result<()> {
        if self.layers < 3 {
            return Err(Error::invalid(
                "dynamic",
                format!(
                    "layers = {}: at least 3 so the last layer has the 4 scales the head reads",
                    self.layers
                ),
            ));
        }
        if self.channels < 2 || !self.channels.is_multiple_of(2) {
            return Err(Error::invalid(
                "dynamic",
                format!("channels = {}: must be even and at least 2", self.channels),
            ));
        }
        if self.num_classes == 0 {
            return Err(Error::invalid("dynamic", "num_classes must be at least 1"));
        }
        Ok(())
    }
}

/// The registry names of the dynamic networks.
pub const NAMES: [&str; 2] = ["dynamic16", "dynamic33"];
