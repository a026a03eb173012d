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

/// Pixels between neighbouring nodes.
pub const CELL: i64 = 56;
/// Left margin (the scale labels) and top margin (the title) in pixels.
const LEFT: i64 = 64;
const TOP: i64 = 56;
/// Bottom margin (the layer labels) and right margin.
const BOTTOM: i64 = 44;
const RIGHT: i64 = 28;
const MAX_WIDTH: f64 = 11.0;
/// Colours: background, paths (α > 0), nodes with some α > 0, nodes with every α = 0.
const BACKGROUND: Rgb<u8> = Rgb([28, 30, 38]);
/// The colour of a drawn path.
pub const PATH_COLOR: Rgb<u8> = Rgb([90, 160, 255]);
const NODE_ON: Rgb<u8> = Rgb([235, 90, 60]);
const NODE_OFF: Rgb<u8> = Rgb([110, 110, 118]);

/// Centre of the node of `column` (0 = `init_layer`, i + 1 = layer i) and `scale` (0 = 1/4).
pub fn centre(column: usize, scale: usize) -> (i64, i64) {
    (LEFT + column as i64 * CELL, TOP + scale as i64 * CELL)
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

/// The picture of `route` for a space with `cells[i]` nodes in layer i, headed by `title`:
/// scales 1/4 … 1/32 labelled on the left, layers (`init`, 1 … L) below, in the plot font
/// when one is found (the drawing itself needs none).
pub fn draw_route(route: &Route, cells: &[usize], title: &str) -> RgbImage {
    let columns = cells.len() + 1;
    let (right_edge, bottom_edge) = centre(columns - 1, 3);
    // Wide enough for the title (about 9 px per character at 18 px).
    let width = (right_edge + RIGHT).max(24 + 9 * title.chars().count() as i64) as u32;
    let height = (bottom_edge + BOTTOM) as u32;
    let mut img = RgbImage::from_pixel(width, height, BACKGROUND);
    let path_color = PATH_COLOR;
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
        let color = if on { NODE_ON } else { NODE_OFF };
        thick_line(
            &mut img,
            centre(column, scale),
            centre(column, scale),
            10.0,
            color,
        );
    }
    label(&mut img, title, cells);
    img
}

/// The title, the scale labels and the layer numbers (every layer up to 20 layers, else every
/// fifth).
fn label(img: &mut RgbImage, title: &str, cells: &[usize]) {
    use crate::train::plots::draw_text_on;
    draw_text_on(img, title, (12, 10), 18);
    for (scale, name) in ["1/4", "1/8", "1/16", "1/32"].iter().enumerate() {
        let (_, y) = centre(0, scale);
        draw_text_on(img, name, (10, (y - 8) as usize), 15);
    }
    let every = if cells.len() > 20 { 5 } else { 1 };
    let (_, bottom) = centre(0, 3);
    for column in 0..=cells.len() {
        let (x, _) = centre(column, 0);
        let text = match column {
            0 => "init".to_string(),
            c if c % every == 0 => c.to_string(),
            _ => continue,
        };
        let shift = 4 * text.len() as i64;
        draw_text_on(
            img,
            &text,
            ((x - shift).max(0) as usize, (bottom + 16) as usize),
            14,
        );
    }
}
