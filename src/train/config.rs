//! The training configuration: one TOML schema for presets (`models/<preset>.toml`), the
//! resolved `config.toml` of a run folder, and `--set section.key=value` overrides.
//!
//! Every key has a default ([`Config::default`]), so a preset only states what differs. Keys are
//! checked against the schema: an unknown key (in a file or in `--set`) is an error naming the
//! full dotted key and listing the valid keys of its section. Sentinels stand for "not set"
//! because TOML has no null: `0` for counts and sizes, `""` for paths.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use toml::Value;

/// Where a configuration error is reported from.
const OP: &str = "config";

/// The whole configuration of a training run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Dataset, splits, augmentation, batching.
    pub data: DataConfig,
    /// Network and MoE placement.
    pub model: ModelSection,
    /// Optimizer and learning-rate schedule.
    pub optim: OptimConfig,
    /// Length of training, evaluation, logging, seed, device.
    pub train: TrainConfig,
    /// Where runs are written.
    pub output: OutputConfig,
    /// A gated ensemble of trained runs (`moeseg ensemble train`; empty for a single network).
    pub ensemble: crate::ensemble::EnsembleSection,
}

/// `[data]`: the dataset and how batches are made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// `synthetic` (built in), `cityscapes` or `bdd100k`.
    pub dataset: String,
    /// Root folder of a real dataset (the layouts of `../shared/spec/datasets.md`).
    pub root: String,
    /// Split trained on.
    pub train_split: String,
    /// Split evaluated on.
    pub val_split: String,
    /// Random crop `[height, width]` of training images (`[0, 0]`: no crop).
    pub crop: [usize; 2],
    /// Resize every image to `[height, width]` before augmentation and for evaluation
    /// (`[0, 0]`: keep the dataset's size).
    pub resize: [usize; 2],
    /// Random scale range `[min, max]` of training images (`[1.0, 1.0]`: none).
    pub scale: [f32; 2],
    /// Random horizontal flip of training images.
    pub flip: bool,
    /// Colour-jitter strength (brightness, contrast, saturation factors in `1 ± jitter`; 0: none).
    pub color_jitter: f32,
    /// Images per training step.
    pub batch_size: usize,
    /// Images per evaluation batch (full-resolution images of one size only).
    pub val_batch_size: usize,
    /// Batches decoded and augmented ahead of the training step.
    pub prefetch: usize,
    /// Threads that decode and augment (0: rayon's global pool, shared with the compute).
    pub workers: usize,
    /// Evaluate on at most this many validation images (0: the whole split).
    pub max_val_images: usize,
    /// The built-in synthetic street scenes.
    pub synthetic: SyntheticSection,
    /// Synthetic layout: `mixed` (the original generator), `urban`, `highway`, or a `+` list
    /// (`urban+highway`: sample `i` gets the `i mod n`-th).
    pub scene: String,
    /// Keep only images with at least `require_min_pixels` pixels of any of these classes
    /// (names or trainIds; empty: every image). Both splits are filtered.
    pub require_classes: Vec<String>,
    /// Pixels of `require_classes` an image needs.
    pub require_min_pixels: usize,
    /// Merge classes: group `g` (`"car+truck+bus"`) becomes class `g` (empty: no map). The
    /// network then has `model.num_classes` = groups (+1 with `class_map_rest = "other"`).
    pub class_map: Vec<String>,
    /// The classes no group names: `ignore` (label 255) or `other` (one extra, last class).
    pub class_map_rest: String,
}

/// `[data.synthetic]`: size of the built-in synthetic set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticSection {
    /// Training images.
    pub train_len: usize,
    /// Validation images.
    pub val_len: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Seed of the generator (the validation split uses a derived seed).
    pub seed: u64,
}

/// `[model]`: the network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// `enet`, `erfnet`, `unet`, `lraspp`, `deeplabv3plus`, `pspnet`, or `vit` (the
    /// segmentation ViT of `[model.vit]`).
    pub name: String,
    /// Output classes (19 for Cityscapes and BDD100K).
    pub num_classes: usize,
    /// ResNet depth of DeepLabv3+ and PSPNet (50 or 101).
    pub backbone_depth: usize,
    /// PSPNet's backbone dilation rule: `hszhao` (default; hszhao/semseg, every block of
    /// layer3 / layer4 dilated 2 / 4) or `torchvision` (`replace_stride_with_dilation`, first
    /// blocks keep the previous dilation). Ignored by the other networks.
    pub pspnet_dilation: String,
    /// torchvision ImageNet weights (ResNet or MobileNetV3-Large, as safetensors) loaded into
    /// the backbone before training (`""`: none).
    pub pretrained_backbone: String,
    /// PatchConvMoE placement and hyper-parameters.
    pub moe: MoeSection,
    /// The segmentation ViT (`name = "vit"`), with or without Soft-MoE MLPs.
    pub vit: VitSection,
    /// The dynamic routing network (`name = "dynamic"`, `dynamic16` or `dynamic33`).
    pub dynamic: super::config_dynamic::DynamicSection,
}

