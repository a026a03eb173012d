//! The batch loader: shuffles with a seed per epoch, decodes and augments each batch in
//! parallel (rayon) on a background thread, `prefetch` batches ahead of the consumer.
//!
//! Everything random is a function of `(seed, epoch, sample index)`, never of thread timing:
//! two loaders with the same configuration yield identical batches in the same order.

use super::augment::{self, AugmentConfig, Prepared};
use super::Dataset;
use crate::error::{Error, Result};
use crate::tensor::{Rng, Tensor};
use rayon::prelude::*;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

/// How batches are formed.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Shuffle the order each epoch (from `seed` and the epoch).
    pub shuffle: bool,
    /// Drop the last, incomplete batch.
    pub drop_last: bool,
    /// Training augmentations; `None` for evaluation.
    pub augment: Option<AugmentConfig>,
    /// A fixed size (H×W) every sample is resized to first (bilinear image, nearest label).
    pub resize: Option<[usize; 2]>,
    /// Seed of the order and of the augmentations.
    pub seed: u64,
    /// Batches prepared ahead on the background thread; 0 prepares each batch on demand.
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 8,
            shuffle: false,
            drop_last: false,
            augment: None,
            resize: None,
            seed: 0,
            prefetch: 2,
        }
    }
}

/// One batch.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[B, 3, H, W]` ImageNet-normalised RGB.
    pub images: Tensor,
    /// `[B, H, W]` trainIds as f32, 255 ignore.
    pub labels: Tensor,
    /// The sample ids, in batch order.
    pub ids: Vec<String>,
    /// Dataset indices of the samples, in batch order.
    pub indices: Vec<usize>,
}

/// Batches of a dataset, see the module doc.
#[derive(Clone)]
pub struct Loader {
    dataset: Arc<dyn Dataset>,
    config: LoaderConfig,
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Loader {
    /// A loader over `dataset`; errors on a zero batch size or an empty dataset.
    pub fn new(dataset: Arc<dyn Dataset>, config: LoaderConfig) -> Result<Loader> {
        if config.batch_size == 0 {
            return Err(Error::invalid("loader", "batch_size must be at least 1"));
        }
        if dataset.is_empty() {
            return Err(Error::invalid(
                "loader",
                format!("empty dataset: {}", dataset.describe()),
            ));
        }
        Ok(Loader {
            dataset,
            config,
            pool: None,
        })
    }

    /// Runs the per-batch parallel work in `pool` instead of rayon's global pool.
    pub fn with_thread_pool(mut self, pool: Arc<rayon::ThreadPool>) -> Loader {
        self.pool = Some(pool);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The sample order of `epoch` (a seeded Fisher–Yates shuffle, or `0..len`).
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.config.shuffle {
            let mut rng = Rng::new(mix(self.config.seed, epoch as u64, u64::MAX));
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
        }
        order
    }

    /// The batches of `epoch`.
    pub fn epoch(&self, epoch: usize) -> BatchIter {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `start_batch` on (to resume mid-epoch): the same
    /// batches as [`Loader::epoch`] would yield from there.
    pub fn epoch_from(&self, epoch: usize, start_batch: usize) -> BatchIter {
        let order = self.order(epoch);
        let b = self.config.batch_size;
        let plans: Vec<Vec<usize>> = order
            .chunks(b)
            .take(self.batches_per_epoch())
            .skip(start_batch)
            .map(<[usize]>::to_vec)
            .collect();
        let remaining = plans.len();
        let work = BatchWork {
            dataset: self.dataset.clone(),
            config: self.config.clone(),
            pool: self.pool.clone(),
            epoch,
        };
        if self.config.prefetch == 0 {
            return BatchIter {
                source: Source::Inline {
                    work,
                    plans: plans.into_iter(),
                },
                remaining,
            };
        }
        let (sender, receiver) = sync_channel(self.config.prefetch);
        std::thread::spawn(move || {
            for plan in plans {
                let batch = work.build(&plan);
                let failed = batch.is_err();
                if sender.send(batch).is_err() || failed {
                    break; // consumer gone, or the epoch ends at the error
                }
            }
        });
        BatchIter {
            source: Source::Background(receiver),
            remaining,
        }
    }
}

/// Mixes the seed, epoch and sample index into one seed.
fn mix(seed: u64, epoch: u64, index: u64) -> u64 {
    let mut rng = Rng::new(seed ^ epoch.wrapping_mul(0xA076_1D64_78BD_642F));
    rng.next_u64() ^ index.wrapping_mul(0xE703_7ED1_A0B4_28DB)
}

/// What a batch is made from; moved to the background thread.
struct BatchWork {
    dataset: Arc<dyn Dataset>,
    config: LoaderConfig,
    pool: Option<Arc<rayon::ThreadPool>>,
    epoch: usize,
}

impl BatchWork {
    /// Decodes and prepares the samples of `plan` in parallel and stacks them.
    fn build(&self, plan: &[usize]) -> Result<Batch> {
        let prepare_all = || -> Result<Vec<Prepared>> {
            plan.par_iter()
                .map(|&index| {
                    let sample = self.dataset.get(index)?;
                    match &self.config.augment {
                        Some(aug) => {
                            let seed = mix(self.config.seed, self.epoch as u64, index as u64);
                            augment::augment(&sample, aug, self.config.resize, seed)
                        }
                        None => augment::prepare(&sample, self.config.resize),
                    }
                })
                .collect()
        };
        let prepared = match &self.pool {
            Some(pool) => pool.install(prepare_all)?,
            None => prepare_all()?,
        };
        stack(&prepared, plan)
    }
}

/// Stacks same-size samples into a batch; different sizes are an error naming them.
fn stack(prepared: &[Prepared], indices: &[usize]) -> Result<Batch> {
    let first = prepared
        .first()
        .ok_or_else(|| Error::invalid("loader", "empty batch"))?;
    let (h, w) = (first.height, first.width);
    if let Some(other) = prepared.iter().find(|p| (p.height, p.width) != (h, w)) {
        return Err(Error::shape(
            "loader",
            format!(
                "samples of different sizes in one batch: {} is {h}×{w} but {} is {}×{} \
                 (set a crop or a resize)",
                first.id, other.id, other.height, other.width
            ),
        ));
    }
    let b = prepared.len();
    let mut images = Vec::with_capacity(b * 3 * h * w);
    let mut labels = Vec::with_capacity(b * h * w);
    for p in prepared {
        images.extend_from_slice(&p.image);
        labels.extend(p.label.iter().map(|&v| v as f32));
    }
    Ok(Batch {
        images: Tensor::from_vec(images, [b, 3, h, w])?,
        labels: Tensor::from_vec(labels, [b, h, w])?,
        ids: prepared.iter().map(|p| p.id.clone()).collect(),
        indices: indices.to_vec(),
    })
}

enum Source {
    Inline {
        work: BatchWork,
        plans: std::vec::IntoIter<Vec<usize>>,
    },
    Background(Receiver<Result<Batch>>),
}

/// The batches of one epoch, in order; after an error, the iteration ends.
pub struct BatchIter {
    source: Source,
    remaining: usize,
}

impl Iterator for BatchIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.remaining == 0 {
            return None;
        }
        let batch = match &mut self.source {
            Source::Inline { work, plans } => work.build(&plans.next()?),
            Source::Background(receiver) => match receiver.recv() {
                Ok(batch) => batch,
                Err(_) => Err(Error::invalid(
                    "loader",
                    "the background loader thread stopped unexpectedly",
                )),
            },
        };
        self.remaining = if batch.is_err() {
            0
        } else {
            self.remaining - 1
        };
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}
