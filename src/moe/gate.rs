//! The PatchConvMoE gates (moe.md §1.3): small networks that map each token (a patch with its
//! halo, `[T, C, th, tw]`) to one logit per expert, `[T, E]`.
//!
//! Every gate is a `network` of numbered layers whose indices mirror the PyTorch reference
//! (`scripts/fixtures/moe.py`), so the state-dict keys under the layer path `P` read
//! `P.gate.network.{i}.…` exactly as moe.md lists them:
//!
//! | kind         | `network`                                                        | keys                  |
//! |--------------|------------------------------------------------------------------|-----------------------|
//! | `gap_linear` | `0` GAP, `1` Flatten, `2` Linear(C, E)                           | `2.{weight,bias}`     |
//! | `conv_gap`   | `0` Conv(C, E, 3×3), `1` GAP, `2` Flatten                        | `0.weight`            |
//! | `2conv_gap`  | `0` Conv(C, 8, kg), `1` BN(8), `2` Conv(8, E, kg), `3` GAP, `4` Flatten | `0`, `1.*`, `2` |
//! | `3conv_gap`  | `0` Conv(C, 8, kg), `1` BN(8), `2` Conv(8, 8, kg), `3` BN(8), `4` Conv(8, E, kg), `5` GAP, `6` Flatten | `0`–`4` |
//!
//! Convs have no bias and no padding; there is no non-linearity between them (as in the
//! paper). GAP is `AdaptiveAvgPool2d(1)`. In training the BatchNorms normalise over all tokens
//! of the batch (and all their pixels), which is plain `BatchNorm2d` on `[T, 8, h, w]`.

use crate::error::{Error, Result};
use crate::nn::ConvOptions;
use crate::nn::{AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Linear, Module, Sequential};
use crate::tensor::Tensor;
use std::any::Any;
use std::fmt;
use std::str::FromStr;

/// Channels of the hidden layers of `2conv_gap` and `3conv_gap`.
pub const GATE_HIDDEN_CHANNELS: usize = 8;

/// Which gate network computes the routing logits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GateKind {
    /// Global average pool → Linear(C, E).
    GapLinear,
    /// Conv(C, E, 3×3) → global average pool.
    ConvGap,
    /// Conv(C, 8, kg) → BN(8) → Conv(8, E, kg) → global average pool (the paper's best, the
    /// default).
    #[default]
    TwoConvGap,
    /// Conv(C, 8, kg) → BN(8) → Conv(8, 8, kg) → BN(8) → Conv(8, E, kg) → global average pool.
    ThreeConvGap,
}

impl GateKind {
    /// Every kind, in the order of [`GateKind::NAMES`].
    pub const ALL: [GateKind; 4] = [
        GateKind::GapLinear,
        GateKind::ConvGap,
        GateKind::TwoConvGap,
        GateKind::ThreeConvGap,
    ];

    /// The configuration names of the kinds.
    pub const NAMES: [&'static str; 4] = ["gap_linear", "conv_gap", "2conv_gap", "3conv_gap"];

    /// The kind's configuration name (`"2conv_gap"`).
    pub fn name(self) -> &'static str {
        match self {
            GateKind::GapLinear => "gap_linear",
            GateKind::ConvGap => "conv_gap",
            GateKind::TwoConvGap => "2conv_gap",
            GateKind::ThreeConvGap => "3conv_gap",
        }
    }

    /// Number of (unpadded) convolutions in the network.
    fn conv_count(self) -> usize {
        match self {
            GateKind::GapLinear => 0,
            GateKind::ConvGap => 1,
            GateKind::TwoConvGap => 2,
            GateKind::ThreeConvGap => 3,
        }
    }
}

impl fmt::Display for GateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GateKind {
    type Err = Error;

    /// Parses a configuration name; an unknown name is an error listing the valid ones.
    fn from_str(name: &str) -> Result<GateKind> {
        GateKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| {
                Error::invalid(
                    "moe gate",
                    format!(
                        "unknown gate `{name}`; valid gates: {}",
                        GateKind::NAMES.join(", ")
                    ),
                )
            })
    }
}

/// A gate's configuration: the kind and, for `2conv_gap` / `3conv_gap`, the kernel size `kg`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateConfig {
    /// The gate network.
    pub kind: GateKind,
    /// `kg` of `2conv_gap` / `3conv_gap`: `None` is 1, `Some(1)` or `Some(3)` are allowed.
    /// `conv_gap`'s kernel is fixed at 3 (`Some(3)` is accepted), `gap_linear` has none.
    pub kernel: Option<usize>,
}

impl GateConfig {
    /// The default kernel of `kind`.
    pub fn new(kind: GateKind) -> Self {
        GateConfig { kind, kernel: None }
    }

