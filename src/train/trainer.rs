//! The training loop: the network (with its PatchConvMoE layers) trained on
//! `CE(main) + Σ aux weight·CE(aux) + Σ MoE balancing losses` (ignore 255, optional class
//! weights), evaluated on the validation split, checkpointed and logged into a run folder.
//!
//! Exact resume: the model is built from the seed, the loader's order and augmentation are
//! fixed by (seed, epoch), and before every step the default generator (dropout, noisy
//! top-k) is reseeded from (seed, step). So the state at a step boundary is just the weights,
//! the optimizer and scheduler state (saved bit-exactly) and the position (`state.json`), and a
//! run resumed from any checkpoint logs the same losses as one that never stopped.

use crate::backend::Device;
use crate::data::{Batch, Dataset, Loader};
use crate::error::{Error, Result};
use crate::models::SegNet;
use crate::nn::{named_parameters, parameter_count, set_training, to_device, Module};
use crate::optim::{LrScheduler, Optimizer};
use crate::tensor::{manual_seed, Tensor};
use crate::train::checkpoint::{self, LossSums, TrainState};
use crate::train::config::Config;
use crate::train::evaluate::{evaluate, Evaluation, Inference};
use crate::train::report;
use crate::train::run_dir::{self, LayerRoutingMetrics, MetricRecord, MetricsLog};
use crate::train::setup;
use crate::train::tensorboard::EventWriter;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
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
    /// Dynamic networks: the budget loss (0 while off) and the batch's expected / real MFLOPs.
    dynamic: Option<(f64, f64, f64)>,
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
        dynamic: None,
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
        routing: (!evaluation.routing.is_empty()).then(|| {
            evaluation
                .routing
                .iter()
                .map(|(path, stats)| {
                    let figures = LayerRoutingMetrics {
                        nre: stats.nre(),
                        tec: stats.tec(),
                    };
                    (path.clone(), figures)
                })
                .collect()
        }),
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

/// Everything a run holds between steps: built by [`Trainer::setup`], advanced by
/// [`Trainer::step`], logged by [`Trainer::log_step`], evaluated by [`Trainer::evaluate`],
/// saved by [`Trainer::checkpoint`].
struct Trainer<'a> {
    config: &'a Config,
    options: &'a TrainOptions,
    device: Device,
    model: Box<dyn SegNet>,
    val_set: Arc<dyn Dataset>,
    loader: Loader,
    val_loader: Loader,
    per_epoch: usize,
    total: u64,
    class_weights: Option<Tensor>,
    inference: Inference,
    /// The budget constraint of a dynamic routing network.
    budget: Option<crate::models::dynamic::BudgetConfig>,
    optimizer: Box<dyn Optimizer>,
    scheduler: LrScheduler,
    state: TrainState,
    log: RunLog,
    progress: Progress,
    started: Instant,
    elapsed_before: f64,
    /// Images and time since the last step record, for the throughput.
    window: (Instant, usize),
    last_eval: Option<Evaluation>,
}

/// `metrics.jsonl` and the TensorBoard event file of a run: every record goes to both.
struct RunLog {
    metrics: MetricsLog,
    events: EventWriter,
    class_names: Vec<String>,
}

impl RunLog {
    fn append(&mut self, record: &MetricRecord) -> Result<()> {
        self.metrics.append(record)?;
        self.events.record(record, &self.class_names)
    }
}

/// What one training step gave.
struct StepResult {
    parts: LossParts,
    loss: f64,
    lr: f64,
    epoch: usize,
}

