//! The eval forward that really saves compute: per image, a path whose α is 0 is not computed
//! and a node whose α all vanish runs neither its op nor its transforms (its keep output is its
//! input, passed through). Images of a batch with different routes are grouped: each node's
//! gate, op and transforms run once, on the rows of the images that need them.
//!
//! Per image this is the original's eval run on that image alone: a node whose α all vanish
//! (or that receives nothing) is dropped, its keep output is its input and its up / down
//! outputs are absent; a node none of whose incoming paths is present receives nothing and is
//! dropped without evaluating its gate. A path with α = 0 from a node that ran is an exact zero
//! (present, never computed). Otherwise the outputs equal the dense forward's,
//! `m·x + α_keep·ReLU(h)`, `α·up(h)`, `α·down(h)`.
//!
//! FLOPs, per image, as the original counts them: `expected` from the α's; `real` the gates of
//! the nodes that got input, the ops of the nodes whose α sum passes 1e-4, and each path whose
//! α passes 1e-4, charged to the node that receives it; plus the stem (the head is added by
//! the network).

use super::cell::{Cell, Direction, GATE_EPS};
use super::flops;
use super::network::{senders, Backbone, BackboneOutput, NodeAlphas};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::nn::Module;
use crate::tensor::Tensor;

/// A path's value for the images it reaches. An image is *present* when the sending node ran
/// for it (or passed its input through, for keep); its row is *computed* when its α > 0 (or it
/// is a pass-through / residual row). Present rows that are not computed are exact zeros, never
/// materialised.
#[derive(Clone)]
struct Partial {
    /// Batch indices the path reaches, ascending.
    images: Vec<usize>,
    /// Batch indices with a computed row, ascending (a subset of `images`).
    rows: Vec<usize>,
    /// `[rows.len(), C, H, W]` (`None` when no row is computed).
    value: Option<Tensor>,
    /// `[C, H, W]` of a row.
    row_shape: [usize; 3],
    /// Expected FLOPs the path carries, per batch image (0 where absent).
    expected: Vec<f64>,
    /// Real FLOPs the path carries (its cost where α > 1e-4), charged to the receiver as the
    /// original does.
    real: Vec<f64>,
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

/// The part's rows for the batch indices `target`, zeros where it has no computed row.
fn spread(part: &Partial, target: &[usize], device: &Device) -> Result<Tensor> {
    let [c, h, w] = part.row_shape;
    let Some(value) = &part.value else {
        return Tensor::zeros([target.len(), c, h, w], device);
    };
    let positions: Vec<Option<usize>> = target
        .iter()
        .map(|t| part.rows.binary_search(t).ok())
        .collect();
    if positions.iter().all(Option::is_some) {
        let rows: Vec<usize> = positions.into_iter().flatten().collect();
        if rows.len() == part.rows.len() && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(value.clone());
        }
        return value.index_select(0, &index_tensor(&rows, device)?);
    }
    let padded = Tensor::cat(&[value, &Tensor::zeros([1, c, h, w], device)?], 0)?;
    let rows: Vec<usize> = positions
        .into_iter()
        .map(|p| p.unwrap_or(part.rows.len()))
        .collect();
    padded.index_select(0, &index_tensor(&rows, device)?)
}

