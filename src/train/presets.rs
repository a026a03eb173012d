//! The presets of `models/<dataset>-<net>/<variant>.toml`, embedded in the binary so that
//! `--preset cityscapes-enet/patch_conv_moe` works from any folder; a path to a `.toml` file on
//! disk works as well. Add a preset by adding its file and one line here.

use crate::error::{Error, Result};
use std::path::Path;

/// The preset run by `moeseg train` with no `--preset` (and by `cargo run --release`).
pub const DEFAULT_PRESET: &str = "synthetic-enet/patch_conv_moe";

/// Every embedded preset: `(name, TOML text)`, sorted by name.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "bdd100k-deeplabv3plus/default",
        include_str!("../../models/bdd100k-deeplabv3plus/default.toml"),
    ),
    (
        "bdd100k-deeplabv3plus/patch_conv_moe",
        include_str!("../../models/bdd100k-deeplabv3plus/patch_conv_moe.toml"),
    ),
    (
        "bdd100k-enet/default",
        include_str!("../../models/bdd100k-enet/default.toml"),
    ),
    (
        "bdd100k-enet/patch_conv_moe",
        include_str!("../../models/bdd100k-enet/patch_conv_moe.toml"),
    ),
    (
        "bdd100k-erfnet/default",
        include_str!("../../models/bdd100k-erfnet/default.toml"),
    ),
    (
        "bdd100k-erfnet/patch_conv_moe",
        include_str!("../../models/bdd100k-erfnet/patch_conv_moe.toml"),
    ),
    (
        "bdd100k-lraspp/default",
        include_str!("../../models/bdd100k-lraspp/default.toml"),
    ),
    (
        "bdd100k-lraspp/patch_conv_moe",
        include_str!("../../models/bdd100k-lraspp/patch_conv_moe.toml"),
    ),
    (
        "bdd100k-pspnet/default",
        include_str!("../../models/bdd100k-pspnet/default.toml"),
    ),
    (
        "bdd100k-pspnet/patch_conv_moe",
        include_str!("../../models/bdd100k-pspnet/patch_conv_moe.toml"),
    ),
    (
        "bdd100k-unet/default",
        include_str!("../../models/bdd100k-unet/default.toml"),
    ),
    (
        "bdd100k-unet/patch_conv_moe",
        include_str!("../../models/bdd100k-unet/patch_conv_moe.toml"),
    ),
    (
        "cityscapes-deeplabv3plus/default",
        include_str!("../../models/cityscapes-deeplabv3plus/default.toml"),
    ),
    (
        "cityscapes-deeplabv3plus/patch_conv_moe",
        include_str!("../../models/cityscapes-deeplabv3plus/patch_conv_moe.toml"),
    ),
    (
        "cityscapes-dynamic/a",
        include_str!("../../models/cityscapes-dynamic/a.toml"),
    ),
    (
        "cityscapes-dynamic/b",
        include_str!("../../models/cityscapes-dynamic/b.toml"),
    ),
    (
        "cityscapes-dynamic/c",
        include_str!("../../models/cityscapes-dynamic/c.toml"),
    ),
    (
        "cityscapes-dynamic/layer33",
        include_str!("../../models/cityscapes-dynamic/layer33.toml"),
    ),
    (
        "cityscapes-dynamic/raw",
        include_str!("../../models/cityscapes-dynamic/raw.toml"),
    ),
    (
        "cityscapes-enet/default",
        include_str!("../../models/cityscapes-enet/default.toml"),
    ),
    (
        "cityscapes-enet/patch_conv_moe",
        include_str!("../../models/cityscapes-enet/patch_conv_moe.toml"),
    ),
    (
        "cityscapes-erfnet/default",
        include_str!("../../models/cityscapes-erfnet/default.toml"),
    ),
    (
        "cityscapes-erfnet/patch_conv_moe",
        include_str!("../../models/cityscapes-erfnet/patch_conv_moe.toml"),
    ),
    (
        "cityscapes-lraspp/default",
        include_str!("../../models/cityscapes-lraspp/default.toml"),
    ),
    (
        "cityscapes-lraspp/patch_conv_moe",
        include_str!("../../models/cityscapes-lraspp/patch_conv_moe.toml"),
    ),
    (
        "cityscapes-pspnet/default",
        include_str!("../../models/cityscapes-pspnet/default.toml"),
    ),
    (
        "cityscapes-pspnet/patch_conv_moe",
        include_str!("../../models/cityscapes-pspnet/patch_conv_moe.toml"),
    ),
    (
        "cityscapes-unet/default",
        include_str!("../../models/cityscapes-unet/default.toml"),
    ),
    (
        "cityscapes-unet/patch_conv_moe",
        include_str!("../../models/cityscapes-unet/patch_conv_moe.toml"),
    ),
    (
        "cityscapes-vit/soft_moe",
        include_str!("../../models/cityscapes-vit/soft_moe.toml"),
    ),
    (
        "synthetic-dynamic/a",
        include_str!("../../models/synthetic-dynamic/a.toml"),
    ),
    (
        "synthetic-dynamic/b",
        include_str!("../../models/synthetic-dynamic/b.toml"),
    ),
    (
        "synthetic-dynamic/c",
        include_str!("../../models/synthetic-dynamic/c.toml"),
    ),
    (
        "synthetic-dynamic/layer33",
        include_str!("../../models/synthetic-dynamic/layer33.toml"),
    ),
    (
        "synthetic-dynamic/raw",
        include_str!("../../models/synthetic-dynamic/raw.toml"),
    ),
    (
        "synthetic-enet/ablation-experts",
        include_str!("../../models/synthetic-enet/ablation-experts.toml"),
    ),
    (
        "synthetic-enet/ablation-gate",
        include_str!("../../models/synthetic-enet/ablation-gate.toml"),
    ),
    (
        "synthetic-enet/ablation-grid",
        include_str!("../../models/synthetic-enet/ablation-grid.toml"),
    ),
    (
        "synthetic-enet/ablation-k",
        include_str!("../../models/synthetic-enet/ablation-k.toml"),
    ),
    (
        "synthetic-enet/ablation-loss",
        include_str!("../../models/synthetic-enet/ablation-loss.toml"),
    ),
    (
        "synthetic-enet/ablation-placement",
        include_str!("../../models/synthetic-enet/ablation-placement.toml"),
    ),
    (
        "synthetic-ensemble/default",
        include_str!("../../models/synthetic-ensemble/default.toml"),
    ),
    (
        "cityscapes-ensemble/default",
        include_str!("../../models/cityscapes-ensemble/default.toml"),
    ),
    (
        "synthetic-enet/default",
        include_str!("../../models/synthetic-enet/default.toml"),
    ),
    (
        "synthetic-enet/patch_conv_moe",
        include_str!("../../models/synthetic-enet/patch_conv_moe.toml"),
    ),
    (
        "synthetic-enet/tiny",
        include_str!("../../models/synthetic-enet/tiny.toml"),
    ),
    (
        "synthetic-vit/soft_moe",
        include_str!("../../models/synthetic-vit/soft_moe.toml"),
    ),
];

/// The TOML text of a preset and where it came from: an existing file path, or an embedded
/// name (`cityscapes-enet/patch_conv_moe`, with or without `models/` and `.toml`).
pub fn resolve(preset: &str) -> Result<(String, String)> {
    let path = Path::new(preset);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read the preset: {e}")))?;
        return Ok((text, path.display().to_string()));
    }
    let name = preset
        .trim_start_matches("models/")
        .trim_end_matches(".toml");
    match PRESETS.iter().find(|(n, _)| *n == name) {
        Some((n, text)) => Ok((text.to_string(), format!("preset {n}"))),
        None if preset.ends_with(".toml") => Err(Error::file(path, "no such preset file")),
        None => Err(Error::invalid(
            "preset",
            format!(
                "unknown preset `{preset}` (neither a built-in preset nor a file); built-in presets: {}",
                names().join(", ")
            ),
        )),
    }
}

/// The names of the embedded presets.
pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}