    /// The effective conv kernel size (0 for `gap_linear`), or an error for a kernel the kind
    /// does not take.
    pub fn conv_kernel(&self) -> Result<usize> {
        let kind = self.kind;
        match (kind, self.kernel) {
            (GateKind::GapLinear, None) => Ok(0),
            (GateKind::ConvGap, None | Some(3)) => Ok(3),
            (GateKind::TwoConvGap | GateKind::ThreeConvGap, None) => Ok(1),
            (GateKind::TwoConvGap | GateKind::ThreeConvGap, Some(k @ (1 | 3))) => Ok(k),
            (_, Some(k)) => Err(Error::invalid(
                "moe gate",
                format!(
                    "gate `{kind}` does not take kernel {k} (gap_linear has no conv, conv_gap's \
                     kernel is fixed at 3, 2conv_gap / 3conv_gap take 1 or 3)"
                ),
            )),
        }
    }

    /// The smallest token side the gate accepts: each unpadded `kg×kg` conv shrinks the token
    /// by `kg − 1`, and at least one pixel must reach the pool: `1 + convs·(kg − 1)`.
    pub fn min_token_size(&self) -> Result<usize> {
        let kernel = self.conv_kernel()?;
        Ok(1 + self.kind.conv_count() * kernel.saturating_sub(1))
    }
}

/// `nn.Flatten()`: `[N, …] → [N, ∏…]` (index 1 of `gap_linear`'s network and the last layer
/// of the others, turning the pooled `[T, E, 1, 1]` into `[T, E]`).
struct Flatten;

impl Module for Flatten {
    fn type_name(&self) -> &'static str {
        "Flatten"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.flatten(1, -1)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A gate: tokens `[T, C, th, tw]` → logits `[T, E]`, with one child `network`.
pub struct Gate {
    config: GateConfig,
    in_channels: usize,
    num_experts: usize,
    network: Sequential,
}

impl Gate {
    /// A gate for tokens of `in_channels` channels and `num_experts` experts, with PyTorch's
    /// default initialisation of each layer.
    pub fn new(config: GateConfig, in_channels: usize, num_experts: usize) -> Result<Gate> {
        if in_channels == 0 || num_experts == 0 {
            return Err(Error::invalid(
                "moe gate",
                format!(
                    "gate `{}` needs in_channels > 0 and num_experts > 0, got {in_channels} and \
                     {num_experts}",
                    config.kind
                ),
            ));
        }
        let kg = config.conv_kernel()?;
        let hidden = GATE_HIDDEN_CHANNELS;
        let conv = |cin: usize, cout: usize, k: usize| {
            Conv2d::new(cin, cout, k, ConvOptions::new().no_bias())
        };
        let gap = AdaptiveAvgPool2d([1, 1]);
        let network = match config.kind {
            GateKind::GapLinear => Sequential::default()
                .push(gap)
                .push(Flatten)
                .push(Linear::new(in_channels, num_experts, true)?),
            GateKind::ConvGap => Sequential::default()
                .push(conv(in_channels, num_experts, kg)?)
                .push(gap)
                .push(Flatten),
            GateKind::TwoConvGap => Sequential::default()
                .push(conv(in_channels, hidden, kg)?)
                .push(BatchNorm2d::new(hidden)?)
                .push(conv(hidden, num_experts, kg)?)
                .push(gap)
                .push(Flatten),
            GateKind::ThreeConvGap => Sequential::default()
                .push(conv(in_channels, hidden, kg)?)
                .push(BatchNorm2d::new(hidden)?)
                .push(conv(hidden, hidden, kg)?)
                .push(BatchNorm2d::new(hidden)?)
                .push(conv(hidden, num_experts, kg)?)
                .push(gap)
                .push(Flatten),
        };
        Ok(Gate {
            config,
            in_channels,
            num_experts,
            network,
        })
    }

    /// The configuration.
    pub fn config(&self) -> GateConfig {
        self.config
    }

    /// Channels of the tokens.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Number of experts (logits per token).
    pub fn num_experts(&self) -> usize {
        self.num_experts
    }

    /// Checks the token shape: `[T, C, th, tw]` with this gate's C and th, tw at least
    /// [`GateConfig::min_token_size`].
    fn check_tokens(&self, tokens: &Tensor) -> Result<()> {
        let op = "moe gate";
        tokens.expect_rank(op, "tokens", 4)?;
        let dims = tokens.dims();
        if dims[1] != self.in_channels {
            return Err(Error::shape(
                op,
                format!(
                    "gate `{}` expects tokens with {} channels, got shape {}",
                    self.config.kind,
                    self.in_channels,
                    tokens.shape()
                ),
            ));
        }
        let min = self.config.min_token_size()?;
        if dims[2] < min || dims[3] < min {
            return Err(Error::shape(
                op,
                format!(
                    "gate `{}` with kernel {} needs tokens of at least {min}×{min} pixels \
                     (patch plus halo), got {}×{} (tokens {})",
                    self.config.kind,
                    self.config.conv_kernel()?,
                    dims[2],
                    dims[3],
                    tokens.shape()
                ),
            ));
        }
        Ok(())
    }
}

impl Module for Gate {
    fn type_name(&self) -> &'static str {
        "Gate"
    }

    /// Logits `[T, E]` of tokens `[T, C, th, tw]`.
    fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        self.check_tokens(tokens)?;
        self.network.forward(tokens)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("network".to_string(), &self.network as &dyn Module)]
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        (name == "network").then_some(&mut self.network as &mut dyn Module)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
