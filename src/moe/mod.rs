//! Mixture-of-Experts layers for CNN segmentation (`../shared/spec/moe.md`): PatchConvMoE, its
//! gates, balancing losses and routing statistics.
//!
//! - [`gate`]: the gate networks (`gap_linear`, `conv_gap`, `2conv_gap`, `3conv_gap`), tokens →
//!   logits, with PyTorch's state-dict keys.
//! - [`balance`]: the load-balancing losses on the clean routing probabilities.
//! - [`selection`]: noisy top-k selection scores and the per-expert capacity.
//! - [`patch_conv_moe`]: the PatchConvMoE layer (also image-level ConvMoE), its replacement of
//!   a conv by path and the network-wide balancing loss.
//! - [`soft_conv_moe`]: SoftConvMoE, soft routing (moe.md §5) of the same patch tokens.
//! - [`soft_moe`]: the Soft-MoE layer over tokens (soft routing, §5), its batched expert path
//!   and its routing diagnostics.
//! - [`stats`]: routing statistics over an evaluation set (usage, NRE, TEC, co-activation,
//!   expert×class).
//!
//! The PyTorch reference of the whole layer, and the fixtures the Rust layer is checked
//! against, are in `scripts/fixtures/moe.py`.

pub mod balance;
pub mod gate;
pub mod patch_conv_moe;
pub mod selection;
pub mod soft_conv_moe;
pub mod soft_moe;
pub mod stats;

pub use balance::{entropy, BalanceInputs, BalanceLoss};
pub use gate::{Gate, GateConfig, GateKind};
pub use patch_conv_moe::{
    balance_loss, collect_routing_stats, replace_conv_with_moe, token_class_histograms, ExpertInit,
    Granularity, PatchConvMoE, PatchConvMoeConfig, RoutingRecord,
};
pub use selection::{capacity, noisy_selection};
pub use soft_conv_moe::{replace_conv_with_soft_moe, SoftConvMoE, SoftConvMoeConfig, SoftRouting};
pub use soft_moe::{
    DiagnosticsRecorder, SlotSource, SoftMoE, SoftMoeConfig, SoftRoutingDiagnostics,
    SoftRoutingLayer,
};
pub use stats::{RoutingReport, RoutingStats};
