//! The objects of a synthetic scene, painted far to near: vehicles seen from behind (car,
//! truck, bus, tram), pedestrians, riders on two-wheelers, parked two-wheelers, and poles
//! carrying traffic lights or signs.

use super::{
    paint_color, pick, vary, vary_pick, Scene, SceneKind, BICYCLE, BUS, CAR, MOTORCYCLE, PERSON,
    POLE, RIDER, TRAFFIC_LIGHT, TRAFFIC_SIGN, TRAIN, TRUCK,
};
use crate::data::raster::{Canvas, Material, Shape};
use crate::tensor::Rng;

impl Scene {
    /// Objects at random depths, painted far to near.
    pub(super) fn objects(&self, canvas: &mut Canvas, rng: &mut Rng) {
        let mut objects: Vec<(f32, Object)> = Vec::new();
        let add = |objects: &mut Vec<(f32, Object)>,
                   rng: &mut Rng,
                   count: usize,
                   t: (f32, f32),
                   kind: fn(&mut Rng) -> Object| {
            for _ in 0..count {
                let depth = rng.uniform(t.0, t.1);
                objects.push((depth, kind(rng)));
            }
        };
        // Per layout: extra cars, probabilities of truck / bus / tram, and the most persons,
        // riders, parked two-wheelers and poles (the mixed layout keeps the original numbers).
        let (extra_cars, vehicles, persons, riders, parked, poles) = match self.kind {
            SceneKind::Mixed => (0, [0.35, 0.3, 0.2], 6, 3, 3, 5),
            SceneKind::Urban => (0, [0.1, 0.5, 0.0], 10, 5, 6, 7),
            SceneKind::Highway => (4, [0.9, 0.2, 0.0], 0, 1, 0, 3),
        };
        let cars = 1 + rng.below(6) + extra_cars;
        add(&mut objects, rng, cars, (0.08, 1.05), |r| Object::Vehicle {
            class: CAR,
            lane: r.uniform(-0.85, 0.85),
        });
        let counts = [
            (TRUCK, vehicles[0], 0.85),
            (BUS, vehicles[1], 0.85),
            (TRAIN, vehicles[2], 0.1),
        ];
        for (class, p, spread) in counts {
            if rng.next_f32() < p {
                let lane = rng.uniform(-spread, spread);
                objects.push((rng.uniform(0.1, 0.8), Object::Vehicle { class, lane }));
            }
        }
        let persons = rng.below(persons.max(1));
        add(&mut objects, rng, persons, (0.1, 1.0), |r| Object::Person {
            side: r.below(2),
            across: r.uniform(0.1, 0.9),
        });
        let riders = rng.below(riders);
        add(&mut objects, rng, riders, (0.1, 0.95), |r| Object::Rider {
            lane: pick(r, &[-0.9, 0.9]),
            motor: r.next_f32() < 0.5,
        });
        let parked = rng.below(parked.max(1));
        add(&mut objects, rng, parked, (0.1, 0.9), |r| Object::Parked {
            side: r.below(2),
            motor: r.next_f32() < 0.5,
        });
        let poles = 1 + rng.below(poles);
        add(&mut objects, rng, poles, (0.05, 1.2), |r| Object::Pole {
            side: r.below(2),
            top: r.below(3),
        });
        objects.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (t, object) in objects {
            self.object(canvas, rng, t, object);
        }
    }

