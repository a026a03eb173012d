//! One node of the routing space (`Cell`): the cell op on the aggregated input, the soft
//! conditional gate, and the up / keep / down transforms weighted by the gate's α.
//!
//! The dense forward here is the original's training forward, run for every image whatever
//! its α: `keep = m·x + α_keep·ReLU(h)` (m = 1 where the image's α sum to < 1e-4),
//! `up = α_up·bilinear×2(res_up(h))`, `down = α_down·res_down(h)`, with `h = SepConv(x) + x`.
//! The eval-mode forward that skips paths per image is in `skip.rs`.

use super::flops;
use super::layers::{ConvNorm, Function, Gate, MixedOp, BILINEAR};
use crate::autograd::no_grad;
use crate::error::Result;
use crate::nn::{Module, Sequential};
use crate::ops::interpolate::Resize;
use crate::tensor::Tensor;
use std::any::Any;

/// The original's threshold on α (and on the sum of a node's α) below which a path or a node
/// counts as off.
pub const GATE_EPS: f32 = 1e-4;

/// The three outgoing directions, in the original's `[up, keep, down]` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// To the next coarser… finer scale j−1 (half the channels, ×2 resolution).
    Up,
    /// To the same scale.
    Keep,
    /// To scale j+1 (double the channels, stride 2).
    Down,
}

/// A path's value with the FLOPs it carries into the node that receives it (per image, MFLOPs):
/// `expected` is the transform's cost times the sender's α (differentiable), `real` the cost
/// where the α passes the threshold.
#[derive(Clone)]
pub struct Branch {
    /// The path's feature map `[B, C, H, W]`.
    pub value: Tensor,
    /// `[B]` expected FLOPs of the transform.
    pub expected: Tensor,
    /// `[B]` real FLOPs of the transform (no gradient).
    pub real: Tensor,
}

/// What a dense node forward produces.
pub struct NodeOutput {
    /// Up / keep / down branches (None where the node has no such transform).
    pub up: Option<Branch>,
    /// The keep branch (always present).
    pub keep: Branch,
    /// The down branch.
    pub down: Option<Branch>,
    /// α `[B, gates]`.
    pub alphas: Tensor,
    /// `[B]` expected FLOPs of the cell op: max α · op FLOPs.
    pub op_expected: Tensor,
    /// `[B]` real FLOPs of the cell op and gate: [Σα > 1e-4]·op FLOPs + gate FLOPs.
    pub op_real: Tensor,
}

/// A node: `cell_ops`, `res_up`, `res_down`, `gate_conv_beta` (the state-dict order).
pub struct Cell {
    /// Channels in and out (64·2^j).
    pub channels: usize,
    /// `cell_ops`: SepConv + identity.
    pub cell_ops: MixedOp,
    /// `res_up`: `[ReLU, 1×1 conv-BN-ReLU C→C/2]`, when the node sends to the finer scale.
    pub res_up: Option<Sequential>,
    /// `res_down`: `[ReLU, 1×1 s2 conv-BN-ReLU C→2C]`, when the node sends to the coarser one.
    pub res_down: Option<Sequential>,
    /// `gate_conv_beta`.
    pub gate: Gate,
}

impl Cell {
    /// A node at `channels` with the allowed transforms.
    pub fn new(
        channels: usize,
        allow_up: bool,
        allow_down: bool,
        gate_bias: f32,
        small_gate: bool,
    ) -> Result<Self> {
        let transform = |out: usize, stride: usize| -> Result<Sequential> {
            Ok(Sequential::default()
                .push(Function::relu())
                .push(ConvNorm::pointwise(channels, out, stride, true)?))
        };
        let gates = 1 + usize::from(allow_up) + usize::from(allow_down);
        Ok(Cell {
            channels,
            cell_ops: MixedOp::new(channels)?,
            res_up: allow_up.then(|| transform(channels / 2, 1)).transpose()?,
            res_down: allow_down.then(|| transform(2 * channels, 2)).transpose()?,
            gate: Gate::new(channels, gates, gate_bias, small_gate)?,
        })
    }

    /// Number of gate outputs: 1 (keep) + up + down.
    pub fn gate_count(&self) -> usize {
        1 + usize::from(self.res_up.is_some()) + usize::from(self.res_down.is_some())
    }

