//! Pictures for people: colourised label maps, blends, routing overlays (which expert each
//! patch went to) and atomic PNG writing.

use super::files;
use super::{CITYSCAPES_PALETTE, IGNORE_INDEX};
use crate::error::{Error, Result};
use image::{Rgb, RgbImage};
use std::path::Path;

/// The Cityscapes colours of a trainId map (`height × width`, row-major); 255 and unknown ids
/// are black, and so are pixels past the end of a too short `labels`.
pub fn colorize(labels: &[u8], height: usize, width: usize) -> RgbImage {
    let mut img = RgbImage::new(width as u32, height as u32);
    for (px, &label) in img.pixels_mut().zip(labels) {
        if label != IGNORE_INDEX {
            if let Some(color) = CITYSCAPES_PALETTE.get(label as usize) {
                *px = Rgb(*color);
            }
        }
    }
    img
}

/// `(1 − alpha)·image + alpha·overlay`; both must have the same size.
pub fn blend(image: &RgbImage, overlay: &RgbImage, alpha: f32) -> Result<RgbImage> {
    if image.dimensions() != overlay.dimensions() {
        return Err(Error::shape(
            "blend",
            format!(
                "image is {:?} but overlay is {:?} (width, height)",
                image.dimensions(),
                overlay.dimensions()
            ),
        ));
    }
    let alpha = alpha.clamp(0.0, 1.0);
    let mut out = image.clone();
    for (px, over) in out.pixels_mut().zip(overlay.pixels()) {
        for c in 0..3 {
            px.0[c] = mix(px.0[c], over.0[c], alpha);
        }
    }
    Ok(out)
}

fn mix(a: u8, b: u8, alpha: f32) -> u8 {
    (a as f32 * (1.0 - alpha) + b as f32 * alpha).round() as u8
}

/// A distinct colour per expert (hues evenly spaced, full saturation).
pub fn expert_color(expert: usize, num_experts: usize) -> [u8; 3] {
    let n = num_experts.max(1);
    let hue = (expert % n) as f32 / n as f32 * 6.0;
    let x = 1.0 - (hue % 2.0 - 1.0).abs();
    let (r, g, b) = match hue as u32 {
        0 => (1.0, x, 0.0),
        1 => (x, 1.0, 0.0),
        2 => (0.0, 1.0, x),
        3 => (0.0, x, 1.0),
        4 => (x, 0.0, 1.0),
        _ => (1.0, 0.0, x),
    };
    [r, g, b].map(|v: f32| (v * 230.0) as u8 + 20)
}

/// `image` cut in a `rows × cols` grid of patches, each tinted with the colour of its top
/// expert and labelled with its chosen experts in rank order (in the plot font, when one is
/// found and the patch is large enough); grid lines in white.
/// `experts` holds one list per patch, row-major; patches without a list stay untinted and
/// extra lists are ignored (a zero-sized grid returns the image unchanged).
pub fn routing_overlay(
    image: &RgbImage,
    rows: usize,
    cols: usize,
    experts: &[Vec<usize>],
    num_experts: usize,
) -> RgbImage {
    if rows == 0 || cols == 0 || image.width() == 0 || image.height() == 0 {
        return image.clone();
    }
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut out = image.clone();
    let x_edge = |c: usize| c * w / cols;
    let y_edge = |r: usize| r * h / rows;
    let mut labels = Vec::new();
    for (patch, chosen) in experts.iter().enumerate().take(rows * cols) {
        let (r, c) = (patch / cols, patch % cols);
        let (x0, x1, y0, y1) = (x_edge(c), x_edge(c + 1), y_edge(r), y_edge(r + 1));
        if let Some(&top) = chosen.first() {
            let color = expert_color(top, num_experts);
            for y in y0..y1 {
                for x in x0..x1 {
                    let px = out.get_pixel_mut(x as u32, y as u32);
                    for (v, c) in px.0.iter_mut().zip(color) {
                        *v = mix(*v, c, 0.45);
                    }
                }
            }
        }
        let text = chosen
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(",");
        labels.push((text, x0, y0, x1, y1));
    }
    for r in 0..=rows {
        let y = y_edge(r).min(h.saturating_sub(1));
        (0..w).for_each(|x| out.put_pixel(x as u32, y as u32, Rgb([255, 255, 255])));
    }
    for c in 0..=cols {
        let x = x_edge(c).min(w.saturating_sub(1));
        (0..h).for_each(|y| out.put_pixel(x as u32, y as u32, Rgb([255, 255, 255])));
    }
    // The experts' numbers in the plot font, sized to the patch (none without a font).
    for (text, x0, y0, x1, y1) in labels {
        let size = ((y1 - y0) / 3).clamp(9, 32) as u32;
        let fits = (x1 - x0) as u32 > size && (y1 - y0) as u32 > size;
        if fits {
            crate::train::plots::draw_text_on(&mut out, &text, (x0 + 3, y0 + 2), size);
        }
    }
    out
}

/// `image` scaled up by the smallest whole factor that makes it at least `min_width` pixels
/// wide, each pixel repeated (nearest neighbour); unchanged when wide enough already.
pub fn upscale_nearest(image: &RgbImage, min_width: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    if w == 0 || w >= min_width {
        return image.clone();
    }
    let factor = min_width.div_ceil(w);
    RgbImage::from_fn(w * factor, h * factor, |x, y| {
        *image.get_pixel(x / factor, y / factor)
    })
}

/// Writes an RGB PNG atomically (temporary file, then rename), creating parent folders.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    create_parent(path)?;
    files::write_encoded(
        &image::DynamicImage::ImageRgb8(img.clone()),
        image::ImageFormat::Png,
        path,
    )
}

/// Writes labels as an 8-bit grayscale PNG atomically (e.g. `_pred_labelIds.png`, trainIds).
pub fn save_label_png(labels: &[u8], height: usize, width: usize, path: &Path) -> Result<()> {
    create_parent(path)?;
    files::write_gray_png(labels, height, width, path)
}

/// Creates a folder and its parents (errors name the folder).
pub fn create_dir(dir: &Path) -> Result<()> {
    files::create_dir(dir)
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => files::create_dir(parent),
        _ => Ok(()),
    }
}