    fn object(&self, canvas: &mut Canvas, rng: &mut Rng, t: f32, object: Object) {
        let unit = t * (self.h - self.horizon); // one "camera height" in pixels at depth t
        let y = self.y_at(t);
        match object {
            Object::Vehicle { class, lane } => {
                let x = self.x_at(t, lane * self.road_half * 0.75);
                let (w, h) = match class {
                    CAR => (1.1, rng.uniform(0.75, 0.9)),
                    TRUCK => (1.3, rng.uniform(1.4, 1.9)),
                    BUS => (1.4, rng.uniform(1.6, 1.9)),
                    _ => (1.5, 2.0),
                };
                self.vehicle(canvas, rng, class, x, y, w * unit, h * unit);
            }
            Object::Person { side, across } => {
                let a = if side == 0 {
                    -self.road_half
                } else {
                    self.road_half
                };
                let x = self.x_at(t, a + (self.outer(side) - a) * across);
                let size = unit * rng.uniform(0.9, 1.1);
                self.figure(canvas, rng, PERSON, x, y, size, false);
            }
            Object::Rider { lane, motor } => {
                let x = self.x_at(t, lane * self.road_half);
                self.two_wheeler(canvas, rng, motor, x, y, unit);
                self.figure(canvas, rng, RIDER, x, y - unit * 0.3, unit * 0.9, true);
            }
            Object::Parked { side, motor } => {
                let x = self.x_at(t, self.outer(side) * 0.9);
                self.two_wheeler(canvas, rng, motor, x, y, unit);
            }
            Object::Pole { side, top } => {
                let x = self.x_at(t, self.outer(side) * 0.97);
                let width = (unit * 0.06).max(1.0);
                let height = unit * rng.uniform(1.8, 3.0);
                let metal = Material::plain(
                    vary(rng, [0.45, 0.45, 0.45], 0.1),
                    0.05,
                    rng.next_u64() as u32,
                );
                canvas.fill(
                    &Shape::Rect {
                        x0: x - width / 2.0,
                        y0: y - height,
                        x1: x + width / 2.0,
                        y1: y,
                    },
                    POLE,
                    &metal,
                );
                let size = unit * 0.35;
                let (cx, cy) = (x, y - height + size * 0.6);
                match top {
                    0 => {
                        let housing =
                            Material::plain([0.12, 0.12, 0.1], 0.05, rng.next_u64() as u32);
                        let box_w = size * 0.45;
                        canvas.fill(
                            &Shape::Rect {
                                x0: cx - box_w / 2.0,
                                y0: cy - size,
                                x1: cx + box_w / 2.0,
                                y1: cy + size * 0.5,
                            },
                            TRAFFIC_LIGHT,
                            &housing,
                        );
                        let lamp = pick(rng, &[[0.9, 0.1, 0.1], [0.95, 0.7, 0.1], [0.1, 0.9, 0.3]]);
                        let r = box_w * 0.35;
                        let lamp_y = cy - size * 0.75 + rng.below(3) as f32 * size * 0.4;
                        canvas.fill(
                            &Shape::Ellipse {
                                cx,
                                cy: lamp_y,
                                rx: r,
                                ry: r,
                            },
                            TRAFFIC_LIGHT,
                            &Material::plain(lamp, 0.02, 1),
                        );
                    }
                    1 => {
                        let color = pick(
                            rng,
                            &[
                                [0.85, 0.1, 0.1],
                                [0.1, 0.3, 0.75],
                                [0.95, 0.85, 0.1],
                                [0.92, 0.92, 0.92],
                            ],
                        );
                        let material = Material::plain(color, 0.04, rng.next_u64() as u32);
                        let shape = match rng.below(3) {
                            0 => Shape::Ellipse {
                                cx,
                                cy,
                                rx: size / 2.0,
                                ry: size / 2.0,
                            },
                            1 => Shape::Polygon(vec![
                                (cx - size / 2.0, cy + size * 0.4),
                                (cx + size / 2.0, cy + size * 0.4),
                                (cx, cy - size * 0.5),
                            ]),
                            _ => Shape::Rect {
                                x0: cx - size * 0.6,
                                y0: cy - size * 0.4,
                                x1: cx + size * 0.6,
                                y1: cy + size * 0.4,
                            },
                        };
                        canvas.fill(&shape, TRAFFIC_SIGN, &material);
                    }
                    _ => {}
                }
            }
        }
    }

