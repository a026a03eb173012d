//! `moeseg eval`, `moeseg eval-fixed-expert` and `moeseg routing-stats`: evaluation of a
//! trained network over the validation split (one confusion matrix, Cityscapes' mIoU), the
//! fixed-expert ablation, and the routing analysis of its MoE layers.

use super::model_source::{output_path, write_json, Loaded, ModelArgs};
use crate::error::{Error, Result};
use crate::moe::{SoftConvMoE, SoftMoE, SoftRoutingLayer};
use crate::train::evaluate::{evaluate, Evaluation, Inference};
use crate::train::report::{class_names, routing_json, write_routing_plots};
use crate::train::setup;
use clap::Args;
use serde_json::json;
use std::path::PathBuf;

/// Every soft-routing layer of a network (SoftMoE over tokens, SoftConvMoE over patches) with
/// its path.
fn soft_moe_layers(model: &dyn crate::nn::Module) -> Vec<(String, &dyn SoftRoutingLayer)> {
    fn soft(m: &dyn crate::nn::Module) -> Option<&dyn SoftRoutingLayer> {
        let any = m.as_any();
        any.downcast_ref::<SoftMoE>()
            .map(|l| l as &dyn SoftRoutingLayer)
            .or_else(|| {
                any.downcast_ref::<SoftConvMoE>()
                    .map(|l| l as &dyn SoftRoutingLayer)
            })
    }
    let mut paths = Vec::new();
    crate::nn::visit_modules(model, &mut |path, m| {
        if soft(m).is_some() {
            paths.push(path.to_string());
        }
    });
    paths
        .into_iter()
        .filter_map(|path| {
            let layer = soft(crate::nn::get_module(model, &path).ok()?)?;
            Some((path, layer))
        })
        .collect()
}

/// Options of `moeseg eval`.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Where to write the results as JSON (default: RUN/eval.json with --run, else eval.json).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Options of `moeseg eval-fixed-expert` and `moeseg routing-stats`.
#[derive(Args, Debug, Clone)]
pub struct AnalysisArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output folder for the JSON and the plots (default: the run folder with --run, else the
    /// current folder).
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
}

/// Evaluates the loaded network over `data.val_split`.
fn evaluate_loaded(loaded: &Loaded) -> Result<Evaluation> {
    let config = &loaded.config;
    let dataset = setup::open_dataset(&config.data, &config.data.val_split, false)?;
    let loader = setup::eval_loader(config, dataset)?;
    evaluate(
        &*loaded.model,
        &loader,
        config.model.num_classes,
        Inference::from_config(&config.train)?,
        config.data.max_val_images,
    )
}

/// The JSON of an evaluation: mIoU, pixel accuracy, per-class IoU by name, routing.
fn evaluation_json(loaded: &Loaded, evaluation: &Evaluation) -> serde_json::Value {
    let names = class_names(loaded.config.model.num_classes);
    let iou: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .zip(evaluation.confusion.iou())
        .map(|(name, iou)| (name.clone(), json!(iou)))
        .collect();
    json!({
        "weights": loaded.origin,
        "dataset": loaded.config.data.dataset,
        "split": loaded.config.data.val_split,
        "images": evaluation.images,
        "inference": Inference::from_config(&loaded.config.train).map(|i| i.describe()).unwrap_or_default(),
        "miou": evaluation.confusion.miou(),
        "pixel_accuracy": evaluation.confusion.pixel_accuracy(),
        "mean_ce": evaluation.mean_ce,
        "iou": iou,
        "routing": routing_json(&evaluation.routing),
    })
}

/// The class names of a run: its class map's groups, else the dataset's.
pub fn config_class_names(config: &crate::train::config::Config) -> Vec<String> {
    match crate::data::ClassMap::parse(&config.data.class_map, &config.data.class_map_rest) {
        Ok(Some(map)) if map.num_classes() == config.model.num_classes => map.names,
        _ => class_names(config.model.num_classes),
    }
}

