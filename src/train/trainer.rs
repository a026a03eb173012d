//! The training loop: the network (with its PatchConvMoE layers) trained on
//! `CE(main) + Σ aux weight·CE(aux) + Σ MoE balancing losses` (ignore 255, optional class
//! weights), evaluated on the validation split, checkpointed and logged into a run folder.
//!
//! Exact resume: the model is built from the seed, the loader's order and augmentation are
//! fixed by (seed, epoch), and before every step the default generator (dropout, noisy
//! top-k) is reseeded from (seed, step). So the state at a step boundary is just the weights,
//! the optimizer and scheduler state (saved bit-exactly) and the position (`state.json`), and a
//! run resumed from any checkpoint logs the same losses as one that never stopped.

use crate::error::{Error, Result};
use crate::models::SegNet;
use crate::nn::{named_parameters, parameter_count, set_training, to_device, Module};
use crate::optim::LrScheduler;
use crate::tensor::{manual_seed, Tensor};
use crate::train::checkpoint::{self, LossSums, TrainState};
use crate::train::config::Config;
use crate::train::evaluate::{evaluate, Evaluation, Inference};
use crate::train::report;
use crate::train::run_dir::{self, MetricRecord, MetricsLog};
use crate::train::setup;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// How a training run is started.
pub struct TrainOptions {
    /// The run folder (created for a new run; read for `--resume`).
    pub run_dir: PathBuf,
    /// Continue the run in `run_dir` from its `last` checkpoint.
    pub resume: bool,
    /// No progress bar and no log lines.
    pub quiet: bool,
    /// Set by Ctrl-C: save a resumable checkpoint and stop after the current step.
    pub interrupt: Arc<AtomicBool>,
    /// Stop as Ctrl-C would once this many steps are done (time-boxed jobs, tests).
    pub stop_at: Option<u64>,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Every step was taken.
    Finished,
    /// Stopped by Ctrl-C after `step` steps; `last` holds a resumable checkpoint.
    Interrupted {
        /// Steps done.
        step: u64,
    },
}