/// `[model.vit]`: the segmentation Vision Transformer (`models::vit_seg`, SETR-naive: ViT
/// encoder without class token, linear head per token, bilinear upsampling).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VitSection {
    /// `tiny`, `small`, `base`, `large` or `huge` (the packages' widths, depths and heads), or
    /// `""` for `embed_dim`, `depth` and `num_heads` below.
    pub size: String,
    /// Token width (when `size = ""`).
    pub embed_dim: usize,
    /// Number of blocks (when `size = ""`).
    pub depth: usize,
    /// Attention heads (when `size = ""`).
    pub num_heads: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// `[height, width]` the positional embedding is built for (other sizes resample it).
    pub img_size: [usize; 2],
    /// MLP hidden width / `embed_dim`.
    pub mlp_ratio: f32,
    /// Soft-MoE MLPs in the blocks `moe_layer_index` selects.
    pub soft_moe: bool,
    /// Experts per Soft-MoE layer.
    pub num_experts: usize,
    /// Slots per expert.
    pub slots_per_expert: usize,
    /// First Soft-MoE block (`"6"`: 6 to the end) or a list of blocks (`"0,2"`).
    pub moe_layer_index: String,
    /// Slots from the `normalized` tokens (the soft-moe package) or the `raw` ones (paper).
    pub slot_source: String,
}

impl Default for VitSection {
    fn default() -> Self {
        VitSection {
            size: String::new(),
            embed_dim: 192,
            depth: 12,
            num_heads: 3,
            patch_size: 16,
            img_size: [224, 224],
            mlp_ratio: 4.0,
            soft_moe: false,
            num_experts: 128,
            slots_per_expert: 1,
            moe_layer_index: "6".into(),
            slot_source: "normalized".into(),
        }
    }
}

/// `[model.moe]`: PatchConvMoE layers replacing convs by path (`../shared/spec/moe.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MoeSection {
    /// Replace the convs at `paths` by PatchConvMoE (or SoftConvMoE) layers.
    pub enabled: bool,
    /// `sparse` (PatchConvMoE: a gate sends each patch to its top-k experts) or `soft`
    /// (SoftConvMoE, moe.md §5: experts run on slots mixed from the patches).
    pub routing: String,
    /// Slots per expert p of soft routing (the cost is set by the n·p slots).
    pub slots_per_expert: usize,
    /// Soft routing: L2-normalise the router's token descriptors and φ, with a learnable scale.
    pub soft_normalize: bool,
    /// Parameter paths of the convs to replace (`[]`: the network's default placement).
    pub paths: Vec<String>,
    /// Experts E.
    pub num_experts: usize,
    /// Experts per token k.
    pub k: usize,
    /// Token granularity: `grid` (g×g patches), `patch` (`patch_size` pixels) or `image`.
    pub granularity: String,
    /// g of the g×g grid.
    pub grid: usize,
    /// `[height, width]` of a patch in pixels, for `granularity = "patch"`.
    pub patch_size: [usize; 2],
    /// Gate: `gap_linear`, `conv_gap`, `2conv_gap` or `3conv_gap`.
    pub gate: String,
    /// Kernel of the gate convs (`0`: the gate's default; 1 or 3 for 2conv_gap / 3conv_gap).
    pub gate_kernel: usize,
    /// Balancing loss: `entropy`, `switch`, `importance`, `column_entropy` or `none`.
    pub loss: String,
    /// Weight of the balancing loss.
    pub alpha: f32,
    /// Noise std of noisy top-k in training (0: clean top-k).
    pub noise: f32,
    /// Per-expert capacity factor (0: no limit).
    pub capacity: f32,
    /// Straight-through weights for k = 1.
    pub straight_through: bool,
    /// Add an always-on shared expert.
    pub shared_expert: bool,
    /// Expert initialisation: `kaiming` or `copy` (the replaced conv's weights plus noise).
    pub init: String,
    /// Noise std of `init = "copy"`.
    pub init_noise: f32,
}

