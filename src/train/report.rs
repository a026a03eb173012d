//! What a run shows: PNG plots (`RUN/plots`), sample predictions with routing overlays
//! (`RUN/samples`), the routing report as JSON, and the one-screen summary at the end.

use crate::autograd::no_grad;
use crate::backend::Device;
use crate::data::augment::prepare;
use crate::data::{palette::CLASS_NAMES, pictures, Dataset, Sample};
use crate::error::{Error, Result};
use crate::models::{load_imagenet_backbone, SegNet};
use crate::moe::RoutingStats;
use crate::nn::{set_training, Module};
use crate::tensor::Tensor;
use crate::train::checkpoint::TrainState;
use crate::train::config::{Config, ModelSection};
use crate::train::evaluate::Evaluation;
use crate::train::plots;
use crate::train::run_dir::read_metrics;
use crate::train::setup;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// Loads `model.pretrained_backbone` (torchvision ImageNet ResNet or MobileNetV3-Large weights
/// as safetensors) into the network's backbone; the head stays fresh.
pub fn load_pretrained(model: &dyn SegNet, section: &ModelSection) -> Result<()> {
    let report = load_imagenet_backbone(model, Path::new(&section.pretrained_backbone))?;
    println!(
        "pretrained backbone {}: {report}",
        section.pretrained_backbone
    );
    Ok(())
}

/// Class names for `classes` classes (the Cityscapes names when 19, numbers otherwise).
pub fn class_names(classes: usize) -> Vec<String> {
    (0..classes)
        .map(
            |c| match (classes == CLASS_NAMES.len(), CLASS_NAMES.get(c)) {
                (true, Some(name)) => name.to_string(),
                _ => format!("class {c}"),
            },
        )
        .collect()
}

/// A layer path as a file-name piece (`regular5_1.ext_conv2.0` → `regular5_1-ext_conv2-0`).
fn file_stem(path: &str) -> String {
    path.replace(['.', '/'], "-")
}

/// Plots of one evaluation: per-class IoU bars and, per MoE layer, expert usage, the
/// expert×class heatmap and the co-activation matrix.
pub fn write_eval_plots(run: &Path, evaluation: &Evaluation) -> Result<()> {
    let dir = run.join("plots");
    let names = class_names(evaluation.confusion.iou().len());
    let iou: Vec<f64> = evaluation
        .confusion
        .iou()
        .iter()
        .map(|v| v.unwrap_or(0.0))
        .collect();
    plots::bar_plot(
        &dir.join("per_class_iou.png"),
        &format!("per-class IoU (mIoU {:.3})", evaluation.confusion.miou()),
        &names,
        &iou,
    )?;
    write_routing_plots(&dir, &evaluation.routing, &names)
}

/// Expert usage of every MoE layer (one grouped bar plot), and per layer the expert×class
/// heatmap and the co-activation matrix.
pub fn write_routing_plots(
    dir: &Path,
    routing: &BTreeMap<String, RoutingStats>,
    class_names: &[String],
) -> Result<()> {
    if routing.is_empty() {
        return Ok(());
    }
    let usage: Vec<(String, Vec<f64>)> = routing
        .iter()
        .map(|(path, stats)| {
            (
                format!("{path} (NRE {:.2}, TEC {:.2})", stats.nre(), stats.tec()),
                stats.usage(),
            )
        })
        .collect();
    plots::usage_plot(
        &dir.join("expert_usage.png"),
        "expert usage per MoE layer",
        &usage,
    )?;
    for (path, stats) in routing {
        let report = stats.report();
        let stem = file_stem(path);
        let experts: Vec<String> = (0..report.usage.len()).map(|e| format!("e{e}")).collect();
        plots::heatmap(
            &dir.join(format!("expert_class_{stem}.png")),
            &format!("expert x class of {path} (row-normalised)"),
            &experts,
            class_names,
            &report.expert_class,
        )?;
        plots::heatmap(
            &dir.join(format!("coactivation_{stem}.png")),
            &format!("co-activation of {path}"),
            &experts,
            &experts,
            &report.coactivation,
        )?;
    }
    Ok(())
}