/// Runs `moeseg eval`.
pub fn run_eval(args: &EvalArgs) -> Result<()> {
    let loaded = args.model.load()?;
    let evaluation = evaluate_loaded(&loaded)?;
    let names = config_class_names(&loaded.config);
    println!("{}", evaluation.confusion.summary_table(&names));
    println!(
        "mIoU {:.4}  pixel accuracy {:.4}  mean CE {:.4}  ({} images of {} {}, {:.1} s)",
        evaluation.confusion.miou(),
        evaluation.confusion.pixel_accuracy(),
        evaluation.mean_ce,
        evaluation.images,
        loaded.config.data.dataset,
        loaded.config.data.val_split,
        evaluation.seconds
    );
    if !evaluation.dynamic_flops.real.is_empty() {
        println!("{}", evaluation.dynamic_flops.line());
    }
    let path = output_path(&args.json, &loaded.run, "eval.json");
    write_json(&path, &evaluation_json(&loaded, &evaluation))?;
    println!("wrote {}", path.display());
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    write_confusion(dir, &evaluation.confusion, &names)?;
    Ok(())
}

/// Writes `confusion.json` (counts and row-normalised shares, class names) and
/// `confusion.png` (row-normalised heatmap) into `dir`, and prints the most confused pairs.
pub fn write_confusion(
    dir: &std::path::Path,
    confusion: &crate::train::metrics::ConfusionMatrix,
    names: &[String],
) -> Result<()> {
    let classes = confusion.classes();
    let counts: Vec<Vec<u64>> = (0..classes)
        .map(|t| (0..classes).map(|p| confusion.count(t, p)).collect())
        .collect();
    let shares = confusion.row_normalized();
    let pairs = confusion.most_confused(10);
    let pairs_json: Vec<serde_json::Value> = pairs
        .iter()
        .map(|&(t, p, share)| json!({"target": names[t], "predicted": names[p], "share": share}))
        .collect();
    let json_path = dir.join("confusion.json");
    write_json(
        &json_path,
        &json!({
            "classes": names,
            "rows": "target",
            "columns": "prediction",
            "counts": counts,
            // NaN (a class without ground truth) is written as null.
            "row_normalized": shares.iter().map(|r| r.iter().map(|v| v.is_finite().then_some(*v)).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "most_confused": pairs_json,
        }),
    )?;
    let png = dir.join("confusion.png");
    crate::train::plots::Plotter::new(900, 800).heatmap(
        &png,
        "confusion (row-normalised: share of target pixels)",
        names,
        names,
        &shares,
    )?;
    println!("most confused (target → predicted: share of target pixels):");
    for (t, p, share) in &pairs {
        println!("  {:<16} → {:<16} {:.4}", names[*t], names[*p], share);
    }
    println!("wrote {} and {}", json_path.display(), png.display());
    Ok(())
}

/// Runs `moeseg eval-fixed-expert`: E passes with every token of every MoE layer forced to
/// expert e, then one with normal routing; a table of mIoU and mean CE per pass.
pub fn run_fixed_expert(args: &AnalysisArgs) -> Result<()> {
    let loaded = args.model.load()?;
    let layers = setup::moe_layers(&*loaded.model);
    let experts = layers
        .iter()
        .map(|(_, moe)| moe.config.num_experts)
        .max()
        .ok_or_else(|| {
            Error::invalid(
                "eval-fixed-expert",
                format!("{} has no PatchConvMoE layer", loaded.config.model.name),
            )
        })?;
    let mut rows = Vec::new();
    println!("{:<10} {:>8} {:>9}", "pass", "mIoU", "mean CE");
    for pass in (0..experts).map(Some).chain([None]) {
        // Layers with fewer experts than the largest keep normal routing for the extra passes.
        for (path, moe) in &layers {
            let forced = pass.filter(|&e| e < moe.config.num_experts);
            moe.set_fixed_expert(forced)
                .map_err(|e| Error::invalid("eval-fixed-expert", format!("`{path}`: {e}")))?;
        }
        let evaluation = evaluate_loaded(&loaded)?;
        let name = pass.map_or("routed".to_string(), |e| format!("expert {e}"));
        println!(
            "{name:<10} {:>8.4} {:>9.4}",
            evaluation.confusion.miou(),
            evaluation.mean_ce
        );
        rows.push(json!({
            "pass": name,
            "expert": pass,
            "miou": evaluation.confusion.miou(),
            "pixel_accuracy": evaluation.confusion.pixel_accuracy(),
            "mean_ce": evaluation.mean_ce,
        }));
    }
    setup::set_fixed_expert(&*loaded.model, None)?;
    let dir = output_path(&args.output, &loaded.run, ".");
    let path = dir.join("fixed_expert.json");
    write_json(
        &path,
        &json!({ "weights": loaded.origin, "layers": layers.iter().map(|(p, _)| p).collect::<Vec<_>>(), "passes": rows }),
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The route pictures of a dynamic network: `route_image<k>.png` for the first images and
/// `route_mean.png` for the split's average α.
fn write_route_pictures(
    plots: &std::path::Path,
    summary: &crate::models::dynamic::FlopsSummary,
) -> Result<()> {
    use crate::models::dynamic::routes::{draw_route, scaled};
    for (k, route) in summary.routes.iter().enumerate() {
        let path = plots.join(format!("route_image{k}.png"));
        let title = format!("route of image {k} (width ∝ α)");
        crate::data::pictures::save_png(&draw_route(route, &summary.cells, &title), &path)?;
    }
    let mean = scaled(&summary.route_sum, summary.real.len());
    let path = plots.join("route_mean.png");
    let title = format!("mean route, {} images (width ∝ mean α)", summary.real.len());
    crate::data::pictures::save_png(&draw_route(&mean, &summary.cells, &title), &path)?;
    println!("{}", summary.line());
    println!(
        "route pictures: {} images and the split average in {}",
        summary.routes.len(),
        plots.display()
    );
    Ok(())
}

/// Runs `moeseg routing-stats`: usage, NRE, TEC, co-activation and expert×class of every
/// PatchConvMoE layer, and the routing diagnostics of every Soft-MoE layer
/// ([`crate::moe::SoftRoutingDiagnostics`]), over the validation split, as JSON and plots.
pub fn run_routing_stats(args: &AnalysisArgs) -> Result<()> {
    let loaded = args.model.load()?;
    let soft = soft_moe_layers(&*loaded.model);
    let dynamic =
        crate::models::dynamic::dynamic_net(&*loaded.model as &dyn crate::nn::Module).is_some();
    if setup::moe_layers(&*loaded.model).is_empty() && soft.is_empty() && !dynamic {
        return Err(Error::invalid(
            "routing-stats",
            format!(
                "{} has no PatchConvMoE, Soft-MoE or SoftConvMoE layer and is not a dynamic \
                 routing network",
                loaded.config.model.name
            ),
        ));
    }
    for (_, layer) in &soft {
        layer.diagnostics().set_recording(true);
    }
    let evaluation = evaluate_loaded(&loaded)?;
    let mut soft_json = serde_json::Map::new();
    for (path, layer) in &soft {
        let recorded = layer.diagnostics().merged();
        layer.diagnostics().set_recording(false);
        let Some(d) = recorded else {
            continue;
        };
        println!(
            "{path}: soft, {} slots, {} images  dispatch min/max {:.4}/{:.4}  combine min/max \
             {:.4}/{:.4}  token sim {:.3}  slot sim {:.3}",
            d.slots,
            d.batch,
            d.dispatch_min_mean,
            d.dispatch_max_mean,
            d.combine_min_mean,
            d.combine_max_mean,
            d.combine_similarity.mean,
            d.dispatch_similarity.mean
        );
        soft_json.insert(path.clone(), d.to_json());
    }
    let dir = output_path(&args.output, &loaded.run, ".");
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots)
        .map_err(|e| Error::file(&plots, format!("cannot create: {e}")))?;
    let names = class_names(loaded.config.model.num_classes);
    write_routing_plots(&plots, &evaluation.routing, &names)?;
    if dynamic {
        write_route_pictures(&plots, &evaluation.dynamic_flops)?;
    }
    for (path, stats) in &evaluation.routing {
        let usage: Vec<String> = stats.usage().iter().map(|u| format!("{u:.3}")).collect();
        println!(
            "{path}: tokens {}  usage [{}]  NRE {:.3}  TEC {:.3}",
            stats.tokens(),
            usage.join(" "),
            stats.nre(),
            stats.tec()
        );
    }
    let path = dir.join("routing_stats.json");
    write_json(
        &path,
        &json!({
            "weights": loaded.origin,
            "images": evaluation.images,
            "miou": evaluation.confusion.miou(),
            "layers": routing_json(&evaluation.routing),
            "soft_layers": soft_json,
        }),
    )?;
    println!("wrote {} and plots in {}", path.display(), plots.display());
    Ok(())
}
