//! The eval forward that really saves compute: per image, a path whose α is 0 is not computed
//! and a node whose α all vanish runs neither its op nor its transforms (its keep output is its
//! input, passed through). Images of a batch with different routes are grouped: each node's
//! gate, op and transforms run once, on the rows of the images that need them.
//!
//! A node none of whose incoming paths is active for an image receives nothing for it and is
//! skipped (the original's "float input" rule, applied per image instead of per batch).
//! Otherwise the outputs equal the dense forward's, `m·x + α_keep·ReLU(h)`, `α·up(h)`,
//! `α·down(h)`, where a zero α gives an exact zero.
//!
//! FLOPs: `expected` follows the original's formula from the α's; `real` is what ran, per image:
//! gates of the nodes that got input, ops of the nodes with some α > 0, and the transforms with
//! α > 0 (charged at the sender), plus the stem.

use super::cell::{Cell, Direction, GATE_EPS};
use super::flops;
use super::network::{senders, Backbone, BackboneOutput, NodeAlphas};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::nn::Module;
use crate::tensor::Tensor;

/// A path's value for some images of the batch.
#[derive(Clone)]
struct Partial {
    /// Batch indices of the rows, ascending.
    images: Vec<usize>,
    /// `[images.len(), C, H, W]`.
    value: Tensor,
    /// Expected FLOPs the path carries, per batch image (0 where absent).
    expected: Vec<f64>,
}

/// The outputs of one node, each for the images it reaches.
#[derive(Default)]
struct NodePaths {
    up: Option<Partial>,
    keep: Option<Partial>,
    down: Option<Partial>,
}

impl NodePaths {
    fn get(&self, direction: Direction) -> Option<&Partial> {
        match direction {
            Direction::Up => self.up.as_ref(),
            Direction::Keep => self.keep.as_ref(),
            Direction::Down => self.down.as_ref(),
        }
    }
}

fn index_tensor(rows: &[usize], device: &Device) -> Result<Tensor> {
    let data = rows.iter().map(|&r| r as f32).collect();
    Tensor::from_vec_on(data, [rows.len()], device)
}

/// Rows of `value` (whose rows are `images`) for `target`, zeros for images not in `images`.
fn spread(images: &[usize], value: &Tensor, target: &[usize]) -> Result<Tensor> {
    let positions: Vec<Option<usize>> = target
        .iter()
        .map(|t| images.binary_search(t).ok())
        .collect();
    let device = value.device();
    if positions.iter().all(Option::is_some) {
        let rows: Vec<usize> = positions.into_iter().flatten().collect();
        if rows.len() == images.len() && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(value.clone());
        }
        return value.index_select(0, &index_tensor(&rows, &device)?);
    }
    let mut dims = value.dims().to_vec();
    dims[0] = 1;
    let padded = Tensor::cat(&[value, &Tensor::zeros(dims, &device)?], 0)?;
    let rows: Vec<usize> = positions
        .into_iter()
        .map(|p| p.unwrap_or(images.len()))
        .collect();
    padded.index_select(0, &index_tensor(&rows, &device)?)
}

/// The sum of `parts` over the union of their images.
fn sum_parts(parts: &[&Partial]) -> Result<Option<(Vec<usize>, Tensor)>> {
    let mut union: Vec<usize> = parts
        .iter()
        .flat_map(|p| p.images.iter().copied())
        .collect();
    union.sort_unstable();
    union.dedup();
    let mut total: Option<Tensor> = None;
    for part in parts {
        let rows = spread(&part.images, &part.value, &union)?;
        total = Some(match total {
            Some(t) => t.add(&rows)?,
            None => rows,
        });
    }
    Ok(total.map(|t| (union, t)))
}

/// Per-image bookkeeping of the whole forward.
struct Ledger {
    expected: Vec<f64>,
    real: Vec<f64>,
    alphas: Vec<NodeAlphas>,
}

