//! What the on-disk readers share: a list of image/label file pairs, decoding with checks that
//! name the file, and the helpers of the writers.

use super::{label_id_to_train_id, palette::MAX_LABEL_ID, Sample, IGNORE_INDEX, NUM_CLASSES};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// How the values of a label PNG are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LabelEncoding {
    /// Cityscapes labelIds `0..=33` (255 for `-1`), mapped to trainIds on reading.
    CityscapesLabelIds,
    /// trainIds `0..19` and 255 as they are.
    TrainIds,
}

/// One image and, where there is one, its label file.
#[derive(Clone, Debug)]
pub(crate) struct Pair {
    pub id: String,
    pub image: PathBuf,
    pub label: Option<(PathBuf, LabelEncoding)>,
}

/// The sorted pairs of one split, with the count of images skipped for lack of a label.
#[derive(Clone, Debug, Default)]
pub(crate) struct PairList {
    pub pairs: Vec<Pair>,
    pub skipped: usize,
}

/// Errors unless `dir` is a folder, naming what it should hold.
pub(crate) fn require_dir(dir: &Path, what: &str) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(Error::file(dir, format!("missing folder ({what})")))
    }
}

/// The files of `dir` whose names end with `suffix`, sorted by name, as (stem, path) with the
/// suffix cut off the stem.
pub(crate) fn files_with_suffix(dir: &Path, suffix: &str) -> Result<Vec<(String, PathBuf)>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot list: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::file(dir, format!("cannot list: {e}")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(suffix) {
            if entry.path().is_file() {
                files.push((stem.to_string(), entry.path()));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The sub-folders of `dir`, sorted.
pub(crate) fn sub_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot list: {e}")))?;
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::file(dir, format!("cannot list: {e}")))?;
        if entry.path().is_dir() {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

impl PairList {
    /// Adds an image whose label candidates are tried in order; with none found, the image is
    /// kept unlabelled (`labels_optional`), skipped (`skip_unlabeled`) or an error.
    pub fn push(
        &mut self,
        id: String,
        image: PathBuf,
        candidates: &[(PathBuf, LabelEncoding)],
        labels_optional: bool,
        skip_unlabeled: bool,
    ) -> Result<()> {
        let label = candidates.iter().find(|(p, _)| p.is_file()).cloned();
        if label.is_none() && !labels_optional {
            if skip_unlabeled {
                self.skipped += 1;
                return Ok(());
            }
            let expected = candidates
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ");
            return Err(Error::file(
                &image,
                format!("image without label: expected {expected}"),
            ));
        }
        self.pairs.push(Pair { id, image, label });
        Ok(())
    }

    /// Errors when no image was found under `dir`.
    pub fn require_some(&self, dir: &Path, pattern: &str) -> Result<()> {
        if self.pairs.is_empty() {
            let skipped = match self.skipped {
                0 => String::new(),
                n => format!(" ({n} skipped for lack of a label)"),
            };
            return Err(Error::file(dir, format!("no {pattern} images{skipped}")));
        }
        Ok(())
    }

    /// Decodes pair `index` into a sample, checking the label's size and values.
    pub fn get(&self, index: usize, dataset: &str) -> Result<Sample> {
        let pair = self.pairs.get(index).ok_or_else(|| {
            Error::invalid(
                "dataset",
                format!(
                    "{dataset}: index {index} out of range for {} samples",
                    self.pairs.len()
                ),
            )
        })?;
        let image = read_image(&pair.image)?;
        let label = match &pair.label {
            None => None,
            Some((path, encoding)) => {
                let (w, h, values) = read_label(path, *encoding)?;
                if (w, h) != image.dimensions() {
                    return Err(Error::file(
                        path,
                        format!(
                            "label is {w}×{h} but its image {} is {}×{}",
                            pair.image.display(),
                            image.width(),
                            image.height()
                        ),
                    ));
                }
                Some(values)
            }
        };
        Ok(Sample {
            id: pair.id.clone(),
            image,
            label,
        })
    }
}

/// Decodes an image file to RGB.
pub(crate) fn read_image(path: &Path) -> Result<image::RgbImage> {
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::file(path, format!("cannot open image: {e}")))?
        .with_guessed_format()
        .map_err(|e| Error::file(path, format!("cannot read image: {e}")))?
        .decode()
        .map_err(|e| Error::file(path, format!("cannot decode image: {e}")))?;
    Ok(img.into_rgb8())
}

/// Decodes an 8-bit grayscale label PNG into (width, height, trainIds), checking every value.
pub(crate) fn read_label(path: &Path, encoding: LabelEncoding) -> Result<(u32, u32, Vec<u8>)> {
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::file(path, format!("cannot open label: {e}")))?
        .with_guessed_format()
        .map_err(|e| Error::file(path, format!("cannot read label: {e}")))?
        .decode()
        .map_err(|e| Error::file(path, format!("cannot decode label: {e}")))?;
    let gray = match img {
        image::DynamicImage::ImageLuma8(gray) => gray,
        other => {
            return Err(Error::file(
                path,
                format!(
                    "label must be an 8-bit grayscale PNG, found {:?}",
                    other.color()
                ),
            ))
        }
    };
    let (w, h) = gray.dimensions();
    let mut values = gray.into_raw();
    let (valid_max, kind) = match encoding {
        LabelEncoding::CityscapesLabelIds => (MAX_LABEL_ID, "Cityscapes labelIds are 0..=33"),
        LabelEncoding::TrainIds => (NUM_CLASSES as u8 - 1, "trainIds are 0..=18"),
    };
    if let Some(pos) = values
        .iter()
        .position(|&v| v > valid_max && v != IGNORE_INDEX)
    {
        return Err(Error::file(
            path,
            format!(
                "unknown label id {} at pixel (x={}, y={}) ({kind}, or 255)",
                values[pos],
                pos % w as usize,
                pos / w as usize
            ),
        ));
    }
    if encoding == LabelEncoding::CityscapesLabelIds {
        values
            .iter_mut()
            .for_each(|v| *v = label_id_to_train_id(*v));
    }
    Ok((w, h, values))
}

/// Creates `dir` and its parents.
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create: {e}")))
}

/// Writes an 8-bit grayscale PNG atomically.
pub(crate) fn write_gray_png(
    values: &[u8],
    height: usize,
    width: usize,
    path: &Path,
) -> Result<()> {
    if values.len() != height * width {
        return Err(Error::file(
            path,
            format!(
                "{} label values for a {height}×{width} picture",
                values.len()
            ),
        ));
    }
    let img = image::GrayImage::from_raw(width as u32, height as u32, values.to_vec())
        .ok_or_else(|| Error::file(path, "label buffer does not match its size"))?;
    write_encoded(
        &image::DynamicImage::ImageLuma8(img),
        image::ImageFormat::Png,
        path,
    )
}

/// Encodes `img` in memory (PNG, or JPEG at quality 95) and writes it atomically.
pub(crate) fn write_encoded(
    img: &image::DynamicImage,
    format: image::ImageFormat,
    path: &Path,
) -> Result<()> {
    let mut bytes = Vec::new();
    let encoded = match format {
        image::ImageFormat::Jpeg => img.write_with_encoder(
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95),
        ),
        _ => img.write_to(&mut std::io::Cursor::new(&mut bytes), format),
    };
    encoded.map_err(|e| Error::file(path, format!("cannot encode: {e}")))?;
    crate::io::safetensors::write_atomically(path, &bytes)
}

/// A file-name-safe version of a sample id.
pub(crate) fn safe_stem(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