    /// A vehicle seen from behind: body, cabin with glass, wheels, lights; `w`×`h` pixels
    /// standing on `(x, y)`.
    #[allow(clippy::too_many_arguments)]
    fn vehicle(
        &self,
        canvas: &mut Canvas,
        rng: &mut Rng,
        class: u8,
        x: f32,
        y: f32,
        w: f32,
        h: f32,
    ) {
        let body_color = match class {
            BUS => vary_pick(
                rng,
                &[[0.85, 0.7, 0.1], [0.7, 0.1, 0.1], [0.15, 0.35, 0.7]],
                0.05,
            ),
            TRAIN => vary(rng, [0.85, 0.85, 0.82], 0.05),
            _ => paint_color(rng),
        };
        let body = Material::plain(body_color, 0.04, rng.next_u64() as u32);
        let dark = Material::plain([0.07, 0.07, 0.08], 0.1, rng.next_u64() as u32);
        let glass = Material::plain(
            vary(rng, [0.2, 0.25, 0.3], 0.05),
            0.06,
            rng.next_u64() as u32,
        );
        let (x0, x1, top) = (x - w / 2.0, x + w / 2.0, y - h);
        let wheel = w * 0.12;
        for wx in [x0 + wheel * 1.2, x1 - wheel * 1.2] {
            canvas.fill(
                &Shape::Ellipse {
                    cx: wx,
                    cy: y - wheel * 0.6,
                    rx: wheel,
                    ry: wheel * 0.8,
                },
                class,
                &dark,
            );
        }
        let body_bottom = y - wheel * 0.5;
        match class {
            CAR => {
                let waist = top + h * 0.45;
                canvas.fill(
                    &Shape::Rect {
                        x0,
                        y0: waist,
                        x1,
                        y1: body_bottom,
                    },
                    class,
                    &body,
                );
                let cabin = Shape::Polygon(vec![
                    (x0 + w * 0.05, waist),
                    (x1 - w * 0.05, waist),
                    (x1 - w * 0.18, top),
                    (x0 + w * 0.18, top),
                ]);
                canvas.fill(&cabin, class, &body);
                let window = Shape::Polygon(vec![
                    (x0 + w * 0.12, waist),
                    (x1 - w * 0.12, waist),
                    (x1 - w * 0.22, top + h * 0.08),
                    (x0 + w * 0.22, top + h * 0.08),
                ]);
                canvas.fill(&window, class, &glass);
            }
            TRUCK => {
                canvas.fill(
                    &Shape::Rect {
                        x0,
                        y0: top,
                        x1,
                        y1: body_bottom,
                    },
                    class,
                    &body,
                );
                let cab_color = paint_color(rng);
                let cab = Material::plain(cab_color, 0.04, rng.next_u64() as u32);
                canvas.fill(
                    &Shape::Rect {
                        x0,
                        y0: y - h * 0.25,
                        x1,
                        y1: body_bottom,
                    },
                    class,
                    &cab,
                );
                canvas.fill(
                    &Shape::Rect {
                        x0: x - w * 0.05,
                        y0: top + h * 0.05,
                        x1: x + w * 0.05,
                        y1: y - h * 0.3,
                    },
                    class,
                    &dark,
                );
            }
            _ => {
                canvas.fill(
                    &Shape::Rect {
                        x0,
                        y0: top,
                        x1,
                        y1: body_bottom,
                    },
                    class,
                    &body,
                );
                let rows = if class == TRAIN { 2 } else { 1 };
                for row in 0..rows {
                    let wy = top + h * (0.1 + 0.3 * row as f32);
                    canvas.fill(
                        &Shape::Rect {
                            x0: x0 + w * 0.08,
                            y0: wy,
                            x1: x1 - w * 0.08,
                            y1: wy + h * 0.22,
                        },
                        class,
                        &glass,
                    );
                }
                if class == TRAIN {
                    let wire = Material::plain([0.15, 0.15, 0.15], 0.05, 3);
                    canvas.fill(
                        &Shape::Rect {
                            x0: x - w * 0.3,
                            y0: top - h * 0.1,
                            x1: x + w * 0.3,
                            y1: top,
                        },
                        class,
                        &wire,
                    );
                }
            }
        }
        let lamp = Material::plain([0.8, 0.1, 0.05], 0.05, 7);
        for lx in [x0 + w * 0.04, x1 - w * 0.14] {
            canvas.fill(
                &Shape::Rect {
                    x0: lx,
                    y0: body_bottom - h * 0.3,
                    x1: lx + w * 0.1,
                    y1: body_bottom - h * 0.2,
                },
                class,
                &lamp,
            );
        }
    }