    /// Index of `direction`'s α: keep 0, up 1, down last (`None` if the node has no such path).
    pub fn gate_index(&self, direction: Direction) -> Option<usize> {
        match direction {
            Direction::Keep => Some(0),
            Direction::Up => self.res_up.as_ref().map(|_| 1),
            Direction::Down => self.res_down.as_ref().map(|_| self.gate_count() - 1),
        }
    }

    /// FLOPs of the transform towards `direction` at map size `hw` (MFLOPs).
    pub fn transform_flops(&self, direction: Direction, hw: [usize; 2]) -> f64 {
        match direction {
            Direction::Keep => flops::keep(hw, self.channels),
            Direction::Up => flops::up(hw, self.channels),
            Direction::Down => flops::down(hw, self.channels),
        }
    }

    /// FLOPs of the cell op at `hw`.
    pub fn op_flops(&self, hw: [usize; 2]) -> f64 {
        flops::cell_op(hw, self.channels)
    }

    /// FLOPs of the gate at `hw` (the small gate's at `⌊hw/4⌋`).
    pub fn gate_flops(&self, hw: [usize; 2]) -> f64 {
        flops::gate(hw, self.channels, self.gate_count(), self.gate.small)
    }

    /// `res_up` then bilinear ×2 (the upsampling comes after the conv).
    pub fn up_transform(&self, h: &Tensor) -> Result<Option<Tensor>> {
        self.res_up
            .as_ref()
            .map(|up| {
                up.forward(h)?
                    .interpolate(Resize::Scale([2.0, 2.0]), BILINEAR)
            })
            .transpose()
    }

    /// The dense forward of the original (every path computed for every image).
    pub fn forward_dense(&self, x: &Tensor) -> Result<NodeOutput> {
        let batch = x.dims()[0];
        let hw = [x.dims()[2], x.dims()[3]];
        let alphas = self.gate.alphas(x)?;
        let column = |i: usize| alphas.narrow(1, i, 1);
        let as_map = |a: &Tensor| a.reshape(&[batch as isize, 1, 1, 1]);
        let as_vec = |a: &Tensor| a.reshape(&[batch as isize]);
        let sum = alphas.sum(&[1], false)?;
        let eps = Tensor::full([1], GATE_EPS, &x.device())?;
        let dropped = eps.gt(&sum)?;
        let h = self.cell_ops.forward(x)?;

        let branch = |direction: Direction, value: Tensor| -> Result<Branch> {
            let alpha = self
                .gate_index(direction)
                .map(column)
                .transpose()?
                .ok_or_else(|| crate::Error::invalid("Cell", "no gate for a computed path"))?;
            let cost = self.transform_flops(direction, hw) as f32;
            let real = no_grad(|| as_vec(&alpha.gt(&eps)?)?.mul_scalar(cost))?;
            Ok(Branch {
                value: value.mul(&as_map(&alpha)?)?,
                expected: as_vec(&alpha)?.mul_scalar(cost)?,
                real,
            })
        };
        let mut keep = branch(Direction::Keep, h.relu()?)?;
        keep.value = keep.value.add(&x.mul(&as_map(&dropped)?)?)?;
        let up = self
            .up_transform(&h)?
            .map(|v| branch(Direction::Up, v))
            .transpose()?;
        let down = self
            .res_down
            .as_ref()
            .map(|d| branch(Direction::Down, d.forward(&h)?))
            .transpose()?;
        let op_cost = self.op_flops(hw) as f32;
        let op_expected = alphas.max(1, false)?.0.mul_scalar(op_cost)?;
        let op_real = no_grad(|| {
            sum.gt(&eps)?
                .mul_scalar(op_cost)?
                .add_scalar(self.gate_flops(hw) as f32)
        })?;
        Ok(NodeOutput {
            up,
            keep,
            down,
            alphas,
            op_expected,
            op_real,
        })
    }
}

impl Module for Cell {
    fn type_name(&self) -> &'static str {
        "Cell"
    }

    /// The keep output of the dense forward.
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        Ok(self.forward_dense(input)?.keep.value)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut out = vec![("cell_ops".to_string(), &self.cell_ops as &dyn Module)];
        if let Some(up) = &self.res_up {
            out.push(("res_up".to_string(), up));
        }
        if let Some(down) = &self.res_down {
            out.push(("res_down".to_string(), down));
        }
        out.push(("gate_conv_beta".to_string(), &self.gate));
        out
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
