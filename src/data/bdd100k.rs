//! The BDD100K semantic-segmentation layout (`datasets.md`): `images/10k/<split>/*.jpg` with
//! `labels/sem_seg/masks/<split>/*.png` (trainIds), or the older `seg/images/<split>/*.jpg`
//! with `seg/labels/<split>/*_train_id.png`.

use super::files::{self, LabelEncoding, PairList};
use super::{Dataset, OpenOptions, Sample, Split};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// A BDD100K split read from disk, in sorted file order.
#[derive(Clone, Debug)]
pub struct Bdd100k {
    root: PathBuf,
    split: Split,
    list: PairList,
}

impl Bdd100k {
    /// Pairs every image of `split` under `root` with its mask; an image without one is an
    /// error (except on the test split, where it has `label: None`).
    pub fn open(root: &Path, split: Split) -> Result<Bdd100k> {
        Bdd100k::open_with(root, split, OpenOptions::default())
    }

    /// [`Bdd100k::open`] with options (e.g. skipping unlabelled images).
    pub fn open_with(root: &Path, split: Split, options: OpenOptions) -> Result<Bdd100k> {
        files::require_dir(root, "BDD100K root")?;
        let s = split.as_str();
        let (image_dir, label_dir, label_suffix) = if root.join("images").is_dir() {
            (
                root.join("images").join("10k").join(s),
                root.join("labels").join("sem_seg").join("masks").join(s),
                ".png",
            )
        } else if root.join("seg").is_dir() {
            (
                root.join("seg").join("images").join(s),
                root.join("seg").join("labels").join(s),
                "_train_id.png",
            )
        } else {
            return Err(Error::file(
                root,
                "not a BDD100K root: neither images/10k/<split>/ nor seg/images/<split>/ found",
            ));
        };
        files::require_dir(&image_dir, "BDD100K images")?;
        let labels_optional = split == Split::Test;
        if !labels_optional && !options.skip_unlabeled {
            files::require_dir(&label_dir, "BDD100K label masks")?;
        }
        let mut list = PairList::default();
        for (stem, image) in files::files_with_suffix(&image_dir, ".jpg")? {
            let candidates = [(
                label_dir.join(format!("{stem}{label_suffix}")),
                LabelEncoding::TrainIds,
            )];
            list.push(
                stem,
                image,
                &candidates,
                labels_optional,
                options.skip_unlabeled,
            )?;
        }
        list.require_some(&image_dir, "*.jpg")?;
        Ok(Bdd100k {
            root: root.to_path_buf(),
            split,
            list,
        })
    }

    /// Images skipped at open for lack of a label (with `skip_unlabeled`).
    pub fn skipped(&self) -> usize {
        self.list.skipped
    }
}

impl Dataset for Bdd100k {
    fn len(&self) -> usize {
        self.list.pairs.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        self.list.get(index, "BDD100K")
    }

    fn id(&self, index: usize) -> String {
        self.list
            .pairs
            .get(index)
            .map_or_else(String::new, |p| p.id.clone())
    }

    fn describe(&self) -> String {
        format!(
            "BDD100K {} ({} images, {} skipped) at {}",
            self.split,
            self.len(),
            self.skipped(),
            self.root.display()
        )
    }
}

/// Writes `dataset` as BDD100K `split` in the current layout: `images/10k/<split>/<id>.jpg`
/// (JPEG quality 95) and, for labelled samples, `labels/sem_seg/masks/<split>/<id>.png`.
pub fn write_bdd100k(dataset: &dyn Dataset, root: &Path, split: Split) -> Result<()> {
    let image_dir = root.join("images").join("10k").join(split.as_str());
    let label_dir = root
        .join("labels")
        .join("sem_seg")
        .join("masks")
        .join(split.as_str());
    files::create_dir(&image_dir)?;
    files::create_dir(&label_dir)?;
    (0..dataset.len()).into_par_iter().try_for_each(|index| {
        let sample = dataset.get(index)?;
        let stem = files::safe_stem(&sample.id);
        let image = image::DynamicImage::ImageRgb8(sample.image);
        let (w, h) = (image.width() as usize, image.height() as usize);
        files::write_encoded(
            &image,
            image::ImageFormat::Jpeg,
            &image_dir.join(format!("{stem}.jpg")),
        )?;
        if let Some(label) = sample.label {
            files::write_gray_png(&label, h, w, &label_dir.join(format!("{stem}.png")))?;
        }
        Ok(())
    })
}