/// The sum of `parts` over the union of the images they reach (`None` when they reach none).
fn sum_parts(parts: &[&Partial], device: &Device) -> Result<Option<(Vec<usize>, Tensor)>> {
    let mut union: Vec<usize> = parts
        .iter()
        .flat_map(|p| p.images.iter().copied())
        .collect();
    union.sort_unstable();
    union.dedup();
    if union.is_empty() {
        return Ok(None);
    }
    let mut total: Option<Tensor> = None;
    for part in parts.iter().filter(|p| p.value.is_some()) {
        let rows = spread(part, &union, device)?;
        total = Some(match total {
            Some(t) => t.add(&rows)?,
            None => rows,
        });
    }
    let total = match total {
        Some(t) => t,
        None => {
            let [c, h, w] = parts[0].row_shape;
            Tensor::zeros([union.len(), c, h, w], device)?
        }
    };
    Ok(Some((union, total)))
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
            if count_flops && a.iter().sum::<f32>() > GATE_EPS {
                ledger.real[b] += op_cost;
            }
        } else {
            pass_rows.push(row);
        }
    }
    let mut paths = NodePaths::default();
    let row_shape = [x.dims()[1], hw[0], hw[1]];
    let run_images: Vec<usize> = run_rows.iter().map(|&r| images[r]).collect();
    let mut keep_parts: Vec<Partial> = Vec::new();
    if !pass_rows.is_empty() {
        let pass_images: Vec<usize> = pass_rows.iter().map(|&r| images[r]).collect();
        let value = if pass_rows.len() == images.len() {
            x.clone()
        } else {
            x.index_select(0, &index_tensor(&pass_rows, &device)?)?
        };
        keep_parts.push(Partial {
            images: pass_images.clone(),
            rows: pass_images,
            value: Some(value),
            row_shape,
            expected: vec![0.0; batch],
            real: vec![0.0; batch],
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
            let cost = cell.transform_flops(direction, hw);
            let mut expected = vec![0.0; batch];
            let mut real = vec![0.0; batch];
            // Positions within the run rows whose path is computed.
            let (mut local, mut weights, mut residual) = (Vec::new(), Vec::new(), Vec::new());
            for (i, &row) in run_rows.iter().enumerate() {
                let a = alpha(row, direction);
                expected[images[row]] = f64::from(a) * cost;
                let sum: f32 = row_alphas(row).iter().sum();
                let pass = direction == Direction::Keep && sum < GATE_EPS;
                if a > 0.0 || pass {
                    local.push(i);
                    weights.push(a);
                    residual.push(if pass { 1.0 } else { 0.0 });
                }
                if a > GATE_EPS {
                    real[images[row]] = cost;
                }
            }
            let value = if local.is_empty() {
                None
            } else {
                Some(transform_rows(
                    cell, direction, &h, x, &run_rows, &local, &weights, &residual,
                )?)
            };
            let partial = Partial {
                images: run_images.clone(),
                rows: local.iter().map(|&i| run_images[i]).collect(),
                value,
                row_shape: match direction {
                    Direction::Keep => row_shape,
                    Direction::Up => [row_shape[0] / 2, 2 * hw[0], 2 * hw[1]],
                    Direction::Down => [row_shape[0] * 2, hw[0].div_ceil(2), hw[1].div_ceil(2)],
                },
                expected,
                real,
            };
            match direction {
                Direction::Up => paths.up = Some(partial),
                Direction::Keep => keep_parts.push(partial),
                Direction::Down => paths.down = Some(partial),
            }
        }
    }
    paths.keep = merge_disjoint(keep_parts, batch, &device)?;
    Ok(paths)
}

/// `direction`'s transform of the rows `local` of `h` (the cell op's output on `run_rows` of
/// `x`), times their α, plus `x` on the residual rows (keep of a node whose α sum < 1e-4).
#[allow(clippy::too_many_arguments)]
fn transform_rows(
    cell: &Cell,
    direction: Direction,
    h: &Tensor,
    x: &Tensor,
    run_rows: &[usize],
    local: &[usize],
    weights: &[f32],
    residual: &[f32],
) -> Result<Tensor> {
    let device = h.device();
    let n = local.len();
    let hp = if n == run_rows.len() {
        h.clone()
    } else {
        h.index_select(0, &index_tensor(local, &device)?)?
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
    let weight = Tensor::from_vec_on(weights.to_vec(), [n, 1, 1, 1], &device)?;
    let mut value = transformed.mul(&weight)?;
    if residual.iter().any(|&r| r > 0.0) {
        let rows: Vec<usize> = local.iter().map(|&i| run_rows[i]).collect();
        let xs = x.index_select(0, &index_tensor(&rows, &device)?)?;
        let mask = Tensor::from_vec_on(residual.to_vec(), [n, 1, 1, 1], &device)?;
        value = value.add(&xs.mul(&mask)?)?;
    }
    Ok(value)
}

/// One partial from parts over disjoint image sets.
fn merge_disjoint(parts: Vec<Partial>, batch: usize, device: &Device) -> Result<Option<Partial>> {
    if parts.len() <= 1 {
        return Ok(parts.into_iter().next());
    }
    let refs: Vec<&Partial> = parts.iter().collect();
    let Some((images, value)) = sum_parts(&refs, device)? else {
        return Ok(None);
    };
    let (mut expected, mut real) = (vec![0.0; batch], vec![0.0; batch]);
    for part in &parts {
        for b in 0..batch {
            expected[b] += part.expected[b];
            real[b] += part.real[b];
        }
    }
    Ok(Some(Partial {
        rows: images.clone(),
        images,
        value: Some(value),
        row_shape: parts[0].row_shape,
        expected,
        real,
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
                for b in 0..batch {
                    ledger.expected[b] += part.expected[b];
                    ledger.real[b] += part.real[b];
                }
            }
            let scale = 1usize << j;
            let [h4, w4] = [x.dims()[2] / scale, x.dims()[3] / scale];
            last_shapes.push(vec![batch, cell.channels, h4, w4]);
            let paths = match sum_parts(&incoming, &device)? {
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
            Some(p) => spread(p, &all, &device)?,
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