impl<'a> Trainer<'a> {
    /// Device, network, data, loss weights, optimizer and schedule; the run folder created (or
    /// the `last` checkpoint loaded when resuming) and the logs opened.
    fn setup(config: &'a Config, options: &'a TrainOptions) -> Result<Trainer<'a>> {
        let run = options.run_dir.as_path();
        let (device, note) = setup::resolve_device(&config.train.device)?;
        if let Some(note) = note {
            say(options, &note);
        }
        let classes = config.model.num_classes;
        setup::check_class_map(config)?;
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
        let budget = crate::train::dynamic_step::run_budget(config, &*model)?;
        let mut optimizer =
            setup::build_optimizer(&config.optim, named_parameters(&*model as &dyn Module))?;
        let mut scheduler = LrScheduler::new(
            setup::build_schedule(&config.optim, total)?,
            optimizer.as_mut(),
        )?;
        let state = if options.resume {
            resume_state(
                run,
                &*model,
                optimizer.as_mut(),
                &mut scheduler,
                total,
                options,
            )?
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
        let log = RunLog {
            metrics: MetricsLog::open(run, options.resume.then_some(state.step))?,
            events: EventWriter::create(run)?,
            class_names: report::class_names(classes),
        };
        say(
            options,
            &format!(
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
            ),
        );
        let progress = Progress::new(total, state.step, options.quiet);
        let elapsed_before = state.elapsed_s;
        Ok(Trainer {
            config,
            options,
            device,
            model,
            val_set,
            loader,
            val_loader,
            per_epoch,
            total,
            class_weights,
            inference,
            budget,
            optimizer,
            scheduler,
            state,
            log,
            progress,
            started: Instant::now(),
            elapsed_before,
            window: (Instant::now(), 0),
            last_eval: None,
        })
    }

    fn run(&self) -> &Path {
        self.options.run_dir.as_path()
    }

    fn update_elapsed(&mut self) {
        self.state.elapsed_s = self.elapsed_before + self.started.elapsed().as_secs_f64();
    }

    /// Saves the checkpoint `name` (`last` or `best`) of the current state.
    fn checkpoint(&self, name: &str) -> Result<()> {
        checkpoint::save(
            self.run(),
            name,
            &*self.model,
            self.optimizer.as_ref(),
            &self.scheduler,
            &self.state,
        )
    }

    /// The loop over epochs and their batches, until every step is done or a stop is asked.
    fn train_loop(&mut self) -> Result<Outcome> {
        while self.state.step < self.total {
            let epoch = self.state.epoch;
            let mut batches = self.loader.epoch_from(epoch, self.state.batch_in_epoch);
            while self.state.step < self.total && self.state.batch_in_epoch < self.per_epoch {
                if self.options.interrupt.load(Ordering::SeqCst)
                    || self.options.stop_at.is_some_and(|at| self.state.step >= at)
                {
                    self.update_elapsed();
                    self.checkpoint("last")?;
                    self.progress.bar.abandon();
                    return Ok(Outcome::Interrupted {
                        step: self.state.step,
                    });
                }
                let batch = batches.next().ok_or_else(|| {
                    Error::invalid(
                        "train",
                        format!(
                            "the loader ended epoch {epoch} after {} batches",
                            self.state.batch_in_epoch
                        ),
                    )
                })??;
                let result = self.step(&batch)?;
                self.log_step(&result)?;
                if self.end_of_step(&result)? {
                    // The loader's epoch boundary: start the next epoch's iterator.
                    break;
                }
            }
        }
        Ok(Outcome::Finished)
    }