/// `[optim]`: optimizer and schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// `sgd`, `adam` or `adamw`.
    pub name: String,
    /// Base learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// SGD Nesterov momentum.
    pub nesterov: bool,
    /// Weight decay (L2 for sgd / adam, decoupled for adamw).
    pub weight_decay: f64,
    /// Adam betas.
    pub betas: [f64; 2],
    /// Adam epsilon.
    pub eps: f64,
    /// Learning-rate schedule over the training steps: `poly`, `cosine` or `constant`.
    pub schedule: String,
    /// Exponent of `poly`.
    pub power: f64,
    /// Final lr of `cosine`.
    pub min_lr: f64,
    /// Linear warm-up steps (0: none).
    pub warmup_steps: u64,
    /// Fraction of the lr at the first warm-up step.
    pub warmup_factor: f64,
    /// LR multiplier of every parameter whose name contains `gate_conv` (the dynamic
    /// networks' gates; the original's `GATE_LR_MULTI`). 1: one group.
    pub gate_lr_multi: f64,
    /// Clip the gradients to this total 2-norm before each step (`GRAD_CLIP`; 0: off).
    pub clip_grad_norm: f64,
}

/// `[train]`: how long, how often, where.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Epochs over the training split (used when `steps` is 0).
    pub epochs: usize,
    /// Total optimizer steps (0: `epochs` × batches per epoch).
    pub steps: usize,
    /// Evaluate every this many epochs (and always after the last step).
    pub eval_interval: usize,
    /// Log a `metrics.jsonl` line every this many steps.
    pub log_interval: usize,
    /// Seed of initialisation, data order, augmentation and dropout.
    pub seed: u64,
    /// Class weights of the cross-entropy: `none` or `enet` (`1/ln(1.02 + p_c)` from the
    /// training labels).
    pub class_weights: String,
    /// `auto`, `cpu`, `cuda`, `cuda:N`, `cuda-emu` or `cuda-emu:N` (overridden by `--device`).
    pub device: String,
    /// Evaluation inference: `full` (whole images) or `sliding` (windows of `eval_crop` every
    /// `eval_stride` pixels, logits averaged where windows overlap).
    pub eval_mode: String,
    /// Window `[height, width]` of sliding-window evaluation.
    pub eval_crop: [usize; 2],
    /// Stride `[height, width]` of sliding-window evaluation.
    pub eval_stride: [usize; 2],
    /// Sample predictions (with routing overlays) written to `RUN/samples` at the end.
    pub samples: usize,
}

/// `[output]`: where the run folder goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// Runs are written to `runs_dir/<preset>-<time>` unless `--run-dir` is given.
    pub runs_dir: String,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dataset: "synthetic".into(),
            root: String::new(),
            train_split: "train".into(),
            val_split: "val".into(),
            crop: [0, 0],
            resize: [0, 0],
            scale: [1.0, 1.0],
            flip: true,
            color_jitter: 0.0,
            batch_size: 8,
            val_batch_size: 1,
            prefetch: 2,
            workers: 0,
            max_val_images: 0,
            synthetic: SyntheticSection::default(),
            scene: "mixed".into(),
            require_classes: Vec::new(),
            require_min_pixels: 1,
            class_map: Vec::new(),
            class_map_rest: "ignore".into(),
        }
    }
}

impl Default for SyntheticSection {
    fn default() -> Self {
        SyntheticSection {
            train_len: 256,
            val_len: 32,
            height: 64,
            width: 128,
            seed: 0,
        }
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            name: "enet".into(),
            num_classes: 19,
            backbone_depth: 50,
            pspnet_dilation: "hszhao".into(),
            pretrained_backbone: String::new(),
            moe: MoeSection::default(),
            vit: VitSection::default(),
            dynamic: Default::default(),
        }
    }
}

impl Default for MoeSection {
    fn default() -> Self {
        MoeSection {
            enabled: false,
            routing: "sparse".into(),
            slots_per_expert: 1,
            soft_normalize: true,
            paths: Vec::new(),
            num_experts: 8,
            k: 2,
            granularity: "grid".into(),
            grid: 3,
            patch_size: [0, 0],
            gate: "2conv_gap".into(),
            gate_kernel: 0,
            loss: "entropy".into(),
            alpha: 1.0,
            noise: 0.0,
            capacity: 0.0,
            straight_through: true,
            shared_expert: false,
            init: "kaiming".into(),
            init_noise: 0.01,
        }
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            name: "sgd".into(),
            lr: 0.02,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
            betas: [0.9, 0.999],
            eps: 1e-8,
            schedule: "poly".into(),
            power: 0.9,
            min_lr: 0.0,
            warmup_steps: 0,
            warmup_factor: 0.1,
            gate_lr_multi: 1.0,
            clip_grad_norm: 0.0,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            steps: 0,
            eval_interval: 1,
            log_interval: 10,
            seed: 0,
            class_weights: "none".into(),
            device: "auto".into(),
            eval_mode: "full".into(),
            eval_crop: [512, 1024],
            eval_stride: [341, 682],
            samples: 4,
        }
    }
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            runs_dir: "runs".into(),
        }
    }
}

