//! A tiny rasteriser for the synthetic scenes: convex shapes filled with a textured material
//! into an RGB buffer and a label buffer at once (painter's order gives the occlusions).

/// A 32-bit integer hash of a pixel position and a seed (lowbias32-style mixing).
pub(crate) fn hash2(x: i32, y: i32, seed: u32) -> u32 {
    let mut h = (x as u32).wrapping_mul(0x8da6_b343) ^ (y as u32).wrapping_mul(0xd816_3841) ^ seed;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^ (h >> 16)
}

/// White noise in `[-1, 1)`.
pub(crate) fn noise(x: i32, y: i32, seed: u32) -> f32 {
    (hash2(x, y, seed) >> 8) as f32 * (2.0 / (1u32 << 24) as f32) - 1.0
}

/// Blocky noise in `[-1, 1)`: constant over `cell × cell` squares.
pub(crate) fn cell_noise(x: i32, y: i32, cell: i32, seed: u32) -> f32 {
    noise(x.div_euclid(cell), y.div_euclid(cell), seed)
}

/// A convex region of the picture, in pixel coordinates (pixel centres at `i + 0.5`).
#[derive(Clone, Debug)]
pub(crate) enum Shape {
    /// `[x0, x1) × [y0, y1)`.
    Rect { x0: f32, y0: f32, x1: f32, y1: f32 },
    /// Centre and radii.
    Ellipse { cx: f32, cy: f32, rx: f32, ry: f32 },
    /// A convex polygon (any winding).
    Polygon(Vec<(f32, f32)>),
}

impl Shape {
    /// Vertical extent `(y0, y1)`.
    fn rows(&self) -> (f32, f32) {
        match self {
            Shape::Rect { y0, y1, .. } => (*y0, *y1),
            Shape::Ellipse { cy, ry, .. } => (cy - ry, cy + ry),
            Shape::Polygon(points) => points
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), p| {
                    (a.min(p.1), b.max(p.1))
                }),
        }
    }

    /// The covered interval `[x0, x1)` of the horizontal line at height `y`.
    fn span(&self, y: f32) -> Option<(f32, f32)> {
        match self {
            Shape::Rect { x0, y0, x1, y1 } => (y >= *y0 && y < *y1).then_some((*x0, *x1)),
            Shape::Ellipse { cx, cy, rx, ry } => {
                let d = (y - cy) / ry.max(1e-6);
                let s = 1.0 - d * d;
                (s > 0.0).then(|| {
                    let half = rx * s.sqrt();
                    (cx - half, cx + half)
                })
            }
            Shape::Polygon(points) => {
                let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
                for (i, &(ax, ay)) in points.iter().enumerate() {
                    let (bx, by) = points[(i + 1) % points.len()];
                    if (ay <= y && y < by) || (by <= y && y < ay) {
                        let x = ax + (y - ay) / (by - ay) * (bx - ax);
                        lo = lo.min(x);
                        hi = hi.max(x);
                    }
                }
                (lo < hi).then_some((lo, hi))
            }
        }
    }
}

/// How a filled region is coloured.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Texture {
    /// The base colour with noise.
    Plain,
    /// Vertical gradient from the base colour at `y0` to `to` at `y1` (sky).
    Gradient { to: [f32; 3], y0: f32, y1: f32 },
    /// A facade: a grid of windows of colour `glass` every `period` pixels.
    Windows {
        glass: [f32; 3],
        period: (f32, f32),
        origin: (f32, f32),
    },
    /// Foliage: blotches of `cell` pixels, brighter and darker.
    Leaves { cell: i32 },
    /// Vertical slats every `period` pixels (fences), darker in the gaps.
    Slats { period: f32 },
    /// Horizontal bands every `period` pixels (sidewalk tiles, walls).
    Bands { period: f32 },
}

/// A base colour in `[0, 1]`, a texture and the amplitude of the per-pixel noise.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Material {
    pub color: [f32; 3],
    pub texture: Texture,
    pub noise: f32,
    pub seed: u32,
}

