//! Training an ensemble's gate (`moeseg ensemble train`) into a run folder: `config.toml`
//! (the experts by path and weight hash, `[ensemble]`), `checkpoints/{last,best}` (the gate's
//! and refinement's weights only), `metrics.jsonl`, `plots/`. Only the gate trains: the
//! experts run without gradients in eval mode and are not in the optimizer.

use super::experts::Expert;
use super::model::{Ensemble, EnsembleOutput};
use crate::autograd::NoGradGuard;
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::ops::loss::{CrossEntropyOptions, Reduction};
use crate::optim::{LrScheduler, Optimizer};
use crate::tensor::{manual_seed, Tensor};
use crate::train::checkpoint::{self, TrainState};
use crate::train::config::Config;
use crate::train::evaluate::{evaluate, Inference};
use crate::train::run_dir::{self, MetricRecord, MetricsLog};
use crate::train::{plots, setup};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Loads the experts named by `config.ensemble` onto `device` (checking the recorded weight
/// hashes) and builds the ensemble with a gate seeded from `train.seed`.
pub fn build(config: &Config, device: &Device) -> Result<Ensemble> {
    let section = &config.ensemble;
    if section.experts.len() < 2 {
        return Err(Error::invalid(
            "ensemble",
            format!(
                "an ensemble needs two experts at least (--expert RUN, repeated), got {}",
                section.experts.len()
            ),
        ));
    }
    let experts = section
        .experts
        .iter()
        .enumerate()
        .map(|(i, run)| {
            let hash = section.expert_hashes.get(i).map(String::as_str);
            Expert::from_spec(run, &section.checkpoint, hash, device)
        })
        .collect::<Result<Vec<Expert>>>()?;
    manual_seed(config.train.seed);
    let ensemble = Ensemble::new(experts, section)?;
    crate::nn::to_device(&ensemble, device)?;
    Ok(ensemble)
}

/// The ensemble of run folder `run` (configuration `config`, with any overrides applied):
/// experts checked against their hashes, gate weights from the `best` checkpoint (else
/// `last`), eval mode.
pub fn load_run(run: &Path, config: &Config) -> Result<Ensemble> {
    let dir = checkpoint::find(run, "best").or_else(|_| checkpoint::find(run, "last"))?;
    let (device, note) = setup::resolve_device(&config.train.device)?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    load_weights(config, &dir.join(checkpoint::MODEL_FILE), &device)
}

/// The ensemble of `config` with the gate weights of `weights`, in eval mode on `device`.
pub fn load_weights(config: &Config, weights: &Path, device: &Device) -> Result<Ensemble> {
    let ensemble = build(config, device)?;
    checkpoint::load_weights(weights, &ensemble)?;
    crate::nn::to_device(&ensemble, device)?;
    crate::nn::set_training(&ensemble, false);
    Ok(ensemble)
}

/// Options of [`train`].
#[derive(Clone, Debug, Default)]
pub struct EnsembleTrainOptions {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Continue the run in `run_dir` from its `last` checkpoint.
    pub resume: bool,
    /// Stop after this many steps in total (the run can be resumed).
    pub stop_at: Option<u64>,
    /// No progress lines.
    pub quiet: bool,
}

/// The loss parts of one step.
pub struct StepLoss {
    /// Total.
    pub total: Tensor,
    /// Cross-entropy of the combined output.
    pub main: f64,
    /// Weighted load-balancing term.
    pub balance: f64,
    /// Weighted oracle term.
    pub oracle: f64,
}

/// The gate's training loss for `images` and `labels` (on the ensemble's device).
pub fn step_loss(
    ensemble: &Ensemble,
    config: &Config,
    images: &Tensor,
    labels: &Tensor,
) -> Result<StepLoss> {
    let section = &config.ensemble;
    let out = ensemble.forward_full(images, section.oracle > 0.0)?;
    let main = out
        .logits
        .cross_entropy(labels, CrossEntropyOptions::default())?;
    let mut total = main.clone();
    let mut balance = 0.0;
    let mut oracle = 0.0;
    if let Some(scores) = &out.scores {
        if section.balance > 0.0 {
            let term = balance_term(scores)?.mul_scalar(section.balance)?;
            balance = term.item()? as f64;
            total = total.add(&term)?;
        }
        if section.oracle > 0.0 {
            let target = oracle_target(&out, labels)?;
            let term = scores
                .cross_entropy(&target, CrossEntropyOptions::default())?
                .mul_scalar(section.oracle)?;
            oracle = term.item()? as f64;
            total = total.add(&term)?;
        }
    }
    Ok(StepLoss {
        main: main.item()? as f64,
        total,
        balance,
        oracle,
    })
}

/// `K · Σ_e f_e · P_e`: `f_e` the share of images whose first choice is `e` (a constant),
/// `P_e` the mean softmax of the per-image scores (Switch Transformer's balancing loss; 1 when
/// balanced).
pub fn balance_term(scores: &Tensor) -> Result<Tensor> {
    let (b, k) = (scores.dims()[0], scores.dims()[1]);
    let first = {
        let _g = NoGradGuard::new();
        scores.argmax(1, false)?.try_to_vec()?
    };
    let mut f = vec![0f32; k];
    first.iter().for_each(|&e| f[e as usize] += 1.0 / b as f32);
    let f = Tensor::from_vec_on(f, [1, k], &scores.device())?;
    scores
        .softmax(1)?
        .mean(&[0], true)?
        .mul(&f)?
        .sum_all()?
        .mul_scalar(k as f32)
}

/// Per image, the expert whose own output has the lowest mean cross-entropy (`[B]`).
fn oracle_target(out: &EnsembleOutput, labels: &Tensor) -> Result<Tensor> {
    let _g = NoGradGuard::new();
    let outputs = out
        .expert_outputs
        .as_ref()
        .ok_or_else(|| Error::invalid("ensemble", "the oracle term needs every expert's output"))?;
    let b = labels.dims()[0];
    let valid = labels.try_to_vec()?;
    let per_image = valid.len() / b.max(1);
    let mut best = vec![(f64::INFINITY, 0usize); b];
    for (e, o) in outputs.iter().enumerate() {
        let options = CrossEntropyOptions {
            reduction: Reduction::None,
            ..CrossEntropyOptions::default()
        };
        let loss = o.cross_entropy(labels, options)?.try_to_vec()?;
        for (i, best) in best.iter_mut().enumerate() {
            let range = i * per_image..(i + 1) * per_image;
            let n = valid[range.clone()].iter().filter(|&&v| v != 255.0).count();
            let sum: f64 = loss[range].iter().map(|&v| v as f64).sum();
            let mean = sum / n.max(1) as f64;
            if mean < best.0 {
                *best = (mean, e);
            }
        }
    }
    let target: Vec<f32> = best.iter().map(|&(_, e)| e as f32).collect();
    Tensor::from_vec_on(target, [b], &labels.device())
}

/// Trains the gate of the ensemble in `config` into `options.run_dir`.
pub fn train(config: &Config, options: &EnsembleTrainOptions) -> Result<()> {
    let run = options.run_dir.as_path();
    let (device, note) = setup::resolve_device(&config.train.device)?;
    let say = |line: &str| {
        if !options.quiet {
            println!("{line}");
        }
    };
    if let Some(note) = note {
        say(&note);
    }
    let ensemble = build(config, &device)?;
    let mut config = config.clone();
    config.model.num_classes = ensemble.classes;
    config.ensemble.expert_hashes = ensemble.experts.iter().map(|e| e.hash.clone()).collect();
    if !options.resume {
        run_dir::create(run, &config)?;
    }
    let train_set = setup::open_dataset(&config.data, &config.data.train_split, true)?;
    let val_set = setup::open_dataset(&config.data, &config.data.val_split, false)?;
    let loader = setup::train_loader(&config, train_set.clone())?;
    let val_loader = setup::eval_loader(&config, val_set)?;
    let per_epoch = loader.batches_per_epoch();
    if per_epoch == 0 {
        return Err(Error::invalid(
            "ensemble train",
            format!("{} has fewer images than one batch", train_set.describe()),
        ));
    }
    let total = match config.train.steps {
        0 => (config.train.epochs * per_epoch) as u64,
        s => s as u64,
    };
    let params = crate::nn::named_parameters(&ensemble);
    let mut optimizer: Box<dyn Optimizer> = setup::build_optimizer(&config.optim, params)?;
    let schedule = setup::build_schedule(&config.optim, total)?;
    let mut scheduler = LrScheduler::new(schedule, optimizer.as_mut())?;
    let mut state = TrainState {
        total_steps: total,
        seed: config.train.seed,
        ..TrainState::default()
    };
    if options.resume {
        let last = checkpoint::find(run, "last")?;
        checkpoint::load_model(&last, &ensemble)?;
        checkpoint::load_optimizer(&last, optimizer.as_mut(), &mut scheduler)?;
        state = checkpoint::read_state(&last)?;
    }
    let mut log = MetricsLog::open(run, Some(state.step))?;
    let stop = options.stop_at.unwrap_or(total).min(total);
    let started = Instant::now();
    crate::nn::set_training(&ensemble, true);
    let inference = Inference::from_config(&config.train)?;
    while state.step < stop {
        let batches = loader.epoch_from(state.epoch, state.batch_in_epoch);
        for batch in batches {
            if state.step >= stop {
                break;
            }
            let batch = batch?;
            let images = batch.images.to_device(&device)?;
            let labels = batch.labels.to_device(&device)?;
            let loss = step_loss(&ensemble, &config, &images, &labels)?;
            optimizer.zero_grad();
            loss.total.backward()?;
            optimizer.step()?;
            scheduler.step(optimizer.as_mut())?;
            state.step += 1;
            state.batch_in_epoch += 1;
            let value = loss.total.item()? as f64;
            if !value.is_finite() {
                return Err(Error::invalid(
                    "ensemble train",
                    format!("the loss is {value} at step {}", state.step),
                ));
            }
            if state
                .step
                .is_multiple_of(config.train.log_interval.max(1) as u64)
            {
                log.append(&MetricRecord {
                    kind: "step".into(),
                    step: state.step,
                    epoch: state.epoch + 1,
                    loss: Some(value),
                    main_loss: Some(loss.main),
                    balance_loss: Some(loss.balance + loss.oracle),
                    lr: optimizer.lrs().first().copied(),
                    ..MetricRecord::default()
                })?;
                say(&format!(
                    "step {}/{total}  loss {value:.4}  ce {:.4}  balance {:.4}  oracle {:.4}",
                    state.step, loss.main, loss.balance, loss.oracle
                ));
            }
        }
        if state.batch_in_epoch >= per_epoch {
            state.epoch += 1;
            state.batch_in_epoch = 0;
        }
        let at_end = state.step >= stop;
        let interval = config.train.eval_interval.max(1);
        if at_end || (state.batch_in_epoch == 0 && state.epoch.is_multiple_of(interval)) {
            crate::nn::set_training(&ensemble, false);
            let evaluation = evaluate(
                &ensemble,
                &val_loader,
                ensemble.classes,
                inference,
                config.data.max_val_images,
            )?;
            crate::nn::set_training(&ensemble, true);
            let miou = evaluation.confusion.miou();
            log.append(&MetricRecord {
                kind: "eval".into(),
                step: state.step,
                epoch: state.epoch.max(1),
                miou: Some(miou),
                pixel_accuracy: Some(evaluation.confusion.pixel_accuracy()),
                val_loss: Some(evaluation.mean_ce),
                iou: Some(evaluation.confusion.iou()),
                ..MetricRecord::default()
            })?;
            say(&format!("eval at step {}: mIoU {miou:.4}", state.step));
            state.elapsed_s += started.elapsed().as_secs_f64();
            if state.best_miou.is_none_or(|b| miou > b) {
                state.best_miou = Some(miou);
                state.best_step = Some(state.step);
                state.best_epoch = Some(state.epoch.max(1));
                checkpoint::save(
                    run,
                    "best",
                    &ensemble,
                    optimizer.as_ref(),
                    &scheduler,
                    &state,
                )?;
            }
            state.finished = state.step >= total;
            checkpoint::save(
                run,
                "last",
                &ensemble,
                optimizer.as_ref(),
                &scheduler,
                &state,
            )?;
        }
    }
    crate::nn::set_training(&ensemble, false);
    write_plots(run)?;
    say(&format!("ensemble run in {}", run.display()));
    Ok(())
}

/// `plots/loss.png` and `plots/miou.png` from `metrics.jsonl`.
fn write_plots(run: &Path) -> Result<()> {
    let records = run_dir::read_metrics(run)?;
    let series = |kind: &str, f: fn(&MetricRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter(|r| r.kind == kind)
            .filter_map(|r| f(r).map(|v| (r.step as f64, v)))
            .collect()
    };
    let dir = run.join("plots");
    std::fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, format!("cannot create: {e}")))?;
    plots::line_plot(
        &dir.join("loss.png"),
        "gate training loss",
        "step",
        "loss",
        &[
            ("total".into(), series("step", |r| r.loss)),
            ("cross-entropy".into(), series("step", |r| r.main_loss)),
        ],
    )?;
    plots::line_plot(
        &dir.join("miou.png"),
        "validation mIoU",
        "step",
        "mIoU",
        &[("ensemble".into(), series("eval", |r| r.miou))],
    )
}