impl Config {
    /// Parses TOML text (a preset or a run's `config.toml`) over the defaults; `origin` names the
    /// source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| Error::invalid(OP, format!("{origin} is not valid TOML: {e}")))?;
        let mut config = Config::default();
        config.merge(Value::Table(table), origin)?;
        Ok(config)
    }

    /// Applies `--set` overrides (`section.key=value`), each typed by the schema: integers,
    /// floats, booleans, strings (quotes optional) and lists (`["a", "b"]`, `[1, 2]`).
    pub fn apply_overrides(&mut self, overrides: &[String]) -> Result<()> {
        for item in overrides {
            let (key, raw) = item.split_once('=').ok_or_else(|| {
                Error::invalid(
                    OP,
                    format!("--set `{item}`: expected section.key=value (e.g. optim.lr=0.01)"),
                )
            })?;
            let key = key.trim();
            let current = self.to_value()?;
            let expected = lookup(&current, key)?;
            let value = parse_typed(raw.trim(), expected)
                .map_err(|msg| Error::invalid(OP, format!("--set {key}: {msg}")))?;
            let mut table = toml::Table::new();
            insert_dotted(&mut table, key, value);
            self.merge(Value::Table(table), &format!("--set {key}"))?;
        }
        Ok(())
    }

    /// The configuration as TOML text (what a run folder's `config.toml` holds).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| Error::invalid(OP, format!("cannot write the configuration: {e}")))
    }

    /// Every valid dotted key with its current value.
    pub fn keys(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        flatten("", &self.to_value()?, &mut out);
        Ok(out)
    }

    fn to_value(&self) -> Result<Value> {
        Value::try_from(self)
            .map_err(|e| Error::invalid(OP, format!("cannot serialise the configuration: {e}")))
    }

    /// Merges `overlay` (a partial configuration) into this one after checking every key
    /// against the schema.
    fn merge(&mut self, overlay: Value, origin: &str) -> Result<()> {
        let mut base = self.to_value()?;
        merge_checked(&mut base, overlay, "", origin)?;
        *self = base
            .try_into()
            .map_err(|e| Error::invalid(OP, format!("{origin}: {e}")))?;
        Ok(())
    }
}

/// `a.b` or `b` at the root.
fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// The valid keys of a table, for error messages.
fn valid_keys(table: &toml::Table) -> String {
    table.keys().cloned().collect::<Vec<_>>().join(", ")
}

/// Copies `overlay` into `base`, table by table; a key `base` lacks is an error naming it and
/// listing the valid keys; a value of another TOML type than the default is an error too
/// (integers are accepted where floats are expected).
fn merge_checked(base: &mut Value, overlay: Value, prefix: &str, origin: &str) -> Result<()> {
    match (base, overlay) {
        (Value::Table(base), Value::Table(overlay)) => {
            for (key, value) in overlay {
                let full = join_key(prefix, &key);
                let valid = valid_keys(base);
                let Some(slot) = base.get_mut(&key) else {
                    let section = if prefix.is_empty() {
                        "the top level".to_string()
                    } else {
                        format!("[{prefix}]")
                    };
                    return Err(Error::invalid(
                        OP,
                        format!("{origin}: unknown key `{full}`; valid keys in {section}: {valid}"),
                    ));
                };
                merge_checked(slot, value, &full, origin)?;
            }
            Ok(())
        }
        (slot, value) => {
            let converted = conform(slot, value)
                .map_err(|msg| Error::invalid(OP, format!("{origin}: `{prefix}` {msg}")))?;
            *slot = converted;
            Ok(())
        }
    }
}