/// Loss and mIoU curves from `metrics.jsonl`.
pub fn write_run_plots(run: &Path) -> Result<()> {
    let records = read_metrics(run)?;
    let series = |kind: &str, value: fn(&crate::train::run_dir::MetricRecord) -> Option<f64>| {
        records
            .iter()
            .filter(|r| r.kind == kind)
            .filter_map(|r| value(r).map(|v| (r.step as f64, v)))
            .collect::<Vec<(f64, f64)>>()
    };
    let dir = run.join("plots");
    plots::line_plot(
        &dir.join("loss.png"),
        "training loss",
        "step",
        "loss",
        &[
            ("loss".to_string(), series("step", |r| r.loss)),
            ("epoch mean".to_string(), series("epoch", |r| r.loss)),
        ],
    )?;
    plots::line_plot(
        &dir.join("miou.png"),
        "validation mIoU",
        "step",
        "mIoU",
        &[("mIoU".to_string(), series("eval", |r| r.miou))],
    )
}

/// The routing report of every MoE layer as JSON (usage, NRE, TEC, co-activation,
/// expert×class, class×expert).
pub fn routing_json(routing: &BTreeMap<String, RoutingStats>) -> serde_json::Value {
    let layers: serde_json::Map<String, serde_json::Value> = routing
        .iter()
        .map(|(path, stats)| {
            let r = stats.report();
            (
                path.clone(),
                json!({
                    "tokens": r.tokens,
                    "usage": r.usage,
                    "nre": r.nre,
                    "tec": r.tec,
                    "coactivation": r.coactivation,
                    "expert_class": r.expert_class,
                    "class_expert": r.class_expert,
                }),
            )
        })
        .collect();
    serde_json::Value::Object(layers)
}

/// An RGB image as a normalised `[1, 3, H, W]` tensor (ImageNet mean and std).
pub fn image_tensor(image: &image::RgbImage, device: &Device) -> Result<Tensor> {
    let sample = Sample {
        id: String::new(),
        image: image.clone(),
        label: None,
    };
    let prepared = prepare(&sample, None)?;
    Tensor::from_vec_on(
        prepared.image,
        [1, 3, prepared.height, prepared.width],
        device,
    )
}

/// The smallest width of the sample pictures (smaller images are scaled up by a whole factor).
pub const SAMPLE_MIN_WIDTH: u32 = 512;

/// Writes the first `train.samples` validation images with their predictions (colour overlay)
/// and, for every MoE layer, the routing overlay (patch grid and chosen experts) to
/// `RUN/samples`, scaled up to at least [`SAMPLE_MIN_WIDTH`] pixels wide; returns the pictures with TensorBoard tags
/// (`samples/<id>/prediction`, `samples/<id>/routing/<layer>`).
pub fn write_samples(
    run: &Path,
    model: &dyn SegNet,
    dataset: &dyn Dataset,
    config: &Config,
    device: &Device,
) -> Result<Vec<(String, image::RgbImage)>> {
    let mut pictures_out = Vec::new();
    let dir = run.join("samples");
    std::fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, format!("cannot create: {e}")))?;
    set_training(model as &dyn Module, false);
    for index in 0..config.train.samples.min(dataset.len()) {
        let sample = dataset.get(index)?;
        let input = image_tensor(&sample.image, device)?;
        let prediction = no_grad(|| predict_with_routing(model, &input))?;
        let stem = sample.id.replace(['/', '\\'], "_");
        let (h, w) = (
            sample.image.height() as usize,
            sample.image.width() as usize,
        );
        // Training crops are small: pictures are scaled up (nearest) to a readable size.
        let big = |img: &image::RgbImage| pictures::upscale_nearest(img, SAMPLE_MIN_WIDTH);
        let image = big(&sample.image);
        let colour = big(&pictures::colorize(&prediction.labels, h, w));
        let blended = pictures::blend(&image, &colour, 0.5)?;
        pictures::save_png(&blended, &dir.join(format!("{stem}_prediction.png")))?;
        pictures_out.push((format!("samples/{stem}/prediction"), blended));
        if let Some(label) = &sample.label {
            let truth = big(&pictures::colorize(label, h, w));
            pictures::save_png(&truth, &dir.join(format!("{stem}_label.png")))?;
        }
        for layer in &prediction.routing {
            let overlay = layer.overlay(&image);
            pictures::save_png(
                &overlay,
                &dir.join(format!("{stem}_routing_{}.png", file_stem(&layer.path))),
            )?;
            pictures_out.push((format!("samples/{stem}/routing/{}", layer.path), overlay));
        }
    }
    Ok(pictures_out)
}

