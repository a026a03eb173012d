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
        self.resample([height, width], Window::whole(height, width))
    }

    /// The `window` of this sample resized to `scaled` (H×W), computed directly (only the
    /// window's pixels are interpolated). Window pixels outside the scaled picture are padding:
    /// image 0, label 255.
    pub fn resample(&self, scaled: [usize; 2], window: Window) -> Prepared {
        let (h, w) = (self.height, self.width);
        let [sh, sw] = scaled;
        let (sy, sx) = (h as f32 / sh as f32, w as f32 / sw as f32);
        let inside = window.inside(scaled);
        // Source taps of each window row / column inside the picture: (i0, i1, weight, nearest).
        let taps = |range: std::ops::Range<usize>, offset: isize, n_in: usize, s: f32| {
            range
                .map(|o| {
                    let pos = (o as isize + offset) as f32 + 0.5;
                    let f = (pos * s - 0.5).clamp(0.0, (n_in - 1) as f32);
                    let i0 = f.floor() as usize;
                    let nearest = ((pos * s) as usize).min(n_in - 1);
                    (i0, (i0 + 1).min(n_in - 1), f - i0 as f32, nearest)
                })
                .collect::<Vec<_>>()
        };
        let rows = taps(inside.rows.clone(), window.top, h, sy);
        let cols = taps(inside.cols.clone(), window.left, w, sx);
        let (oh, ow) = (window.height, window.width);
        let mut image = vec![0.0; 3 * oh * ow];
        let mut label = vec![IGNORE_INDEX; oh * ow];
        for c in 0..3 {
            let src = &self.image[c * h * w..(c + 1) * h * w];
            let dst = &mut image[c * oh * ow..(c + 1) * oh * ow];
            for (oy, &(y0, y1, fy, _)) in inside.rows.clone().zip(&rows) {
                for (ox, &(x0, x1, fx, _)) in inside.cols.clone().zip(&cols) {
                    let top = src[y0 * w + x0] * (1.0 - fx) + src[y0 * w + x1] * fx;
                    let bottom = src[y1 * w + x0] * (1.0 - fx) + src[y1 * w + x1] * fx;
                    dst[oy * ow + ox] = top * (1.0 - fy) + bottom * fy;
                }
            }
        }
        for (oy, &(_, _, _, y)) in inside.rows.clone().zip(&rows) {
            for (ox, &(_, _, _, x)) in inside.cols.clone().zip(&cols) {
                label[oy * ow + ox] = self.label[y * w + x];
            }
        }
        Prepared {
            id: self.id.clone(),
            height: oh,
            width: ow,
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

    /// `(x − mean) / std` per channel, on the pixels of `region` only (padding stays 0).
    fn normalise(&mut self, region: &Region) {
        let plane = self.height * self.width;
        for c in 0..3 {
            let (m, s) = (IMAGENET_MEAN[c], IMAGENET_STD[c]);
            region.for_each(self.width, |i| {
                let v = &mut self.image[c * plane + i];
                *v = (*v - m) / s;
            });
        }
    }

    /// Brightness, contrast and saturation factors (torchvision's definitions, in that order),
    /// on the pixels of `region` only.
    fn jitter(&mut self, brightness: f32, contrast: f32, saturation: f32, region: &Region) {
        let (plane, width) = (self.height * self.width, self.width);
        let count = region.rows.len() * region.cols.len();
        if count == 0 {
            return;
        }
        let image = &mut self.image;
        let gray = |img: &[f32], i: usize| {
            0.299 * img[i] + 0.587 * img[plane + i] + 0.114 * img[2 * plane + i]
        };
        let pixel = |image: &mut [f32], i: usize, f: &dyn Fn(f32) -> f32| {
            for c in 0..3 {
                let v = &mut image[c * plane + i];
                *v = f(*v).clamp(0.0, 1.0);
            }
        };
        region.for_each(width, |i| pixel(image, i, &|v| v * brightness));
        let mut sum = 0.0;
        region.for_each(width, |i| sum += gray(image, i));
        let mean = sum / count as f32;
        region.for_each(width, |i| {
            pixel(image, i, &|v| mean + (v - mean) * contrast)
        });
        region.for_each(width, |i| {
            let g = gray(image, i);
            pixel(image, i, &|v| g + (v - g) * saturation);
        });
    }
}

/// A window of a (scaled) picture: top-left corner (may be negative: padding) and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First row, in scaled-picture coordinates.
    pub top: isize,
    /// First column.
    pub left: isize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl Window {
    /// The whole `height × width` picture.
    pub fn whole(height: usize, width: usize) -> Window {
        Window {
            top: 0,
            left: 0,
            height,
            width,
        }
    }

    /// The window pixels that fall inside a `scaled` picture, in window coordinates.
    fn inside(&self, scaled: [usize; 2]) -> Region {
        let span = |start: isize, len: usize, n: usize| {
            let a = (-start).clamp(0, len as isize) as usize;
            let b = (n as isize - start).clamp(0, len as isize) as usize;
            a..b.max(a)
        };
        Region {
            rows: span(self.top, self.height, scaled[0]),
            cols: span(self.left, self.width, scaled[1]),
        }
    }
}

/// Rows × columns of a picture that hold real pixels (the rest is padding).
#[derive(Clone, Debug)]
struct Region {
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
}

impl Region {
    /// Calls `f(index)` for each pixel of the region in a picture `width` wide.
    fn for_each(&self, width: usize, mut f: impl FnMut(usize)) {
        for y in self.rows.clone() {
            for x in self.cols.clone() {
                f(y * width + x);
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
    let whole = Window::whole(prepared.height, prepared.width);
    prepared.normalise(&whole.inside([prepared.height, prepared.width]));
    Ok(prepared)
}

/// Applies `config` to a sample (after an optional fixed resize), all random choices drawn
/// from `seed`: scale, crop window (padding where the crop is larger), jitter, normalise,
/// flip. Only the crop window is resampled, so large scales of large images stay cheap.
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
    let j = config.color_jitter.clamp(0.0, 1.0);
    let mut factor = || rng.uniform(1.0 - j, 1.0 + j);
    let (b, c, s) = (factor(), factor(), factor());
    let window = match config.crop {
        None => Window::whole(h, w),
        Some([ch, cw]) => {
            check_size("crop", ch, cw)?;
            // Offsets over the larger of picture and crop: padding is placed at random.
            let offset = |n: usize, size: usize, rng: &mut Rng| {
                let o = rng.below(n.abs_diff(size) + 1) as isize;
                if n >= size {
                    o
                } else {
                    -o
                }
            };
            let top = offset(h, ch, &mut rng);
            let left = offset(w, cw, &mut rng);
            Window {
                top,
                left,
                height: ch,
                width: cw,
            }
        }
    };
    prepared = prepared.resample([h, w], window);
    let region = window.inside([h, w]);
    if j > 0.0 {
        prepared.jitter(b, c, s, &region);
    }
    prepared.normalise(&region);
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