impl Material {
    /// A plain colour with the given noise.
    pub fn plain(color: [f32; 3], noise: f32, seed: u32) -> Material {
        Material {
            color,
            texture: Texture::Plain,
            noise,
            seed,
        }
    }

    /// The colour of pixel `(x, y)`.
    fn at(&self, x: i32, y: i32) -> [f32; 3] {
        let (xf, yf) = (x as f32 + 0.5, y as f32 + 0.5);
        let mut c = self.color;
        let mut scale = 1.0 + self.noise * noise(x, y, self.seed);
        match self.texture {
            Texture::Plain => {}
            Texture::Gradient { to, y0, y1 } => {
                let t = ((yf - y0) / (y1 - y0).max(1.0)).clamp(0.0, 1.0);
                for (ci, ti) in c.iter_mut().zip(to) {
                    *ci += (ti - *ci) * t;
                }
            }
            Texture::Windows {
                glass,
                period,
                origin,
            } => {
                let u = ((xf - origin.0) / period.0).rem_euclid(1.0);
                let v = ((yf - origin.1) / period.1).rem_euclid(1.0);
                if (0.3..0.75).contains(&u) && (0.25..0.7).contains(&v) {
                    c = glass;
                    let cell = ((xf - origin.0) / period.0).floor() as i32;
                    let row = ((yf - origin.1) / period.1).floor() as i32;
                    scale += 0.25 * noise(cell, row, self.seed ^ 0x5bd1);
                }
            }
            Texture::Leaves { cell } => {
                scale += 0.35 * cell_noise(x, y, cell, self.seed)
                    + 0.2 * cell_noise(x + 1, y + 2, (cell / 2).max(1), self.seed ^ 0x77);
            }
            Texture::Slats { period } => {
                if (xf / period).rem_euclid(1.0) > 0.6 {
                    scale *= 0.55;
                }
            }
            Texture::Bands { period } => {
                if (yf / period).rem_euclid(1.0) < 0.12 {
                    scale *= 0.8;
                }
            }
        }
        c.map(|v| v * scale)
    }
}

/// An RGB picture in `[0, 1]` floats with its label map.
pub(crate) struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<[f32; 3]>,
    pub label: Vec<u8>,
}

impl Canvas {
    /// A black canvas labelled `fill_label`.
    pub fn new(height: usize, width: usize, fill_label: u8) -> Canvas {
        Canvas {
            width,
            height,
            rgb: vec![[0.0; 3]; width * height],
            label: vec![fill_label; width * height],
        }
    }

    /// Calls `paint(index, x, y)` for every pixel whose centre lies in `shape`.
    fn for_each_pixel(
        &mut self,
        shape: &Shape,
        mut paint: impl FnMut(&mut Canvas, usize, i32, i32),
    ) {
        let (y0, y1) = shape.rows();
        let row_start = (y0 - 0.5).ceil().max(0.0) as usize;
        let row_end = ((y1 - 0.5).ceil().max(0.0) as usize).min(self.height);
        for y in row_start..row_end {
            let Some((a, b)) = shape.span(y as f32 + 0.5) else {
                continue;
            };
            let x_start = (a - 0.5).ceil().max(0.0) as usize;
            let x_end = ((b - 0.5).ceil().max(0.0) as usize).min(self.width);
            for x in x_start..x_end {
                paint(self, y * self.width + x, x as i32, y as i32);
            }
        }
    }

    /// Paints `shape` with `material` and labels it `class`.
    pub fn fill(&mut self, shape: &Shape, class: u8, material: &Material) {
        self.for_each_pixel(shape, |canvas, i, x, y| {
            canvas.rgb[i] = material.at(x, y);
            canvas.label[i] = class;
        });
    }

    /// Multiplies the colours inside `shape` by `factor` (shadows, light), labels unchanged.
    pub fn shade(&mut self, shape: &Shape, factor: [f32; 3]) {
        self.for_each_pixel(shape, |canvas, i, _, _| {
            let p = &mut canvas.rgb[i];
            for (v, f) in p.iter_mut().zip(factor) {
                *v *= f;
            }
        });
    }
}
