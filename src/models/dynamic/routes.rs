//! Route pictures of a dynamic network, drawn as the paper draws its routing space: layers
//! left to right (`init_layer` first), scales top (1/4) to bottom (1/32), one dot per node, and
//! each path with α > 0 a line from the sending node to the receiving one whose width is
//! proportional to α. One picture per image and one of the average α over a split.

use super::cell::Direction;
use super::network::{senders, NodeAlphas};
use crate::error::Result;
use image::{Rgb, RgbImage};
use std::collections::BTreeMap;

/// α per node and direction: `(layer + 1, scale)` → `[(direction, α)]` (layer 0 = `init_layer`).
pub type Route = BTreeMap<(usize, usize), Vec<(Direction, f64)>>;

/// The route of image `b` of a forward's α record.
pub fn route_of(alphas: &[NodeAlphas], b: usize) -> Result<Route> {
    let mut route = Route::new();
    for node in alphas {
        let gates = node.directions.len();
        let values = node.alphas.try_to_vec()?;
        let row = &values[b * gates..(b + 1) * gates];
        let column = node.layer.map_or(0, |i| i + 1);
        let entries = node
            .directions
            .iter()
            .zip(row)
            .map(|(&d, &a)| (d, f64::from(a)))
            .collect();
        route.insert((column, node.scale), entries);
    }
    Ok(route)
}

/// Adds `route` into the running sum `total` (for the split average).
pub fn accumulate(total: &mut Route, route: &Route) {
    for (key, entries) in route {
        let slot = total
            .entry(*key)
            .or_insert_with(|| entries.iter().map(|&(d, _)| (d, 0.0)).collect());
        for ((_, sum), (_, a)) in slot.iter_mut().zip(entries) {
            *sum += a;
        }
    }
}

/// `route` with every α divided by `count`.
pub fn scaled(route: &Route, count: usize) -> Route {
    route
        .iter()
        .map(|(k, entries)| {
            let mean = entries
                .iter()
                .map(|&(d, a)| (d, a / count.max(1) as f64))
                .collect();
            (*k, mean)
        })
        .collect()
}

const CELL: i64 = 48;
const MARGIN: i64 = 24;
const MAX_WIDTH: f64 = 9.0;

fn centre(column: usize, scale: usize) -> (i64, i64) {
    (MARGIN + column as i64 * CELL, MARGIN + scale as i64 * CELL)
}

/// A line of `width` pixels from `a` to `b`.
fn thick_line(img: &mut RgbImage, a: (i64, i64), b: (i64, i64), width: f64, color: Rgb<u8>) {
    let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).max(1);
    let half = (width / 2.0).max(0.5);
    for s in 0..=steps {
        let t = s as f64 / steps as f64;
        let x = a.0 as f64 + t * (b.0 - a.0) as f64;
        let y = a.1 as f64 + t * (b.1 - a.1) as f64;
        let r = half.ceil() as i64;
        for dy in -r..=r {
            for dx in -r..=r {
                if ((dx * dx + dy * dy) as f64) <= half * half + 0.25 {
                    let (px, py) = (x.round() as i64 + dx, y.round() as i64 + dy);
                    if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height()
                    {
                        img.put_pixel(px as u32, py as u32, color);
                    }
                }
            }
        }
    }
}

/// The picture of `route` for a space of `layers` layers with `cells[i]` nodes in layer i.
pub fn draw_route(route: &Route, cells: &[usize]) -> RgbImage {
    let columns = cells.len() + 1;
    let width = (2 * MARGIN + (columns as i64 - 1) * CELL) as u32;
    let height = (2 * MARGIN + 3 * CELL) as u32;
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let path_color = Rgb([40, 90, 200]);
    for (i, &n) in cells.iter().enumerate() {
        for j in 0..n {
            for (from, direction) in senders(i, j, n) {
                let alpha = route
                    .get(&(i, from))
                    .and_then(|entries| entries.iter().find(|(d, _)| *d == direction))
                    .map_or(0.0, |&(_, a)| a);
                if alpha > 0.0 {
                    thick_line(
                        &mut img,
                        centre(i, from),
                        centre(i + 1, j),
                        1.0 + alpha * (MAX_WIDTH - 1.0),
                        path_color,
                    );
                }
            }
        }
    }
    for (&(column, scale), entries) in route {
        let on = entries.iter().any(|&(_, a)| a > 0.0);
        let color = if on {
            Rgb([220, 60, 40])
        } else {
            Rgb([170, 170, 170])
        };
        thick_line(
            &mut img,
            centre(column, scale),
            centre(column, scale),
            9.0,
            color,
        );
    }
    img
}