/// The per-step generator seed: dropout and noisy top-k of step `step` depend only on it.
fn step_seed(seed: u64, step: u64) -> u64 {
    seed ^ step.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The three parts of a training loss.
struct LossParts {
    total: Tensor,
    main: f64,
    aux: f64,
    balance: f64,
}

/// Forward and loss of one batch in training mode ([`crate::models::training_loss`]), keeping
/// each part for the log.
fn training_loss(
    model: &dyn SegNet,
    images: &Tensor,
    labels: &Tensor,
    class_weights: Option<&Tensor>,
) -> Result<LossParts> {
    let output = model.forward_seg(images)?;
    let loss = crate::models::training_loss(model, &output, labels, class_weights)?;
    let value = |part: Option<&Tensor>| -> Result<f64> {
        Ok(match part {
            Some(t) => t.item()? as f64,
            None => 0.0,
        })
    };
    Ok(LossParts {
        main: loss.main.item()? as f64,
        aux: value(loss.aux.as_ref())?,
        balance: value(loss.balance.as_ref())?,
        total: loss.total,
    })
}

impl LossSums {
    fn add(&mut self, parts: &LossParts, total: f64) {
        self.loss += total;
        self.main += parts.main;
        self.aux += parts.aux;
        self.balance += parts.balance;
        self.steps += 1;
    }

    /// The means as an `epoch` record.
    fn record(&self, step: u64, epoch: usize) -> MetricRecord {
        let n = self.steps.max(1) as f64;
        MetricRecord {
            kind: "epoch".to_string(),
            step,
            epoch,
            loss: Some(self.loss / n),
            main_loss: Some(self.main / n),
            aux_loss: Some(self.aux / n),
            balance_loss: Some(self.balance / n),
            ..MetricRecord::default()
        }
    }
}

/// The name of the first parameter holding a NaN or an infinity; a failed copy of a parameter
/// to the host is an error.
fn non_finite_parameter(model: &dyn Module) -> Result<Option<String>> {
    for (name, t) in named_parameters(model) {
        if t.try_to_vec()?.iter().any(|v| !v.is_finite()) {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// An evaluation as a `metrics.jsonl` record.
pub fn eval_record(evaluation: &Evaluation, step: u64, epoch: usize) -> MetricRecord {
    MetricRecord {
        kind: "eval".into(),
        step,
        epoch,
        miou: Some(evaluation.confusion.miou()),
        pixel_accuracy: Some(evaluation.confusion.pixel_accuracy()),
        val_loss: Some(evaluation.mean_ce),
        iou: Some(evaluation.confusion.iou()),
        ..MetricRecord::default()
    }
}

/// The progress display: a bar on a terminal, log lines otherwise, nothing with `--quiet`.
struct Progress {
    bar: ProgressBar,
    lines: bool,
}

impl Progress {
    fn new(total: u64, done: u64, quiet: bool) -> Progress {
        let terminal = std::io::stdout().is_terminal();
        let bar = if quiet || !terminal {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}, {per_sec}]",
            ) {
                bar.set_style(style);
            }
            bar
        };
        bar.set_position(done);
        Progress {
            bar,
            lines: !quiet && !terminal,
        }
    }

    fn println(&self, line: &str) {
        if self.lines {
            println!("{line}");
        } else {
            self.bar.println(line);
        }
    }
}

/// Trains the run described by `config` into `options.run_dir` (or continues it).
pub fn train(config: &Config, options: &TrainOptions) -> Result<Outcome> {
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
    let classes = config.model.num_classes;
    manual_seed(config.train.seed);
    // Built on the CPU from the seed (the same weights on every device), then moved.
    let model = setup::build_model(&config.model)?;
    to_device(&*model as &dyn Module, &device)?;
    let train_set = setup::open_dataset(&config.data, &config.data.train_split, true)?;
    let val_set = setup::open_dataset(&config.data, &config.data.val_split, false)?;
    let loader = setup::train_loader(config, train_set.clone())?;
    let val_loader = setup::eval_loader(config, val_set.clone())?;
    let per_epoch = loader.batches_per_epoch();
    if per_epoch == 0 {
        return Err(Error::invalid(
            "train",
            format!(
                "{} has fewer images than one batch of data.batch_size = {}",
                train_set.describe(),
                config.data.batch_size
            ),
        ));
    }
    let total = match config.train.steps {
        0 => (config.train.epochs * per_epoch) as u64,
        steps => steps as u64,
    };
    if total == 0 {
        return Err(Error::invalid(
            "train",
            "train.epochs and train.steps are both 0",
        ));
    }
    let class_weights = match config.train.class_weights.as_str() {
        "none" => None,
        "enet" => Some(Tensor::from_vec_on(
            crate::data::enet_class_weights(train_set.as_ref(), classes, Some(500))?,
            [classes],
            &device,
        )?),
        other => {
            return Err(Error::invalid(
                "config",
                format!("train.class_weights = `{other}`: expected none or enet"),
            ))
        }
    };
    let inference = Inference::from_config(&config.train)?;
    let mut optimizer =
        setup::build_optimizer(&config.optim, named_parameters(&*model as &dyn Module))?;
    let mut scheduler = LrScheduler::new(
        setup::build_schedule(&config.optim, total)?,
        optimizer.as_mut(),
    )?;

    let mut state = if options.resume {
        let last = checkpoint::find(run, "last")?;
        checkpoint::load_model(&last, &*model as &dyn Module)?;
        checkpoint::load_optimizer(&last, optimizer.as_mut(), &mut scheduler)?;
        let state = checkpoint::read_state(&last)?;
        if state.total_steps != total {
            return Err(Error::invalid(
                "resume",
                format!(
                    "the checkpoint is of a run of {} steps but the configuration gives {total}",
                    state.total_steps
                ),
            ));
        }
        say(&format!(
            "resuming {} at step {}/{total}",
            run.display(),
            state.step
        ));
        state
    } else {
        run_dir::create(run, config)?;
        if !config.model.pretrained_backbone.is_empty() {
            report::load_pretrained(&*model, &config.model)?;
        }
        let state = TrainState {
            total_steps: total,
            seed: config.train.seed,
            ..TrainState::default()
        };
        // A loadable `last` from the start: a run that fails early still has one.
        checkpoint::save(run, "last", &*model, optimizer.as_ref(), &scheduler, &state)?;
        state
    };
    let mut metrics = MetricsLog::open(run, options.resume.then_some(state.step))?;
    say(&format!(
        "moeseg train: {} ({} parameters{}) on {}; {} steps ({} per epoch, batch {}), {} {}; run folder {}",
        config.model.name,
        parameter_count(&*model as &dyn Module),
        match setup::moe_paths(&config.model)?.as_slice() {
            [] => String::new(),
            paths => format!(", PatchConvMoE at {}", paths.join(", ")),
        },
        train_set.describe(),
        total,
        per_epoch,
        config.data.batch_size,
        config.optim.name,
        config.optim.schedule,
        run.display()
    ));

    let progress = Progress::new(total, state.step, options.quiet);
    let started = Instant::now();
    let elapsed_before = state.elapsed_s;
    // Images and time since the last step record, for the throughput.
    let mut window = (Instant::now(), 0usize);
    let log_interval = config.train.log_interval.max(1) as u64;
    let mut last_eval_step = None;
    while state.step < total {
        let epoch = state.epoch;
        let mut batches = loader.epoch_from(epoch, state.batch_in_epoch);
        while state.step < total && state.batch_in_epoch < per_epoch {
            if options.interrupt.load(Ordering::SeqCst)
                || options.stop_at.is_some_and(|at| state.step >= at)
            {
                state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
                checkpoint::save(run, "last", &*model, optimizer.as_ref(), &scheduler, &state)?;
                progress.bar.abandon();
                return Ok(Outcome::Interrupted { step: state.step });
            }
            let batch = batches.next().ok_or_else(|| {
                Error::invalid(
                    "train",
                    format!(
                        "the loader ended epoch {epoch} after {} batches",
                        state.batch_in_epoch
                    ),
                )
            })??;
            manual_seed(step_seed(config.train.seed, state.step));
            set_training(&*model as &dyn Module, true);
            let lr = optimizer.lrs().first().copied().unwrap_or(0.0);
            // The loader makes batches on the host.
            let parts = training_loss(
                &*model,
                &batch.images.to_device(&device)?,
                &batch.labels.to_device(&device)?,
                class_weights.as_ref(),
            )?;
            let loss = parts.total.item()? as f64;
            if !loss.is_finite() {
                progress.bar.abandon();
                return Err(Error::invalid(
                    "train",
                    format!(
                        "the loss is {loss} at step {} (epoch {}; main {}, aux {}, balance {}); \
                         stopped. The last good checkpoint is {}",
                        state.step + 1,
                        epoch + 1,
                        parts.main,
                        parts.aux,
                        parts.balance,
                        checkpoint::checkpoints_dir(run).join("last").display()
                    ),
                ));
            }
            optimizer.zero_grad();
            parts.total.backward()?;
            optimizer.step()?;
            scheduler.step(optimizer.as_mut())?;
            state.step += 1;
            state.batch_in_epoch += 1;
            state.epoch_losses.add(&parts, loss);
            window.1 += batch.images.dims()[0];
            progress.bar.inc(1);
            progress
                .bar
                .set_message(format!("loss {loss:.4} lr {lr:.2e}"));
            if state.step % log_interval == 0 || state.step == total {
                let images_per_s = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
                metrics.append(&MetricRecord {
                    kind: "step".into(),
                    step: state.step,
                    epoch: epoch + 1,
                    loss: Some(loss),
                    main_loss: Some(parts.main),
                    aux_loss: Some(parts.aux),
                    balance_loss: Some(parts.balance),
                    lr: Some(lr),
                    images_per_s: Some(images_per_s),
                    ..MetricRecord::default()
                })?;
                if progress.lines {
                    progress.println(&format!(
                        "step {}/{total}  epoch {}  loss {loss:.4}  lr {lr:.3e}  {images_per_s:.1} img/s",
                        state.step,
                        epoch + 1,
                    ));
                }
                window = (Instant::now(), 0);
            }
            state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
            let epoch_done = state.batch_in_epoch == per_epoch;
            if epoch_done || state.step == total {
                metrics.append(&state.epoch_losses.record(state.step, epoch + 1))?;
            }
            if epoch_done {
                state.epoch += 1;
                state.batch_in_epoch = 0;
                state.epoch_losses = LossSums::default();
            }
            let eval_now = state.step == total
                || (epoch_done && state.epoch % config.train.eval_interval.max(1) == 0);
            if eval_now {
                let evaluation = evaluate(
                    &*model,
                    &val_loader,
                    classes,
                    inference,
                    config.data.max_val_images,
                )?;
                let miou = evaluation.confusion.miou();
                metrics.append(&eval_record(&evaluation, state.step, epoch + 1))?;
                progress.println(&format!(
                    "eval at step {} (epoch {}): mIoU {:.4}, pixel accuracy {:.4}, val CE {:.4} ({} images, {:.1} s)",
                    state.step,
                    epoch + 1,
                    miou,
                    evaluation.confusion.pixel_accuracy(),
                    evaluation.mean_ce,
                    evaluation.images,
                    evaluation.seconds
                ));
                if state.best_miou.is_none_or(|best| miou > best) {
                    state.best_miou = Some(miou);
                    state.best_step = Some(state.step);
                    state.best_epoch = Some(epoch + 1);
                    checkpoint::save(run, "best", &*model, optimizer.as_ref(), &scheduler, &state)?;
                }
                report::write_eval_plots(run, &evaluation)?;
                report::write_run_plots(run)?;
                // Throughput counts training time only.
                window.0 += std::time::Duration::from_secs_f64(evaluation.seconds);
                last_eval_step = Some((state.step, evaluation));
            }
            if epoch_done || state.step == total {
                // `last` must stay a good checkpoint: never overwrite it with broken weights.
                if let Some(name) = non_finite_parameter(&*model)? {
                    progress.bar.abandon();
                    return Err(Error::invalid(
                        "train",
                        format!(
                            "the weights went non-finite at step {} (epoch {}: `{name}` holds NaN \
                             or Inf); stopped. The last good checkpoint is {}",
                            state.step,
                            epoch + 1,
                            checkpoint::checkpoints_dir(run).join("last").display()
                        ),
                    ));
                }
                state.finished = state.step == total;
                state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
                checkpoint::save(run, "last", &*model, optimizer.as_ref(), &scheduler, &state)?;
            }
            // The loader's epoch boundary: start the next epoch's iterator.
            if epoch_done {
                break;
            }
        }
    }
    progress.bar.finish_and_clear();
    report::write_run_plots(run)?;
    let final_eval = match last_eval_step {
        Some((_, evaluation)) => evaluation,
        None => evaluate(
            &*model,
            &val_loader,
            classes,
            inference,
            config.data.max_val_images,
        )?,
    };
    report::write_samples(run, &*model, val_set.as_ref(), config, &device)?;
    if !options.quiet {
        println!("{}", report::summary(run, config, &state, &final_eval));
    }
    Ok(Outcome::Finished)
}
