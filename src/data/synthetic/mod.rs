//! The built-in synthetic street scenes (`datasets.md`): procedural images with exact labels,
//! deterministic from `(seed, index)`.
//!
//! A scene is painted back to front: a sky gradient with clouds, a far skyline of buildings and
//! trees, the ground in perspective (terrain, then sidewalks and the road towards a vanishing
//! point, with lane marks), facades / hedges / walls / fences along both sidewalks, then objects
//! sorted by depth (cars, trucks, buses, trams, persons, riders on bicycles or motorcycles,
//! parked two-wheelers, poles with traffic signs and lights), shadows, a global lighting change
//! and sensor noise. Object colours vary within a class, so shape and context matter.

mod objects;

use super::raster::{noise, Canvas, Material, Shape, Texture};
use super::{Dataset, Sample};
use crate::error::{Error, Result};
use crate::tensor::Rng;

// trainIds, named for readability.
const ROAD: u8 = 0;
const SIDEWALK: u8 = 1;
const BUILDING: u8 = 2;
const WALL: u8 = 3;
const FENCE: u8 = 4;
const POLE: u8 = 5;
const TRAFFIC_LIGHT: u8 = 6;
const TRAFFIC_SIGN: u8 = 7;
const VEGETATION: u8 = 8;
const TERRAIN: u8 = 9;
const SKY: u8 = 10;
const PERSON: u8 = 11;
const RIDER: u8 = 12;
const CAR: u8 = 13;
const TRUCK: u8 = 14;
const BUS: u8 = 15;
const TRAIN: u8 = 16;
const MOTORCYCLE: u8 = 17;
const BICYCLE: u8 = 18;

/// Size and seed of a synthetic set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntheticConfig {
    /// Number of samples.
    pub len: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Seed: sample `i` depends only on `(seed, i)` and the size.
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            len: 512,
            height: 128,
            width: 256,
            seed: 0,
        }
    }
}

/// The layout of a synthetic scene.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SceneKind {
    /// The original generator: every layout parameter drawn from its full range.
    Mixed,
    /// Inner city: narrow road, wide sidewalks, facades on both sides, many persons, riders,
    /// parked two-wheelers and poles, few trucks, no tram.
    Urban,
    /// Motorway: wide road, barely any sidewalk, vegetation, terrain and fences along it,
    /// many cars and trucks, no persons.
    Highway,
}

impl SceneKind {
    /// `mixed`, `urban` or `highway`.
    pub fn as_str(self) -> &'static str {
        match self {
            SceneKind::Mixed => "mixed",
            SceneKind::Urban => "urban",
            SceneKind::Highway => "highway",
        }
    }

    /// Parses `data.scene`: one kind, or several joined by `+` (`urban+highway`: sample `i`
    /// has kind `i mod n` of the list).
    pub fn parse_list(text: &str) -> Result<Vec<SceneKind>> {
        text.split('+')
            .map(|word| match word.trim() {
                "mixed" | "" => Ok(SceneKind::Mixed),
                "urban" => Ok(SceneKind::Urban),
                "highway" => Ok(SceneKind::Highway),
                other => Err(Error::invalid(
                    "data.scene",
                    format!("`{other}` in `{text}`: expected mixed, urban, highway or a `+` list"),
                )),
            })
            .collect()
    }
}

/// Procedural street scenes with exact trainId labels (all 19 classes over a set).
#[derive(Clone, Debug)]
pub struct Synthetic {
    config: SyntheticConfig,
    /// Sample `i` is painted with layout `scenes[i % scenes.len()]`.
    scenes: Vec<SceneKind>,
}

impl Synthetic {
    /// A set of `config.len` scenes of the original, mixed layout.
    pub fn new(config: SyntheticConfig) -> Synthetic {
        Synthetic {
            config,
            scenes: vec![SceneKind::Mixed],
        }
    }

    /// The same set with sample `i` painted as `scenes[i % scenes.len()]` (an empty list
    /// means mixed). `Mixed` reproduces [`Synthetic::new`]'s images exactly.
    pub fn with_scenes(mut self, scenes: &[SceneKind]) -> Synthetic {
        self.scenes = if scenes.is_empty() {
            vec![SceneKind::Mixed]
        } else {
            scenes.to_vec()
        };
        self
    }

