//! Training augmentations, applied per sample and deterministic from a `u64` seed: random scale
//! (bilinear for the image, nearest for the label), colour jitter (brightness, contrast,
//! saturation), ImageNet normalisation, random crop with padding (image 0 after normalisation,
//! i.e. the mean colour; label 255) and horizontal flip.

use super::{Sample, IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD};
use crate::error::{Error, Result};
use crate::tensor::Rng;

/// Which augmentations to apply.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentConfig {
    /// Scale factor range, drawn uniformly; `(1.0, 1.0)` keeps the size.
    pub scale: (f32, f32),
    /// Crop (H×W) after scaling, padding where the image is smaller.
    pub crop: Option<[usize; 2]>,
    /// Flip horizontally with probability 1/2.
    pub flip: bool,
    /// Brightness, contrast and saturation factors drawn in `[1 − j, 1 + j]`.
    pub color_jitter: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            scale: (0.5, 2.0),
            crop: None,
            flip: true,
            color_jitter: 0.0,
        }
    }
}

/// A sample ready for a batch: normalised planar image `[3, H, W]` and labels `[H, W]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    /// The sample id.
    pub id: String,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// `[3, H, W]` ImageNet-normalised RGB.
    pub image: Vec<f32>,
    /// `[H, W]` trainIds, 255 ignore.
    pub label: Vec<u8>,
}

impl Prepared {
    /// Converts a sample to planar `[0, 1]` RGB (not yet normalised) and labels (all 255 when
    /// the sample has none).
    fn from_sample(sample: &Sample) -> Result<Prepared> {
        let (w, h) = (
            sample.image.width() as usize,
            sample.image.height() as usize,
        );
        if h == 0 || w == 0 {
            return Err(Error::shape(
                "augment",
                format!("sample {}: empty image", sample.id),
            ));
        }
        let mut image = vec![0.0; 3 * h * w];
        for (i, px) in sample.image.pixels().enumerate() {
            for c in 0..3 {
                image[c * h * w + i] = px.0[c] as f32 / 255.0;
            }
        }
        let label = match &sample.label {
            Some(label) if label.len() == h * w => label.clone(),
            Some(label) => {
                return Err(Error::shape(
                    "augment",
                    format!(
                        "sample {}: {} labels for a {h}×{w} image",
                        sample.id,
                        label.len()
                    ),
                ))
            }
            None => vec![IGNORE_INDEX; h * w],
        };
        Ok(Prepared {
            id: sample.id.clone(),
            height: h,
            width: w,
            image,
            label,
        })
    }

    /// Resizes to `height × width`: bilinear image (half-pixel centres, as
    /// `align_corners=False`), nearest label.
    pub fn resize(&self, height: usize, width: usize) -> Prepared {
        if (height, width) == (self.height, self.width) {
            return self.clone();
        }
        let (h, w) = (self.height, self.width);
        let (sy, sx) = (h as f32 / height as f32, w as f32 / width as f32);
        // Source index and weight of each output column / row.
        let taps = |n_out: usize, n_in: usize, s: f32| -> Vec<(usize, usize, f32)> {
            (0..n_out)
                .map(|o| {
                    let f = ((o as f32 + 0.5) * s - 0.5).clamp(0.0, (n_in - 1) as f32);
                    let i0 = f.floor() as usize;
                    (i0, (i0 + 1).min(n_in - 1), f - i0 as f32)
                })
                .collect()
        };
        let (cols, rows) = (taps(width, w, sx), taps(height, h, sy));
        let mut image = vec![0.0; 3 * height * width];
        for c in 0..3 {
            let src = &self.image[c * h * w..(c + 1) * h * w];
            let dst = &mut image[c * height * width..(c + 1) * height * width];
            for (oy, &(y0, y1, fy)) in rows.iter().enumerate() {
                for (ox, &(x0, x1, fx)) in cols.iter().enumerate() {
                    let top = src[y0 * w + x0] * (1.0 - fx) + src[y0 * w + x1] * fx;
                    let bottom = src[y1 * w + x0] * (1.0 - fx) + src[y1 * w + x1] * fx;
                    dst[oy * width + ox] = top * (1.0 - fy) + bottom * fy;
                }
            }
        }
        let nearest =
            |o: usize, n_in: usize, s: f32| (((o as f32 + 0.5) * s) as usize).min(n_in - 1);
        let mut label = vec![IGNORE_INDEX; height * width];
        for oy in 0..height {
            let y = nearest(oy, h, sy);
            for ox in 0..width {
                label[oy * width + ox] = self.label[y * w + nearest(ox, w, sx)];
            }
        }
        Prepared {
            id: self.id.clone(),
            height,
            width,
            image,
            label,
        }
    }

    /// Mirrors left-right (twice is the identity).
    pub fn flip_horizontal(&mut self) {
        let w = self.width;
        if w == 0 {
            return;
        }
        for row in self.image.chunks_mut(w) {
            row.reverse();
        }
        for row in self.label.chunks_mut(w) {
            row.reverse();
        }
    }