    /// A standing (or seated, for riders) person of height `size` on `(x, y)`.
    #[allow(clippy::too_many_arguments)]
    fn figure(
        &self,
        canvas: &mut Canvas,
        rng: &mut Rng,
        class: u8,
        x: f32,
        y: f32,
        size: f32,
        seated: bool,
    ) {
        let height = size * 0.55;
        let skin = Material::plain(
            vary_pick(
                rng,
                &[[0.9, 0.75, 0.6], [0.55, 0.38, 0.25], [0.75, 0.55, 0.4]],
                0.04,
            ),
            0.04,
            11,
        );
        let shirt = Material::plain(paint_color(rng), 0.08, rng.next_u64() as u32);
        let pants = Material::plain(
            vary(rng, [0.2, 0.22, 0.3], 0.1),
            0.08,
            rng.next_u64() as u32,
        );
        let half = height * 0.13;
        let hip = y - height * if seated { 0.2 } else { 0.48 };
        let shoulder = y - height * 0.85;
        if !seated {
            for side in [-1.0, 1.0] {
                let leg = Shape::Polygon(vec![
                    (x + side * half * 0.1, hip),
                    (x + side * half, hip),
                    (x + side * half * 1.2, y),
                    (x + side * half * 0.3, y),
                ]);
                canvas.fill(&leg, class, &pants);
            }
        } else {
            canvas.fill(
                &Shape::Rect {
                    x0: x - half,
                    y0: hip,
                    x1: x + half,
                    y1: y,
                },
                class,
                &pants,
            );
        }
        canvas.fill(
            &Shape::Rect {
                x0: x - half * 1.1,
                y0: shoulder,
                x1: x + half * 1.1,
                y1: hip + height * 0.02,
            },
            class,
            &shirt,
        );
        let r = height * 0.075;
        canvas.fill(
            &Shape::Ellipse {
                cx: x,
                cy: shoulder - r * 1.1,
                rx: r,
                ry: r * 1.2,
            },
            class,
            &skin,
        );
    }

    /// A bicycle or motorcycle seen from behind at `(x, y)`, `unit` pixels per camera height.
    fn two_wheeler(
        &self,
        canvas: &mut Canvas,
        rng: &mut Rng,
        motor: bool,
        x: f32,
        y: f32,
        unit: f32,
    ) {
        let class = if motor { MOTORCYCLE } else { BICYCLE };
        let dark = Material::plain([0.08, 0.08, 0.08], 0.1, rng.next_u64() as u32);
        let frame = Material::plain(paint_color(rng), 0.05, rng.next_u64() as u32);
        let (wheel_w, wheel_h) = if motor {
            (unit * 0.1, unit * 0.3)
        } else {
            (unit * 0.04, unit * 0.3)
        };
        canvas.fill(
            &Shape::Rect {
                x0: x - wheel_w / 2.0,
                y0: y - wheel_h,
                x1: x + wheel_w / 2.0,
                y1: y,
            },
            class,
            &dark,
        );
        let body_w = if motor { unit * 0.3 } else { unit * 0.08 };
        canvas.fill(
            &Shape::Rect {
                x0: x - body_w / 2.0,
                y0: y - unit * 0.45,
                x1: x + body_w / 2.0,
                y1: y - wheel_h * 0.6,
            },
            class,
            &frame,
        );
        let bar = Material::plain([0.3, 0.3, 0.3], 0.05, 5);
        let bar_h = (unit * 0.03).max(1.0);
        canvas.fill(
            &Shape::Rect {
                x0: x - unit * 0.22,
                y0: y - unit * 0.5,
                x1: x + unit * 0.22,
                y1: y - unit * 0.5 + bar_h,
            },
            class,
            &bar,
        );
    }
}

/// What to paint at a depth.
#[derive(Clone, Copy, Debug)]
enum Object {
    /// Car, truck, bus or tram at a lateral lane position in `[-1, 1]` of the road half width.
    Vehicle { class: u8, lane: f32 },
    /// A pedestrian on a sidewalk, `across` from the kerb to the outer edge.
    Person { side: usize, across: f32 },
    /// A rider on a bicycle or motorcycle near a road edge.
    Rider { lane: f32, motor: bool },
    /// A bicycle or motorcycle parked on a sidewalk.
    Parked { side: usize, motor: bool },
    /// A pole with a traffic light (0), a sign (1) or nothing on top.
    Pole { side: usize, top: usize },
}