/// How one MoE layer routed one image.
pub struct LayerRouting {
    /// The layer's path.
    pub path: String,
    /// Patch grid rows and columns.
    pub grid: [usize; 2],
    /// The chosen experts of each patch (row-major), in rank order.
    pub experts: Vec<Vec<usize>>,
    /// Experts of the layer.
    pub num_experts: usize,
}

impl LayerRouting {
    /// The image with its patch grid tinted by each patch's top expert.
    pub fn overlay(&self, image: &image::RgbImage) -> image::RgbImage {
        pictures::routing_overlay(
            image,
            self.grid[0],
            self.grid[1],
            &self.experts,
            self.num_experts,
        )
    }
}

/// A prediction with the routing that produced it.
pub struct Prediction {
    /// trainIds, `H×W` row-major.
    pub labels: Vec<u8>,
    /// Routing of every MoE layer.
    pub routing: Vec<LayerRouting>,
}

/// The trainId prediction of one image `[1, 3, H, W]` (eval mode) and the routing of every MoE
/// layer.
pub fn predict_with_routing(model: &dyn SegNet, input: &Tensor) -> Result<Prediction> {
    let logits = crate::train::evaluate::infer(
        model,
        input,
        None,
        crate::train::evaluate::Inference::Full,
        &mut |_| Ok(()),
    )?;
    let labels = logits
        .argmax(1, false)?
        .try_to_vec()?
        .into_iter()
        .map(|v| v as u8)
        .collect();
    let mut routing = Vec::new();
    for (path, moe) in setup::moe_layers(model as &dyn Module) {
        if let Some(record) = moe.last_routing() {
            let k = record.indices.dims().get(1).copied().unwrap_or(1).max(1);
            let experts = record
                .indices
                .try_to_vec()?
                .chunks(k)
                .map(|row| row.iter().map(|&e| e as usize).collect())
                .collect();
            routing.push(LayerRouting {
                path,
                grid: [record.grid.rows(), record.grid.cols()],
                experts,
                num_experts: moe.config.num_experts,
            });
        }
    }
    Ok(Prediction { labels, routing })
}

/// The one-screen summary printed at the end of a run.
pub fn summary(run: &Path, config: &Config, state: &TrainState, evaluation: &Evaluation) -> String {
    let names = class_names(config.model.num_classes);
    let mut text = String::new();
    text.push_str(&format!(
        "\n== {} on {} : {} steps in {:.1} s ==\n",
        config.model.name, config.data.dataset, state.step, state.elapsed_s
    ));
    text.push_str(&evaluation.confusion.summary_table(&names));
    text.push_str(&format!(
        "\nfinal mIoU {:.4}  pixel accuracy {:.4}  val CE {:.4} ({} images)\n",
        evaluation.confusion.miou(),
        evaluation.confusion.pixel_accuracy(),
        evaluation.mean_ce,
        evaluation.images
    ));
    if let (Some(best), Some(step), Some(epoch)) =
        (state.best_miou, state.best_step, state.best_epoch)
    {
        text.push_str(&format!(
            "best mIoU {best:.4} at step {step} (epoch {epoch})\n"
        ));
    }
    for (path, stats) in &evaluation.routing {
        let usage: Vec<String> = stats.usage().iter().map(|u| format!("{u:.2}")).collect();
        text.push_str(&format!(
            "routing {path}: usage [{}]  NRE {:.3}  TEC {:.3}\n",
            usage.join(" "),
            stats.nre(),
            stats.tec()
        ));
    }
    text.push_str(&format!(
        "run folder {} (config.toml, metrics.jsonl, checkpoints/, plots/, samples/)",
        run.display()
    ));
    text
}