    /// One optimizer step on `batch`; a non-finite loss stops the run.
    fn step(&mut self, batch: &Batch) -> Result<StepResult> {
        let epoch = self.state.epoch;
        manual_seed(step_seed(self.config.train.seed, self.state.step));
        set_training(&*self.model as &dyn Module, true);
        let lr = self.optimizer.lrs().first().copied().unwrap_or(0.0);
        // The loader makes batches on the host.
        let mut parts = training_loss(
            &*self.model,
            &batch.images.to_device(&self.device)?,
            &batch.labels.to_device(&self.device)?,
            self.class_weights.as_ref(),
        )?;
        if let Some(budget) = &self.budget {
            let step_rate = self.state.step as f64 / self.total.max(1) as f64;
            let term = crate::train::dynamic_step::budget_term(&*self.model, budget, step_rate)?;
            if let Some(term) = term {
                let mut value = 0.0;
                if let Some(loss) = &term.loss {
                    value = loss.item()? as f64;
                    parts.total = parts.total.add(loss)?;
                }
                parts.dynamic = Some((value, term.expected_mflops, term.real_mflops));
            }
        }
        let loss = parts.total.item()? as f64;
        if !loss.is_finite() {
            self.progress.bar.abandon();
            return Err(Error::invalid(
                "train",
                format!(
                    "the loss is {loss} at step {} (epoch {}; main {}, aux {}, balance {}); \
                     stopped. The last good checkpoint is {}",
                    self.state.step + 1,
                    epoch + 1,
                    parts.main,
                    parts.aux,
                    parts.balance,
                    checkpoint::checkpoints_dir(self.run())
                        .join("last")
                        .display()
                ),
            ));
        }
        self.optimizer.zero_grad();
        parts.total.backward()?;
        if self.config.optim.clip_grad_norm > 0.0 {
            let params = named_parameters(&*self.model as &dyn Module);
            crate::optim::clip_grad_norm(&params, self.config.optim.clip_grad_norm)?;
        }
        self.optimizer.step()?;
        self.scheduler.step(self.optimizer.as_mut())?;
        self.state.step += 1;
        self.state.batch_in_epoch += 1;
        self.state.epoch_losses.add(&parts, loss);
        self.window.1 += batch.images.dims()[0];
        Ok(StepResult {
            parts,
            loss,
            lr,
            epoch,
        })
    }

    /// The progress display, and every `log_interval` steps a `step` record.
    fn log_step(&mut self, result: &StepResult) -> Result<()> {
        let (loss, lr) = (result.loss, result.lr);
        self.progress.bar.inc(1);
        self.progress
            .bar
            .set_message(format!("loss {loss:.4} lr {lr:.2e}"));
        let log_interval = self.config.train.log_interval.max(1) as u64;
        let step = self.state.step;
        if step.is_multiple_of(log_interval) || step == self.total {
            let images_per_s =
                self.window.1 as f64 / self.window.0.elapsed().as_secs_f64().max(1e-9);
            self.log.append(&MetricRecord {
                kind: "step".into(),
                step,
                epoch: result.epoch + 1,
                loss: Some(loss),
                main_loss: Some(result.parts.main),
                aux_loss: Some(result.parts.aux),
                balance_loss: Some(result.parts.balance),
                budget_loss: result.parts.dynamic.map(|d| d.0),
                expected_gflops: result.parts.dynamic.map(|d| d.1 / 1e3),
                real_gflops: result.parts.dynamic.map(|d| d.2 / 1e3),
                lr: Some(lr),
                images_per_s: Some(images_per_s),
                ..MetricRecord::default()
            })?;
            if self.progress.lines {
                self.progress.println(&format!(
                    "step {step}/{}  epoch {}  loss {loss:.4}  lr {lr:.3e}  {images_per_s:.1} img/s",
                    self.total,
                    result.epoch + 1,
                ));
            }
            self.window = (Instant::now(), 0);
        }
        Ok(())
    }

    /// Epoch bookkeeping, evaluation and checkpoints after a step; true at an epoch boundary.
    fn end_of_step(&mut self, result: &StepResult) -> Result<bool> {
        let epoch = result.epoch;
        self.update_elapsed();
        let last_step = self.state.step == self.total;
        let epoch_done = self.state.batch_in_epoch == self.per_epoch;
        if epoch_done || last_step {
            let record = self.state.epoch_losses.record(self.state.step, epoch + 1);
            self.log.append(&record)?;
        }
        if epoch_done {
            self.state.epoch += 1;
            self.state.batch_in_epoch = 0;
            self.state.epoch_losses = LossSums::default();
        }
        let eval_now = last_step
            || (epoch_done
                && self
                    .state
                    .epoch
                    .is_multiple_of(self.config.train.eval_interval.max(1)));
        if eval_now {
            self.evaluate(epoch)?;
        }
        if epoch_done || last_step {
            self.check_finite(epoch)?;
            self.state.finished = last_step;
            self.update_elapsed();
            self.checkpoint("last")?;
        }
        Ok(epoch_done)
    }

