//! Gated ensembles of trained segmentation models (MoE-FLAIROP, `moe.md` §6): K frozen
//! *expert* networks (run folders of `moeseg train`, any network, mixed) and a small trained
//! *gate* that weights their outputs per image (`[B, K]`) or per image and class
//! (`[B, K, C]`).
//!
//! - [`experts`]: loading and freezing the experts (weights checked against the hash recorded
//!   in the ensemble's `config.toml`), and bringing an expert with a class map to the
//!   ensemble's classes.
//! - [`gate`]: the gates (`image`: a conv stem on the down-sampled input; `features`: the
//!   experts' features at a named layer) and the optional 3×3 refinement conv.
//! - [`model`]: [`Ensemble`], a [`crate::models::SegNet`] (so `eval` and `predict` take it like
//!   any network) with dense or top-k execution, the load-balancing and oracle terms.
//! - [`train`]: `moeseg ensemble train`, the ensemble run folder.
//!
//! **Classes.** The ensemble predicts the classes of its *full* experts (those trained without
//! `data.class_map`; they must agree on `model.num_classes`, and one at least is needed). An
//! expert with a class map predicts groups `S_g` of those classes (and, with
//! `class_map_rest = "other"`, the rest `R` as one class). Its probabilities `q` are brought to
//! the ensemble's classes with the *reference* distribution `r` (the mean of the full
//! experts' probabilities at the pixel): `p(c ∈ S_g) = q_g · r_c / r(S_g)`; with `other`,
//! `p(c ∈ R) = q_other · r_c / r(R)`; with `ignore` (the expert never saw `R`, so it has no
//! say there) `p(c ∈ R) = r_c` and the groups share the rest: `p(c ∈ S_g) = r(S) · q_g · r_c
//! / r(S_g)`, `S` the union of the groups. Under top-k execution with `k < K` the full experts
//! may not have run on an image, so `r` is uniform there. Experts with class maps need
//! `combine = "probs"`.

pub mod experts;
pub mod gate;
pub mod model;
pub mod train;

pub use experts::{weights_hash, Expert};
pub use gate::{Gate, GateKind};
pub use model::{Ensemble, EnsembleOutput, Mode};

use serde::{Deserialize, Serialize};

/// `[ensemble]`: the experts, the gate and its losses (empty `experts`: not an ensemble run).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnsembleSection {
    /// The experts: run folders, or `PRESET::WEIGHTS.safetensors` (a preset or `.toml` file
    /// and a weights file).
    pub experts: Vec<String>,
    /// FNV-1a 64 of each expert's weights file (hex), written by `ensemble train`; loading
    /// fails when an expert's weights changed. Empty entries are not checked.
    pub expert_hashes: Vec<String>,
    /// Which checkpoint of each expert run: `best` or `last`.
    pub checkpoint: String,
    /// `image` (conv stem on the down-sampled input) or `features` (the experts' features at
    /// `feature_layer`, concatenated).
    pub gate: String,
    /// `image`: one weight per expert and image `[B, K]`; `class`: per class `[B, K, C]`.
    pub weights: String,
    /// `logits`: Σ w·logits; `probs`: log Σ w·softmax (needed for experts with class maps).
    pub combine: String,
    /// A 3×3 conv (initialised to the identity) on the combined output.
    pub refine: bool,
    /// Experts run per image (0 or K: all, dense).
    pub k: usize,
    /// Weight of the load-balancing term `K · Σ_e f_e · P_e` (`f_e` share of images whose
    /// first choice is `e`, `P_e` mean gate probability).
    pub balance: f32,
    /// Weight of the oracle term: cross-entropy of the gate's per-image scores against the
    /// expert with the lowest loss on the image (every expert then runs in training).
    pub oracle: f32,
    /// The image gate's input size `[h, w]` (the image is resized to it).
    pub gate_size: [usize; 2],
    /// Channels of the image gate's first conv (the second has twice as many).
    pub gate_channels: usize,
    /// Hidden units of the gate's MLP.
    pub gate_hidden: usize,
    /// The feature gate's layer path inside every expert (e.g. `decoder.last_conv.4`).
    pub feature_layer: String,
}

impl Default for EnsembleSection {
    fn default() -> Self {
        EnsembleSection {
            experts: Vec::new(),
            expert_hashes: Vec::new(),
            checkpoint: "best".into(),
            gate: "image".into(),
            weights: "image".into(),
            combine: "logits".into(),
            refine: false,
            k: 0,
            balance: 0.01,
            oracle: 0.0,
            gate_size: [32, 64],
            gate_channels: 16,
            gate_hidden: 32,
            feature_layer: String::new(),
        }
    }
}

impl EnsembleSection {
    /// Whether a configuration describes an ensemble (it names experts).
    pub fn is_ensemble(&self) -> bool {
        !self.experts.is_empty()
    }
}
