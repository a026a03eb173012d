//! Datasets: the Cityscapes and BDD100K on-disk readers, the built-in synthetic street-scene
//! generator, augmentations and the parallel batch loader (`../shared/spec/datasets.md`).
//!
//! - [`Dataset`]: indexable samples (an RGB image and its trainId labels).
//! - [`Cityscapes`], [`Bdd100k`]: the real on-disk formats; [`write_cityscapes`] and
//!   [`write_bdd100k`] write any dataset in those formats (test fixtures, exports).
//! - [`Synthetic`]: procedural street scenes with exact labels, deterministic from a seed.
//! - [`augment`]: random scale, crop, flip and colour jitter; [`Loader`]: batches prepared in
//!   parallel ahead of the consumer.
//! - [`palette`], [`pictures`]: class names and colours, label pictures and routing overlays.

pub mod augment;
pub mod bdd100k;
pub mod cityscapes;
mod files;
pub mod loader;
pub mod palette;
pub mod pictures;
mod raster;
pub mod subset;
pub mod synthetic;

pub use augment::{AugmentConfig, Prepared, Window};
pub use bdd100k::{write_bdd100k, Bdd100k};
pub use cityscapes::{write_cityscapes, Cityscapes};
pub use loader::{Batch, BatchIter, Loader, LoaderConfig};
pub use palette::{label_id_to_train_id, train_id_to_label_id, CITYSCAPES_PALETTE, CLASS_NAMES};
pub use subset::{ClassMap, RequireClasses, Subset};
pub use synthetic::{SceneKind, Synthetic, SyntheticConfig};

use crate::error::{Error, Result};
use rayon::prelude::*;
use std::fmt;
use std::str::FromStr;

/// The 19 Cityscapes evaluation classes (trainIds `0..19`).
pub const NUM_CLASSES: usize = 19;
/// The label of pixels that are not evaluated nor trained on.
pub const IGNORE_INDEX: u8 = 255;
/// ImageNet mean of RGB in `[0, 1]` (torchvision-pretrained backbones expect it).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation of RGB in `[0, 1]`.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// One image with its labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// A name unique within the dataset (the file stem for on-disk sets).
    pub id: String,
    /// The RGB image.
    pub image: image::RgbImage,
    /// trainIds (`0..19`, 255 ignore), row-major `H×W`; `None` where the split has no labels.
    pub label: Option<Vec<u8>>,
}

/// An indexable set of samples, shareable between the loader's threads.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether the set holds no sample.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Decodes (or generates) sample `index`; errors name the file involved.
    fn get(&self, index: usize) -> Result<Sample>;
    /// The id of sample `index` without decoding it.
    fn id(&self, index: usize) -> String;
    /// One line saying what the set is (format, root, split, size).
    fn describe(&self) -> String;
}

/// A dataset split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// Training images.
    Train,
    /// Validation images (the usual evaluation split).
    Val,
    /// Test images (labels usually not public).
    Test,
}

impl Split {
    /// The folder name: `train`, `val` or `test`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Split> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "val" | "validation" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            other => Err(Error::invalid(
                "split",
                format!("unknown split {other:?} (expected train, val or test)"),
            )),
        }
    }
}

/// Options of the on-disk readers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Skip images without a label file (counted, see `skipped()`) instead of failing. Test
    /// splits never need labels: their images without one get `label: None`.
    pub skip_unlabeled: bool,
}

/// ENet's class weights `w_c = 1 / ln(1.02 + p_c)`, `p_c` the share of labelled pixels of
/// class `c` (255 and ids `≥ classes` are not counted). With `max_samples`, at most that many
/// samples, evenly spaced over the set, are read. Errors if no labelled pixel is found.
pub fn enet_class_weights(
    dataset: &dyn Dataset,
    classes: usize,
    max_samples: Option<usize>,
) -> Result<Vec<f32>> {
    let len = dataset.len();
    let n = max_samples.map_or(len, |m| m.min(len));
    let counts = (0..n)
        .into_par_iter()
        .map(|i| {
            let index = if n == len { i } else { i * len / n };
            let sample = dataset.get(index)?;
            let mut counts = vec![0u64; classes];
            for &v in sample.label.iter().flatten() {
                if let Some(c) = counts.get_mut(v as usize) {
                    *c += 1;
                }
            }
            Ok(counts)
        })
        .try_reduce(
            || vec![0u64; classes],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                Ok(a)
            },
        )?;
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return Err(Error::invalid(
            "enet_class_weights",
            format!("no labelled pixel in {n} samples of {}", dataset.describe()),
        ));
    }
    Ok(counts
        .iter()
        .map(|&c| (1.0 / (1.02 + c as f64 / total as f64).ln()) as f32)
        .collect())
}