    /// The layout of sample `index`.
    pub fn scene_of(&self, index: usize) -> SceneKind {
        self.scenes[index % self.scenes.len()]
    }

    /// The configuration.
    pub fn config(&self) -> SyntheticConfig {
        self.config
    }

    /// Paints scene `index` (any index, also past `len`).
    pub fn generate(&self, index: usize) -> Sample {
        let SyntheticConfig {
            height,
            width,
            seed,
            ..
        } = self.config;
        let mut rng = Rng::new(
            seed ^ (index as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(17),
        );
        let mut canvas = Canvas::new(height, width, SKY);
        Scene::new(&mut rng, height as f32, width as f32, self.scene_of(index))
            .paint(&mut canvas, &mut rng);
        let mut image = image::RgbImage::new(width as u32, height as u32);
        let sensor_seed = rng.next_u64() as u32;
        let sigma = rng.uniform(0.01, 0.05);
        for (i, (px, rgb)) in image.pixels_mut().zip(&canvas.rgb).enumerate() {
            let (x, y) = ((i % width) as i32, (i / width) as i32);
            for (c, v) in rgb.iter().enumerate() {
                let n = sigma * noise(x, y, sensor_seed.wrapping_add(c as u32));
                px.0[c] = ((v + n).clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
        Sample {
            id: format!("synthetic_{index:06}"),
            image,
            label: Some(canvas.label),
        }
    }
}

impl Dataset for Synthetic {
    fn len(&self) -> usize {
        self.config.len
    }

    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.config.len {
            return Err(Error::invalid(
                "synthetic",
                format!("index {index} out of range for {} samples", self.config.len),
            ));
        }
        if self.config.height == 0 || self.config.width == 0 {
            return Err(Error::invalid(
                "synthetic",
                "image height and width must be positive",
            ));
        }
        Ok(self.generate(index))
    }

    fn id(&self, index: usize) -> String {
        format!("synthetic_{index:06}")
    }

    fn describe(&self) -> String {
        let c = self.config;
        let scenes: Vec<&str> = self.scenes.iter().map(|s| s.as_str()).collect();
        format!(
            "synthetic street scenes ({} images of {}×{}, seed {}, scene {})",
            c.len,
            c.height,
            c.width,
            c.seed,
            scenes.join("+")
        )
    }
}

/// A random colour near `base` (each channel ± `spread`).
fn vary(rng: &mut Rng, base: [f32; 3], spread: f32) -> [f32; 3] {
    let shift = rng.uniform(-spread, spread);
    base.map(|v| (v + shift + rng.uniform(-spread, spread) * 0.5).clamp(0.0, 1.0))
}

/// A random colour near one of `choices`.
fn vary_pick(rng: &mut Rng, choices: &[[f32; 3]], spread: f32) -> [f32; 3] {
    let base = pick(rng, choices);
    vary(rng, base, spread)
}

/// One of `choices`, uniformly.
fn pick<T: Copy>(rng: &mut Rng, choices: &[T]) -> T {
    choices[rng.below(choices.len())]
}

/// A vivid or neutral vehicle paint.
fn paint_color(rng: &mut Rng) -> [f32; 3] {
    let palette = [
        [0.85, 0.85, 0.85],
        [0.1, 0.1, 0.12],
        [0.5, 0.52, 0.55],
        [0.6, 0.08, 0.08],
        [0.1, 0.2, 0.55],
        [0.75, 0.7, 0.6],
        [0.2, 0.4, 0.25],
        [0.9, 0.6, 0.1],
    ];
    vary_pick(rng, &palette, 0.06)
}

/// The camera geometry of a scene: ground rows below the horizon at depth
/// `t = (y - horizon) / (H - horizon)`, lines converging to `(vanish_x, horizon)`.
struct Scene {
    h: f32,
    w: f32,
    horizon: f32,
    vanish_x: f32,
    /// Road centre shift and half width at the bottom row (t = 1).
    road_shift: f32,
    road_half: f32,
    /// Sidewalk widths at t = 1, left and right.
    walk: [f32; 2],
    /// Global light: brightness per channel.
    light: [f32; 3],
    /// The layout family.
    kind: SceneKind,
}

impl Scene {
    fn new(rng: &mut Rng, h: f32, w: f32, kind: SceneKind) -> Scene {
        let brightness = rng.uniform(0.65, 1.3);
        let warm = rng.uniform(-0.08, 0.08);
        let mut scene = Scene {
            h,
            w,
            horizon: h * rng.uniform(0.36, 0.5),
            vanish_x: w * rng.uniform(0.3, 0.7),
            road_shift: w * rng.uniform(-0.2, 0.2),
            road_half: w * rng.uniform(0.35, 0.7),
            walk: [w * rng.uniform(0.12, 0.4), w * rng.uniform(0.12, 0.4)],
            light: [
                brightness * (1.0 + warm),
                brightness,
                brightness * (1.0 - warm),
            ],
            kind,
        };
        // The mixed layout draws nothing more, so its images stay those of the original.
        match kind {
            SceneKind::Mixed => {}
            SceneKind::Urban => {
                scene.horizon = h * rng.uniform(0.3, 0.4);
                scene.road_half = w * rng.uniform(0.2, 0.35);
                scene.walk = [w * rng.uniform(0.3, 0.5), w * rng.uniform(0.3, 0.5)];
            }
            SceneKind::Highway => {
                scene.horizon = h * rng.uniform(0.45, 0.55);
                scene.road_half = w * rng.uniform(0.8, 1.1);
                scene.walk = [w * rng.uniform(0.0, 0.03), w * rng.uniform(0.0, 0.03)];
            }
        }
        scene
    }

    /// Row of ground depth `t`.
    fn y_at(&self, t: f32) -> f32 {
        self.horizon + t * (self.h - self.horizon)
    }

    /// Column at depth `t` of the ground line `offset` pixels (at t = 1) from the road centre.
    fn x_at(&self, t: f32, offset: f32) -> f32 {
        self.vanish_x + t * (self.road_shift + offset)
    }

    /// Offset of the outer sidewalk edge on `side` (0 left, 1 right).
    fn outer(&self, side: usize) -> f32 {
        let sign = if side == 0 { -1.0 } else { 1.0 };
        sign * (self.road_half + self.walk[side])
    }

    /// A ground quad between offsets `a` and `b` and depths `t0..t1`.
    fn ground_quad(&self, a: f32, b: f32, t0: f32, t1: f32) -> Shape {
        Shape::Polygon(vec![
            (self.x_at(t0, a), self.y_at(t0)),
            (self.x_at(t0, b), self.y_at(t0)),
            (self.x_at(t1, b), self.y_at(t1)),
            (self.x_at(t1, a), self.y_at(t1)),
        ])
    }

    fn paint(&self, canvas: &mut Canvas, rng: &mut Rng) {
        self.sky(canvas, rng);
        self.skyline(canvas, rng);
        self.ground(canvas, rng);
        for side in 0..2 {
            self.roadside(canvas, rng, side);
        }
        self.objects(canvas, rng);
        self.shadows(canvas, rng);
        let light = self.light;
        canvas.shade(
            &Shape::Rect {
                x0: 0.0,
                y0: 0.0,
                x1: self.w,
                y1: self.h,
            },
            light,
        );
    }

    fn sky(&self, canvas: &mut Canvas, rng: &mut Rng) {
        let overcast = rng.uniform(0.0, 1.0);
        let top = vary(
            rng,
            [0.25 + 0.4 * overcast, 0.45 + 0.3 * overcast, 0.8],
            0.05,
        );
        let bottom = vary(rng, [0.75, 0.82, 0.9], 0.05);
        let material = Material {
            color: top,
            texture: Texture::Gradient {
                to: bottom,
                y0: 0.0,
                y1: self.horizon,
            },
            noise: 0.01,
            seed: rng.next_u64() as u32,
        };
        canvas.fill(
            &Shape::Rect {
                x0: 0.0,
                y0: 0.0,
                x1: self.w,
                y1: self.horizon + 1.0,
            },
            SKY,
            &material,
        );
        for _ in 0..rng.below(5) {
            let cloud = Material {
                color: vary(rng, [0.92, 0.93, 0.95], 0.04),
                texture: Texture::Leaves { cell: 3 },
                noise: 0.03,
                seed: rng.next_u64() as u32,
            };
            let shape = Shape::Ellipse {
                cx: rng.uniform(0.0, self.w),
                cy: rng.uniform(0.0, self.horizon * 0.6),
                rx: self.w * rng.uniform(0.05, 0.15),
                ry: self.h * rng.uniform(0.02, 0.06),
            };
            canvas.fill(&shape, SKY, &cloud);
        }
    }

    /// Far buildings and tree clumps standing on the horizon.
    fn skyline(&self, canvas: &mut Canvas, rng: &mut Rng) {
        let mut x = -rng.uniform(0.0, 0.1) * self.w;
        while x < self.w {
            let width = self.w * rng.uniform(0.04, 0.16);
            let top = self.horizon - self.h * rng.uniform(0.04, 0.3);
            if rng.next_f32() < 0.7 {
                let material = self.facade(rng, width * 0.25, (x, top));
                let shape = Shape::Rect {
                    x0: x,
                    y0: top,
                    x1: x + width,
                    y1: self.horizon + 2.0,
                };
                canvas.fill(&shape, BUILDING, &material);
            } else {
                self.tree_clump(
                    canvas,
                    rng,
                    x + width / 2.0,
                    self.horizon + 1.0,
                    width * 0.6,
                    self.horizon - top,
                );
            }
            x += width;
        }
    }

    /// A facade material with windows `period` pixels apart.
    fn facade(&self, rng: &mut Rng, period: f32, origin: (f32, f32)) -> Material {
        let wall = pick(
            rng,
            &[
                [0.55, 0.5, 0.45],
                [0.7, 0.66, 0.6],
                [0.45, 0.45, 0.48],
                [0.6, 0.4, 0.32],
                [0.8, 0.78, 0.7],
            ],
        );
        let period = period.clamp(3.0, (self.w * 0.1).max(3.0));
        Material {
            color: vary(rng, wall, 0.08),
            texture: Texture::Windows {
                glass: vary(rng, [0.2, 0.25, 0.3], 0.08),
                period: (period, period * rng.uniform(1.0, 1.5)),
                origin,
            },
            noise: 0.05,
            seed: rng.next_u64() as u32,
        }
    }

    fn leaves(&self, rng: &mut Rng, cell: i32) -> Material {
        Material {
            color: vary(rng, [0.25, 0.4, 0.15], 0.06),
            texture: Texture::Leaves { cell: cell.max(1) },
            noise: 0.12,
            seed: rng.next_u64() as u32,
        }
    }

    /// A few overlapping canopy ellipses above `(cx, base)`, `radius` wide, `height` tall.
    fn tree_clump(
        &self,
        canvas: &mut Canvas,
        rng: &mut Rng,
        cx: f32,
        base: f32,
        radius: f32,
        height: f32,
    ) {
        let material = self.leaves(rng, (radius / 4.0) as i32);
        for _ in 0..3 + rng.below(3) {
            let r = radius * rng.uniform(0.5, 1.0);
            let shape = Shape::Ellipse {
                cx: cx + rng.uniform(-radius, radius) * 0.6,
                cy: base - height * rng.uniform(0.3, 0.7),
                rx: r,
                ry: (height * 0.45).max(r * 0.6),
            };
            canvas.fill(&shape, VEGETATION, &material);
        }
    }

    /// Terrain everywhere on the ground, then sidewalks and the road with lane marks.
    fn ground(&self, canvas: &mut Canvas, rng: &mut Rng) {
        let grass = Material {
            color: vary(rng, [0.45, 0.55, 0.25], 0.07),
            texture: Texture::Leaves { cell: 2 },
            noise: 0.15,
            seed: rng.next_u64() as u32,
        };
        canvas.fill(
            &Shape::Rect {
                x0: 0.0,
                y0: self.horizon,
                x1: self.w,
                y1: self.h,
            },
            TERRAIN,
            &grass,
        );
        let walk_color = vary(rng, [0.62, 0.58, 0.58], 0.08);
        let walk = Material {
            color: walk_color,
            texture: Texture::Bands {
                period: (self.h * 0.03).max(2.0),
            },
            noise: 0.06,
            seed: rng.next_u64() as u32,
        };
        let far = 1.6; // past the bottom row, so the quads cover it
        for side in 0..2 {
            let (a, b) = if side == 0 {
                (self.outer(0), -self.road_half)
            } else {
                (self.road_half, self.outer(1))
            };
            canvas.fill(&self.ground_quad(a, b, 0.0, far), SIDEWALK, &walk);
        }
        let asphalt = Material::plain(
            vary(rng, [0.33, 0.32, 0.34], 0.06),
            0.08,
            rng.next_u64() as u32,
        );
        canvas.fill(
            &self.ground_quad(-self.road_half, self.road_half, 0.0, far),
            ROAD,
            &asphalt,
        );
        let paint = Material::plain([0.85, 0.85, 0.8], 0.05, rng.next_u64() as u32);
        let lanes = 1 + rng.below(3);
        let mark = self.w * 0.01;
        for lane in 1..lanes + 1 {
            let offset = -self.road_half + 2.0 * self.road_half * lane as f32 / (lanes + 1) as f32;
            let mut t = rng.uniform(0.02, 0.1);
            while t < 1.2 {
                let t1 = t * 1.25;
                canvas.fill(
                    &self.ground_quad(offset - mark, offset + mark, t, t1),
                    ROAD,
                    &paint,
                );
                t = t1 * 1.25;
            }
        }
    }

    /// Segments of facades, hedges with trees, walls and fences along one sidewalk.
    fn roadside(&self, canvas: &mut Canvas, rng: &mut Rng, side: usize) {
        let sign = if side == 0 { -1.0 } else { 1.0 };
        let mut t0 = 0.01;
        while t0 < 1.6 {
            let t1 = t0 * rng.uniform(1.3, 2.2) + 0.02;
            // Urban streets are lined by facades, motorways by hedges, walls and fences.
            let kind = match self.kind {
                SceneKind::Mixed => rng.next_f32(),
                SceneKind::Urban => rng.next_f32() * 0.6,
                SceneKind::Highway => rng.uniform(0.5, 1.0),
            };
            let setback = sign * self.w * rng.uniform(0.0, 0.1) * (kind < 0.5) as u8 as f32;
            let base = self.outer(side) + setback;
            let bottom = |t: f32| (self.x_at(t, base), self.y_at(t));
            let (p0, p1) = (bottom(t0), bottom(t1));
            let quad = |height: f32| {
                let top = |t: f32, p: (f32, f32)| (p.0, p.1 - height * t * (self.h - self.horizon));
                Shape::Polygon(vec![p0, p1, top(t1, p1), top(t0, p0)])
            };
            if kind < 0.5 {
                let material = self.facade(rng, (t0 + t1) * self.w * 0.04, p0);
                canvas.fill(&quad(rng.uniform(1.5, 5.0)), BUILDING, &material);
            } else if kind < 0.72 {
                let height = rng.uniform(0.3, 0.7);
                canvas.fill(
                    &quad(height),
                    VEGETATION,
                    &self.leaves(rng, (t0 * self.w * 0.03) as i32),
                );
                let t = (t0 + t1) / 2.0;
                let (x, y) = bottom(t);
                let scale = t * (self.h - self.horizon);
                let (radius, height) = (rng.uniform(0.4, 0.9), rng.uniform(1.2, 2.5));
                self.tree_clump(canvas, rng, x, y, scale * radius, scale * height);
            } else if kind < 0.84 {
                let material = Material {
                    color: vary(rng, [0.6, 0.58, 0.55], 0.1),
                    texture: Texture::Bands {
                        period: (t0 * self.h * 0.1).max(2.0),
                    },
                    noise: 0.07,
                    seed: rng.next_u64() as u32,
                };
                canvas.fill(&quad(rng.uniform(0.2, 0.45)), WALL, &material);
            } else if kind < 0.95 {
                let material = Material {
                    color: vary(rng, [0.55, 0.48, 0.42], 0.1),
                    texture: Texture::Slats {
                        period: (t0 * self.w * 0.015).max(2.0),
                    },
                    noise: 0.06,
                    seed: rng.next_u64() as u32,
                };
                canvas.fill(&quad(rng.uniform(0.2, 0.5)), FENCE, &material);
            }
            t0 = t1;
        }
    }

    /// Soft shadows cast across the ground (colour only).
    fn shadows(&self, canvas: &mut Canvas, rng: &mut Rng) {
        for _ in 0..rng.below(3) {
            let t0 = rng.uniform(0.05, 0.8);
            let t1 = t0 + rng.uniform(0.05, 0.3);
            let a = rng.uniform(-1.5, 0.5) * self.road_half;
            let b = a + rng.uniform(0.5, 1.5) * self.road_half;
            let f = rng.uniform(0.5, 0.8);
            canvas.shade(&self.ground_quad(a, b, t0, t1), [f, f, f * 1.05]);
        }
    }
}