/// One node on the images that reach it. `flops_in` is the α-weighted expected cost of the
/// incoming paths per batch image.
fn run_node(
    cell: &Cell,
    images: &[usize],
    x: &Tensor,
    batch: usize,
    ledger: &mut Ledger,
    place: (Option<usize>, usize),
    count_flops: bool,
) -> Result<NodePaths> {
    let device = x.device();
    let hw = [x.dims()[2], x.dims()[3]];
    let gates = cell.gate_count();
    let alphas = cell.gate.alphas(x)?;
    let values = alphas.try_to_vec()?;
    let mut full = vec![0f32; batch * gates];
    for (row, &b) in images.iter().enumerate() {
        full[b * gates..(b + 1) * gates].copy_from_slice(&values[row * gates..(row + 1) * gates]);
    }
    let full_alphas = Tensor::from_vec(full, [batch, gates])?;
    ledger
        .alphas
        .push(Backbone::node_alphas(cell, place.0, place.1, &full_alphas));
    let alpha = |row: usize, direction: Direction| -> f32 {
        cell.gate_index(direction)
            .map_or(0.0, |g| values[row * gates + g])
    };
    let row_alphas = |row: usize| &values[row * gates..(row + 1) * gates];
    let (op_cost, gate_cost) = (cell.op_flops(hw), cell.gate_flops(hw));
    // Rows whose node runs (some α > 0) and rows passed through.
    let mut run_rows = Vec::new();
    let mut pass_rows = Vec::new();
    for (row, &b) in images.iter().enumerate() {
        let a = row_alphas(row);
        if count_flops {
            ledger.real[b] += gate_cost;
            let max = a.iter().fold(0f32, |m, &v| m.max(v));
            ledger.expected[b] += f64::from(max) * op_cost;
        }
        if a.iter().any(|&v| v > 0.0) {
            run_rows.push(row);
            if count_flops {
                ledger.real[b] += op_cost;
            }
        } else {
            pass_rows.push(row);
        }
    }
    let mut paths = NodePaths::default();
    let mut keep_parts: Vec<Partial> = Vec::new();
    if !pass_rows.is_empty() {
        let pass_images: Vec<usize> = pass_rows.iter().map(|&r| images[r]).collect();
        keep_parts.push(Partial {
            value: x.index_select(0, &index_tensor(&pass_rows, &device)?)?,
            images: pass_images,
            expected: vec![0.0; batch],
        });
    }
    if !run_rows.is_empty() {
        let run_x = if run_rows.len() == images.len() {
            x.clone()
        } else {
            x.index_select(0, &index_tensor(&run_rows, &device)?)?
        };
        let h = cell.cell_ops.forward(&run_x)?;
        for direction in [Direction::Up, Direction::Keep, Direction::Down] {
            if cell.gate_index(direction).is_none() {
                continue;
            }
            // Positions within the run rows whose path is computed.
            let (mut local, mut weights, mut dropped) = (Vec::new(), Vec::new(), Vec::new());
            for (i, &row) in run_rows.iter().enumerate() {
                let a = alpha(row, direction);
                let sum: f32 = row_alphas(row).iter().sum();
                let residual = direction == Direction::Keep && sum < GATE_EPS;
                if a > 0.0 || residual {
                    local.push(i);
                    weights.push(a);
                    dropped.push(if residual { 1.0 } else { 0.0 });
                }
            }
            if local.is_empty() {
                continue;
            }
            let n = local.len();
            let hp = if n == run_rows.len() {
                h.clone()
            } else {
                h.index_select(0, &index_tensor(&local, &device)?)?
            };
            let transformed = match direction {
                Direction::Keep => hp.relu()?,
                Direction::Up => cell
                    .up_transform(&hp)?
                    .ok_or_else(|| Error::invalid("dynamic", "up path without res_up"))?,
                Direction::Down => cell
                    .res_down
                    .as_ref()
                    .ok_or_else(|| Error::invalid("dynamic", "down path without res_down"))?
                    .forward(&hp)?,
            };
            let weight = Tensor::from_vec_on(weights.clone(), [n, 1, 1, 1], &device)?;
            let mut value = transformed.mul(&weight)?;
            if direction == Direction::Keep && dropped.iter().any(|&d| d > 0.0) {
                let rows: Vec<usize> = local.iter().map(|&i| run_rows[i]).collect();
                let xs = x.index_select(0, &index_tensor(&rows, &device)?)?;
                let mask = Tensor::from_vec_on(dropped, [n, 1, 1, 1], &device)?;
                value = value.add(&xs.mul(&mask)?)?;
            }
            let cost = cell.transform_flops(direction, hw);
            let mut expected = vec![0.0; batch];
            let path_images: Vec<usize> = local.iter().map(|&i| images[run_rows[i]]).collect();
            for (k, &b) in path_images.iter().enumerate() {
                expected[b] = f64::from(weights[k]) * cost;
                if weights[k] > 0.0 {
                    ledger.real[b] += cost;
                }
            }
            let partial = Partial {
                images: path_images,
                value,
                expected,
            };
            match direction {
                Direction::Up => paths.up = Some(partial),
                Direction::Keep => keep_parts.push(partial),
                Direction::Down => paths.down = Some(partial),
            }
        }
    }
    paths.keep = merge_disjoint(keep_parts, batch)?;
    Ok(paths)
}

