//! `moeseg predict`: segment images (a file or every PNG/JPEG in a folder) with a trained
//! network and write colour maps, overlays, Cityscapes label ids or train ids, and optionally
//! the routing overlay of every MoE layer.

use super::model_source::ModelArgs;
use crate::autograd::no_grad;
use crate::data::{palette::train_id_to_label_id, pictures};
use crate::error::{Error, Result};
use crate::train::report::{image_tensor, predict_with_routing};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

/// What `moeseg predict` writes per image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `<image>_pred_color.png`: the Cityscapes colours of the predicted classes.
    Color,
    /// `<image>_pred_overlay.png`: the colours blended over the image.
    Overlay,
    /// `<image>_pred_labelIds.png`: 8-bit Cityscapes label ids (what the Cityscapes evaluation
    /// scripts and benchmark server take).
    Labelids,
    /// `<image>_pred_trainIds.png`: 8-bit train ids 0..18.
    Trainids,
}

/// Options of `moeseg predict`.
#[derive(Args, Debug, Clone)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// An image (PNG or JPEG) or a folder of images (searched recursively).
    #[arg(long, value_name = "IMG_OR_DIR")]
    pub input: PathBuf,
    /// Folder the predictions are written to (created if needed).
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Color)]
    pub format: Format,
    /// Also write `<image>_routing_<layer>.png`: the patch grid of every MoE layer tinted by
    /// each patch's top expert, with its chosen experts written in.
    #[arg(long)]
    pub routing_overlay: bool,
}

/// Every PNG / JPEG under `input` (or `input` itself), sorted.
fn image_files(input: &Path) -> Result<Vec<PathBuf>> {
    let is_image = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
    };
    if input.is_file() {
        return Ok(vec![input.to_path_buf()]);
    }
    if !input.is_dir() {
        return Err(Error::file(input, "no such image or folder"));
    }
    let mut found = Vec::new();
    let mut pending = vec![input.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| Error::file(&dir, format!("cannot list: {e}")))?;
        for entry in entries {
            let path = entry
                .map_err(|e| Error::file(&dir, format!("cannot list: {e}")))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if is_image(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(Error::file(input, "holds no PNG or JPEG image"));
    }
    Ok(found)
}

/// Runs `moeseg predict`.
pub fn run(args: &PredictArgs) -> Result<()> {
    let loaded = args.model.load()?;
    let files = image_files(&args.input)?;
    std::fs::create_dir_all(&args.output)
        .map_err(|e| Error::file(&args.output, format!("cannot create: {e}")))?;
    for file in &files {
        let image = image::open(file)
            .map_err(|e| Error::file(file, format!("cannot decode the image: {e}")))?
            .to_rgb8();
        let input = image_tensor(&image, &loaded.device)?;
        let prediction = no_grad(|| predict_with_routing(&*loaded.model, &input))?;
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        // Cityscapes file names end in `_leftImg8bit`; the evaluation scripts expect that part
        // replaced by the prediction suffix.
        let stem = stem.trim_end_matches("_leftImg8bit");
        let (h, w) = (image.height() as usize, image.width() as usize);
        let out = |suffix: &str| args.output.join(format!("{stem}_{suffix}.png"));
        match args.format {
            Format::Color => pictures::save_png(
                &pictures::colorize(&prediction.labels, h, w),
                &out("pred_color"),
            )?,
            Format::Overlay => pictures::save_png(
                &pictures::blend(&image, &pictures::colorize(&prediction.labels, h, w), 0.5)?,
                &out("pred_overlay"),
            )?,
            Format::Labelids => {
                let ids: Vec<u8> = prediction
                    .labels
                    .iter()
                    .map(|&t| train_id_to_label_id(t))
                    .collect();
                pictures::save_label_png(&ids, h, w, &out("pred_labelIds"))?
            }
            Format::Trainids => {
                pictures::save_label_png(&prediction.labels, h, w, &out("pred_trainIds"))?
            }
        }
        if let Some(ensemble) = loaded
            .model
            .as_any()
            .downcast_ref::<crate::ensemble::Ensemble>()
        {
            // Which expert the gate chose for this image, and every expert's weight.
            let weights = ensemble
                .last_weights()
                .into_iter()
                .next()
                .unwrap_or_default();
            let names: Vec<String> = ensemble.experts.iter().map(|e| e.name.clone()).collect();
            let picture = crate::ensemble::gate::choice_picture(&image, &weights, &names);
            pictures::save_png(&picture, &out("experts"))?;
        }
        if args.routing_overlay {
            for layer in &prediction.routing {
                let name = layer.path.replace(['.', '/'], "-");
                pictures::save_png(&layer.overlay(&image), &out(&format!("routing_{name}")))?;
            }
        }
    }
    println!(
        "wrote {} prediction(s) ({:?}) to {}",
        files.len(),
        args.format,
        args.output.display()
    );
    Ok(())
}