/// `value` converted to the type of `like` (ints to floats), or why not.
fn conform(like: &Value, value: Value) -> std::result::Result<Value, String> {
    match (like, value) {
        (Value::Float(_), Value::Integer(i)) => Ok(Value::Float(i as f64)),
        (Value::Array(items), Value::Array(values)) => {
            if !items.is_empty()
                && values.len() != items.len()
                && !matches!(items[0], Value::String(_))
            {
                return Err(format!(
                    "expects a list of {} values, got {}",
                    items.len(),
                    values.len()
                ));
            }
            match items.first() {
                Some(first) => values
                    .into_iter()
                    .map(|v| conform(first, v))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map(Value::Array),
                None => Ok(Value::Array(values)),
            }
        }
        (like, value) if like.type_str() == value.type_str() => Ok(value),
        (like, value) => Err(format!(
            "expects {} but got {} `{value}`",
            describe_type(like),
            describe_type(&value)
        )),
    }
}

fn describe_type(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "true or false",
        Value::Array(_) => "a list",
        Value::Table(_) => "a section",
        Value::Datetime(_) => "a date",
    }
}

/// The value at a dotted key of the full configuration, or an error listing the valid keys of
/// the deepest section reached.
fn lookup<'a>(root: &'a Value, key: &str) -> Result<&'a Value> {
    let mut current = root;
    let mut prefix = String::new();
    for part in key.split('.') {
        let table = current.as_table().ok_or_else(|| {
            Error::invalid(
                OP,
                format!("unknown key `{key}`: `{prefix}` is not a section"),
            )
        })?;
        current = table.get(part).ok_or_else(|| {
            let section = if prefix.is_empty() {
                "sections".to_string()
            } else {
                format!("valid keys in [{prefix}]")
            };
            Error::invalid(
                OP,
                format!("unknown key `{key}`; {section}: {}", valid_keys(table)),
            )
        })?;
        prefix = join_key(&prefix, part);
    }
    if current.is_table() {
        return Err(Error::invalid(
            OP,
            format!(
                "`{key}` is a section, not a key; its keys: {}",
                current.as_table().map(valid_keys).unwrap_or_default()
            ),
        ));
    }
    Ok(current)
}

/// Parses a `--set` value as TOML, falling back to a bare string where a string is expected.
fn parse_typed(raw: &str, expected: &Value) -> std::result::Result<Value, String> {
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"));
    let value = match (parsed, expected) {
        (Some(v @ Value::String(_)), _) => v,
        // Bare words (`enet`, `2conv_gap`, `/data/cityscapes`) and numbers given for a string.
        (_, Value::String(_)) => Value::String(raw.trim_matches('"').to_string()),
        (Some(v), _) => v,
        (None, _) => {
            return Err(format!(
                "`{raw}` is not a valid value ({} expected)",
                describe_type(expected)
            ))
        }
    };
    conform(expected, value)
}

/// Puts `value` at a dotted key, creating sections on the way.
fn insert_dotted(table: &mut toml::Table, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = table
                .entry(head.to_string())
                .or_insert_with(|| Value::Table(toml::Table::new()));
            if let Value::Table(inner) = entry {
                insert_dotted(inner, rest, value);
            }
        }
    }
}

/// Every leaf of `value` as `(dotted key, value text)`.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Table(table) => {
            for (key, v) in table {
                flatten(&join_key(prefix, key), v, out);
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_are_typed_and_unknown_keys_are_named() {
        let mut config = Config::default();
        config
            .apply_overrides(&[
                "model.moe.num_experts=4".into(),
                "optim.lr=1".into(),
                "model.moe.gate=conv_gap".into(),
                "model.moe.paths=[\"a.b\", \"c\"]".into(),
                "data.flip=false".into(),
                "data.crop=[32, 64]".into(),
            ])
            .unwrap();
        assert_eq!(config.model.moe.num_experts, 4);
        assert_eq!(config.optim.lr, 1.0);
        assert_eq!(config.model.moe.gate, "conv_gap");
        assert_eq!(config.model.moe.paths, vec!["a.b", "c"]);
        assert!(!config.data.flip);
        assert_eq!(config.data.crop, [32, 64]);
        let err = config
            .apply_overrides(&["model.moe.experts=4".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.moe.experts") && err.contains("num_experts"),
            "{err}"
        );
        let err = config
            .apply_overrides(&["train.steps=abc".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("train.steps") && err.contains("integer"),
            "{err}"
        );
        let text = config.to_toml().unwrap();
        assert_eq!(Config::from_toml(&text, "x").unwrap(), config);
        let err = Config::from_toml("[optim]\nlearning_rate = 1\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("optim.learning_rate") && err.contains("p.toml"),
            "{err}"
        );
    }
}