/// One partial from parts over disjoint image sets.
fn merge_disjoint(parts: Vec<Partial>, batch: usize) -> Result<Option<Partial>> {
    if parts.len() <= 1 {
        return Ok(parts.into_iter().next());
    }
    let refs: Vec<&Partial> = parts.iter().collect();
    let Some((images, value)) = sum_parts(&refs)? else {
        return Ok(None);
    };
    let mut expected = vec![0.0; batch];
    for part in &parts {
        for (e, p) in expected.iter_mut().zip(&part.expected) {
            *e += p;
        }
    }
    Ok(Some(Partial {
        images,
        value,
        expected,
    }))
}

/// The skipping eval forward of `backbone` on a `[B, 3, H, W]` input (sizes multiples of 32).
pub fn forward_sparse(backbone: &Backbone, input: &Tensor) -> Result<BackboneOutput> {
    let batch = input.dims()[0];
    let device = input.device();
    let x = backbone.stem.forward(input)?;
    let stem_flops = flops::stem([input.dims()[2], input.dims()[3]], backbone.channels);
    let mut ledger = Ledger {
        expected: vec![0.0; batch],
        real: vec![stem_flops; batch],
        alphas: Vec::new(),
    };
    let all: Vec<usize> = (0..batch).collect();
    // init_layer: its op and gate are not counted (the original's cal_flops=False), its paths
    // are; run_node charges only the paths when `count_flops` is false.
    let mut previous = vec![run_node(
        &backbone.init_layer,
        &all,
        &x,
        batch,
        &mut ledger,
        (None, 0),
        false,
    )?];
    let mut last_shapes: Vec<Vec<usize>> = Vec::new();
    for i in 0..backbone.layers() {
        let cells = backbone.layer(i);
        let mut outputs = Vec::with_capacity(cells.len());
        last_shapes.clear();
        for (j, cell) in cells.iter().enumerate() {
            let incoming: Vec<&Partial> = senders(i, j, cells.len())
                .into_iter()
                .filter_map(|(from, direction)| {
                    previous
                        .get(from)
                        .and_then(|p: &NodePaths| p.get(direction))
                })
                .collect();
            for part in &incoming {
                for (e, p) in ledger.expected.iter_mut().zip(&part.expected) {
                    *e += p;
                }
            }
            let scale = 1usize << j;
            let [h4, w4] = [x.dims()[2] / scale, x.dims()[3] / scale];
            last_shapes.push(vec![batch, cell.channels, h4, w4]);
            let paths = match sum_parts(&incoming)? {
                Some((images, value)) => run_node(
                    cell,
                    &images,
                    &value,
                    batch,
                    &mut ledger,
                    (Some(i), j),
                    true,
                )?,
                None => {
                    let zeros = Tensor::zeros([batch, cell.gate_count()], &Device::Cpu)?;
                    ledger
                        .alphas
                        .push(Backbone::node_alphas(cell, Some(i), j, &zeros));
                    NodePaths::default()
                }
            };
            outputs.push(paths);
        }
        previous = outputs;
    }
    let mut features = Vec::with_capacity(previous.len());
    for (paths, shape) in previous.iter().zip(&last_shapes) {
        features.push(match &paths.keep {
            Some(p) => spread(&p.images, &p.value, &all)?,
            None => Tensor::zeros(shape.clone(), &device)?,
        });
    }
    let expected = Tensor::from_vec_on(
        ledger.expected.iter().map(|&v| v as f32).collect(),
        [batch],
        &device,
    )?;
    let real = Tensor::from_vec_on(
        ledger.real.iter().map(|&v| v as f32).collect(),
        [batch],
        &device,
    )?;
    Ok(BackboneOutput {
        features,
        expected,
        real,
        alphas: ledger.alphas,
    })
}