    /// Evaluates on the validation split: the `eval` record, `best` when it improved, plots.
    fn evaluate(&mut self, epoch: usize) -> Result<()> {
        let evaluation = evaluate(
            &*self.model,
            &self.val_loader,
            self.config.model.num_classes,
            self.inference,
            self.config.data.max_val_images,
        )?;
        let miou = evaluation.confusion.miou();
        self.log
            .append(&eval_record(&evaluation, self.state.step, epoch + 1))?;
        self.progress.println(&format!(
            "eval at step {} (epoch {}): mIoU {:.4}, pixel accuracy {:.4}, val CE {:.4} ({} images, {:.1} s)",
            self.state.step,
            epoch + 1,
            miou,
            evaluation.confusion.pixel_accuracy(),
            evaluation.mean_ce,
            evaluation.images,
            evaluation.seconds
        ));
        if self.state.best_miou.is_none_or(|best| miou > best) {
            self.state.best_miou = Some(miou);
            self.state.best_step = Some(self.state.step);
            self.state.best_epoch = Some(epoch + 1);
            self.checkpoint("best")?;
        }
        report::write_eval_plots(self.run(), &evaluation)?;
        report::write_run_plots(self.run())?;
        // Throughput counts training time only.
        self.window.0 += std::time::Duration::from_secs_f64(evaluation.seconds);
        self.last_eval = Some(evaluation);
        Ok(())
    }

    /// `last` must stay a good checkpoint: never overwrite it with broken weights.
    fn check_finite(&self, epoch: usize) -> Result<()> {
        if let Some(name) = non_finite_parameter(&*self.model)? {
            self.progress.bar.abandon();
            return Err(Error::invalid(
                "train",
                format!(
                    "the weights went non-finite at step {} (epoch {}: `{name}` holds NaN \
                     or Inf); stopped. The last good checkpoint is {}",
                    self.state.step,
                    epoch + 1,
                    checkpoint::checkpoints_dir(self.run())
                        .join("last")
                        .display()
                ),
            ));
        }
        Ok(())
    }

    /// Plots, sample pictures (also into the event file) and the summary of a finished run.
    fn finish(&mut self) -> Result<()> {
        self.progress.bar.finish_and_clear();
        report::write_run_plots(self.run())?;
        let final_eval = match self.last_eval.take() {
            Some(evaluation) => evaluation,
            None => evaluate(
                &*self.model,
                &self.val_loader,
                self.config.model.num_classes,
                self.inference,
                self.config.data.max_val_images,
            )?,
        };
        let samples = report::write_samples(
            self.run(),
            &*self.model,
            self.val_set.as_ref(),
            self.config,
            &self.device,
        )?;
        for (tag, picture) in &samples {
            self.log.events.image(self.state.step, tag, picture)?;
        }
        if !self.options.quiet {
            println!(
                "{}",
                report::summary(self.run(), self.config, &self.state, &final_eval)
            );
        }
        Ok(())
    }
}

fn say(options: &TrainOptions, line: &str) {
    if !options.quiet {
        println!("{line}");
    }
}

/// Loads the `last` checkpoint of `run` into the model, optimizer and scheduler; its state.
fn resume_state(
    run: &Path,
    model: &dyn SegNet,
    optimizer: &mut dyn Optimizer,
    scheduler: &mut LrScheduler,
    total: u64,
    options: &TrainOptions,
) -> Result<TrainState> {
    let last = checkpoint::find(run, "last")?;
    checkpoint::load_model(&last, model as &dyn Module)?;
    checkpoint::load_optimizer(&last, optimizer, scheduler)?;
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
    say(
        options,
        &format!("resuming {} at step {}/{total}", run.display(), state.step),
    );
    Ok(state)
}

/// Trains the run described by `config` into `options.run_dir` (or continues it).
pub fn train(config: &Config, options: &TrainOptions) -> Result<Outcome> {
    let mut trainer = Trainer::setup(config, options)?;
    let outcome = trainer.train_loop()?;
    if outcome == Outcome::Finished {
        trainer.finish()?;
    }
    Ok(outcome)
}
