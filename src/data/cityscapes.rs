//! The Cityscapes fine-annotation layout (`datasets.md`): `leftImg8bit/<split>/<city>/
//! *_leftImg8bit.png` with `gtFine/<split>/<city>/*_gtFine_labelTrainIds.png` (preferred) or
//! `*_gtFine_labelIds.png` (mapped labelId → trainId).

use super::files::{self, LabelEncoding, PairList};
use super::{train_id_to_label_id, Dataset, OpenOptions, Sample, Split};
use crate::error::Result;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

const IMAGE_SUFFIX: &str = "_leftImg8bit.png";

/// A Cityscapes split read from disk, in sorted (city, file) order.
#[derive(Clone, Debug)]
pub struct Cityscapes {
    root: PathBuf,
    split: Split,
    list: PairList,
}

impl Cityscapes {
    /// Pairs every image of `split` under `root` with its label file; an image without one is
    /// an error (except on the test split, where it has `label: None`).
    pub fn open(root: &Path, split: Split) -> Result<Cityscapes> {
        Cityscapes::open_with(root, split, OpenOptions::default())
    }

    /// [`Cityscapes::open`] with options (e.g. skipping unlabelled images).
    pub fn open_with(root: &Path, split: Split, options: OpenOptions) -> Result<Cityscapes> {
        files::require_dir(root, "Cityscapes root")?;
        let image_dir = root.join("leftImg8bit").join(split.as_str());
        files::require_dir(&image_dir, "Cityscapes images: leftImg8bit/<split>/<city>/")?;
        let label_dir = root.join("gtFine").join(split.as_str());
        let labels_optional = split == Split::Test;
        if !labels_optional && !options.skip_unlabeled {
            files::require_dir(&label_dir, "Cityscapes labels: gtFine/<split>/<city>/")?;
        }
        let mut list = PairList::default();
        for city_dir in files::sub_dirs(&image_dir)? {
            let city = city_dir.file_name().unwrap_or_default();
            for (stem, image) in files::files_with_suffix(&city_dir, IMAGE_SUFFIX)? {
                let labels = label_dir.join(city);
                let candidates = [
                    (
                        labels.join(format!("{stem}_gtFine_labelTrainIds.png")),
                        LabelEncoding::TrainIds,
                    ),
                    (
                        labels.join(format!("{stem}_gtFine_labelIds.png")),
                        LabelEncoding::CityscapesLabelIds,
                    ),
                ];
                list.push(
                    stem,
                    image,
                    &candidates,
                    labels_optional,
                    options.skip_unlabeled,
                )?;
            }
        }
        list.require_some(&image_dir, &format!("<city>/*{IMAGE_SUFFIX}"))?;
        Ok(Cityscapes {
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

impl Dataset for Cityscapes {
    fn len(&self) -> usize {
        self.list.pairs.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        self.list.get(index, "Cityscapes")
    }

    fn id(&self, index: usize) -> String {
        self.list
            .pairs
            .get(index)
            .map_or_else(String::new, |p| p.id.clone())
    }

    fn describe(&self) -> String {
        format!(
            "Cityscapes {} ({} images, {} skipped) at {}",
            self.split,
            self.len(),
            self.skipped(),
            self.root.display()
        )
    }
}

/// Writes `dataset` as Cityscapes `split` of one city: `<city>_<index:06>_000019_leftImg8bit.png`
/// and, for labelled samples, `_gtFine_labelIds.png` in labelIds (trainId → labelId, 255 → 0).
pub fn write_cityscapes(
    dataset: &dyn Dataset,
    root: &Path,
    split: Split,
    city: &str,
) -> Result<()> {
    let city = files::safe_stem(city);
    let image_dir = root.join("leftImg8bit").join(split.as_str()).join(&city);
    let label_dir = root.join("gtFine").join(split.as_str()).join(&city);
    files::create_dir(&image_dir)?;
    files::create_dir(&label_dir)?;
    (0..dataset.len()).into_par_iter().try_for_each(|index| {
        let sample = dataset.get(index)?;
        let stem = format!("{city}_{index:06}_000019");
        let image = image::DynamicImage::ImageRgb8(sample.image);
        let (w, h) = (image.width() as usize, image.height() as usize);
        files::write_encoded(
            &image,
            image::ImageFormat::Png,
            &image_dir.join(format!("{stem}{IMAGE_SUFFIX}")),
        )?;
        if let Some(label) = sample.label {
            let ids: Vec<u8> = label.iter().map(|&t| train_id_to_label_id(t)).collect();
            files::write_gray_png(
                &ids,
                h,
                w,
                &label_dir.join(format!("{stem}_gtFine_labelIds.png")),
            )?;
        }
        Ok(())
    })
}