    /// The `height × width` window at `(top, left)`, which may reach past the borders (negative
    /// offsets or past the end): outside pixels get image 0 and label 255.
    pub fn crop(&self, top: isize, left: isize, height: usize, width: usize) -> Prepared {
        let mut image = vec![0.0; 3 * height * width];
        let mut label = vec![IGNORE_INDEX; height * width];
        let (h, w) = (self.height as isize, self.width as isize);
        for oy in 0..height {
            let y = top + oy as isize;
            if y < 0 || y >= h {
                continue;
            }
            let x_start = (-left).clamp(0, width as isize) as usize;
            let x_end = (w - left).clamp(0, width as isize) as usize;
            if x_start >= x_end {
                continue;
            }
            let src = |x: usize| (y * w + left + x as isize) as usize;
            let (s0, s1) = (src(x_start), src(x_end - 1) + 1);
            label[oy * width + x_start..oy * width + x_end].copy_from_slice(&self.label[s0..s1]);
            for c in 0..3 {
                let plane = c * (h * w) as usize;
                let out = c * height * width + oy * width;
                image[out + x_start..out + x_end]
                    .copy_from_slice(&self.image[plane + s0..plane + s1]);
            }
        }
        Prepared {
            id: self.id.clone(),
            height,
            width,
            image,
            label,
        }
    }

    /// `(x − mean) / std` per channel.
    fn normalise(&mut self) {
        let plane = self.height * self.width;
        for (c, chunk) in self.image.chunks_mut(plane.max(1)).enumerate().take(3) {
            let (m, s) = (IMAGENET_MEAN[c], IMAGENET_STD[c]);
            chunk.iter_mut().for_each(|v| *v = (*v - m) / s);
        }
    }

    /// Brightness, contrast and saturation factors (torchvision's definitions, in that order).
    fn jitter(&mut self, brightness: f32, contrast: f32, saturation: f32) {
        let plane = self.height * self.width;
        if plane == 0 {
            return;
        }
        self.image
            .iter_mut()
            .for_each(|v| *v = (*v * brightness).clamp(0.0, 1.0));
        let gray = |img: &[f32], i: usize| {
            0.299 * img[i] + 0.587 * img[plane + i] + 0.114 * img[2 * plane + i]
        };
        let mean = (0..plane).map(|i| gray(&self.image, i)).sum::<f32>() / plane as f32;
        self.image
            .iter_mut()
            .for_each(|v| *v = (mean + (*v - mean) * contrast).clamp(0.0, 1.0));
        for i in 0..plane {
            let g = gray(&self.image, i);
            for c in 0..3 {
                let v = &mut self.image[c * plane + i];
                *v = (g + (*v - g) * saturation).clamp(0.0, 1.0);
            }
        }
    }
}

/// Prepares a sample without randomness: optional fixed resize, then normalisation.
pub fn prepare(sample: &Sample, resize: Option<[usize; 2]>) -> Result<Prepared> {
    let mut prepared = Prepared::from_sample(sample)?;
    if let Some([h, w]) = resize {
        check_size("resize", h, w)?;
        prepared = prepared.resize(h, w);
    }
    prepared.normalise();
    Ok(prepared)
}

/// Applies `config` to a sample (after an optional fixed resize), all random choices drawn
/// from `seed`: scale, jitter, normalise, crop, flip.
pub fn augment(
    sample: &Sample,
    config: &AugmentConfig,
    resize: Option<[usize; 2]>,
    seed: u64,
) -> Result<Prepared> {
    let (lo, hi) = config.scale;
    if !(lo > 0.0 && hi >= lo && hi.is_finite()) {
        return Err(Error::invalid(
            "augment",
            format!("scale range must satisfy 0 < min <= max, got ({lo}, {hi})"),
        ));
    }
    let mut rng = Rng::new(seed);
    let mut prepared = Prepared::from_sample(sample)?;
    if let Some([h, w]) = resize {
        check_size("resize", h, w)?;
        prepared = prepared.resize(h, w);
    }
    let scale = rng.uniform(lo, hi);
    let h = ((prepared.height as f32 * scale).round() as usize).max(1);
    let w = ((prepared.width as f32 * scale).round() as usize).max(1);
    prepared = prepared.resize(h, w);
    let j = config.color_jitter.clamp(0.0, 1.0);
    let mut factor = || rng.uniform(1.0 - j, 1.0 + j);
    let (b, c, s) = (factor(), factor(), factor());
    if j > 0.0 {
        prepared.jitter(b, c, s);
    }
    prepared.normalise();
    if let Some([ch, cw]) = config.crop {
        check_size("crop", ch, cw)?;
        // Offsets over the larger of image and crop: padding is split randomly.
        let top = rng.below(prepared.height.abs_diff(ch) + 1) as isize;
        let left = rng.below(prepared.width.abs_diff(cw) + 1) as isize;
        let top = if prepared.height >= ch { top } else { -top };
        let left = if prepared.width >= cw { left } else { -left };
        prepared = prepared.crop(top, left, ch, cw);
    }
    if config.flip && rng.next_f32() < 0.5 {
        prepared.flip_horizontal();
    }
    Ok(prepared)
}

fn check_size(what: &str, h: usize, w: usize) -> Result<()> {
    if h == 0 || w == 0 {
        return Err(Error::invalid(
            "augment",
            format!("{what} size must be positive, got {h}×{w}"),
        ));
    }
    Ok(())
}
