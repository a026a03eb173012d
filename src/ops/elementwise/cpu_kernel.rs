//! CPU kernels of the elementwise family.

use super::{BinaryOp, ElementwiseBackend, UnaryOp};
use crate::backend::cpu::{map_binary, map_unary, CpuBackend, PAR_CHUNK};
use crate::error::Result;
use crate::tensor::{Shape, Storage};
use rayon::prelude::*;

fn unary_fn(op: UnaryOp) -> impl Fn(f32) -> f32 + Sync {
    move |x: f32| match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        UnaryOp::AddScalar(c) => x + c,
        UnaryOp::MulScalar(c) => x * c,
        UnaryOp::PowScalar(p) => {
            if p == 2.0 {
                x * x
            } else if p == 1.0 {
                x
            } else if p == 0.0 {
                1.0
            } else {
                x.powf(p)
            }
        }
        UnaryOp::Clamp { min, max } => x.max(min).min(max),
        UnaryOp::InRange { min, max } => {
            if x >= min && x <= max {
                1.0
            } else {
                0.0
            }
        }
    }
}

fn add(a: f32, b: f32) -> f32 {
    a + b
}

fn mul(a: f32, b: f32) -> f32 {
    a * b
}

fn binary_fn(op: BinaryOp) -> impl Fn(f32, f32) -> f32 + Sync {
    move |a: f32, b: f32| match op {
        BinaryOp::Add => add(a, b),
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => mul(a, b),
        BinaryOp::Div => a / b,
        BinaryOp::Maximum => {
            if a >= b || a.is_nan() {
                a
            } else {
                b
            }
        }
        BinaryOp::Minimum => {
            if a <= b || a.is_nan() {
                a
            } else {
                b
            }
        }
        BinaryOp::Equal => (a == b) as u8 as f32,
        BinaryOp::Greater => (a > b) as u8 as f32,
    }
}

/// Element offsets into a broadcast operand for each output row (the last output axis).
fn row_offset(row: usize, out_dims: &[usize], strides: &[usize]) -> usize {
    let mut rem = row;
    let mut offset = 0;
    for axis in (0..out_dims.len().saturating_sub(1)).rev() {
        let d = out_dims[axis];
        offset += (rem % d) * strides[axis];
        rem /= d;
    }
    offset
}

/// Calls `f(out_row, lhs_row_offset, rhs_row_offset, lhs_inner_stride, rhs_inner_stride)` for
/// every row of the output in parallel.
fn for_each_broadcast_row(
    out: &mut [f32],
    out_shape: &Shape,
    lhs_strides: &[usize],
    rhs_strides: &[usize],
    f: impl Fn(&mut [f32], usize, usize) + Sync,
) {
    let dims = out_shape.dims();
    let row_len = dims.last().copied().unwrap_or(1).max(1);
    let rows_per_task = (PAR_CHUNK / row_len).max(1);
    out.par_chunks_mut(row_len)
        .enumerate()
        .with_min_len(rows_per_task)
        .for_each(|(row, o)| {
            f(
                o,
                row_offset(row, dims, lhs_strides),
                row_offset(row, dims, rhs_strides),
            )
        });
}

/// `f(lhs, rhs)` elementwise with broadcasting; `shapes` are `[lhs, rhs, out]`.
fn binary_with(
    f: impl Fn(f32, f32) -> f32 + Sync,
    a: &[f32],
    b: &[f32],
    [lhs_shape, rhs_shape, out_shape]: [&Shape; 3],
) -> Vec<f32> {
    if lhs_shape == out_shape && rhs_shape == out_shape {
        return map_binary(a, b, f);
    }
    if b.len() == 1 && lhs_shape == out_shape {
        let s = b[0];
        return map_unary(a, |x| f(x, s));
    }
    if a.len() == 1 && rhs_shape == out_shape {
        let s = a[0];
        return map_unary(b, |x| f(s, x));
    }
    let ls = lhs_shape.broadcast_strides(out_shape);
    let rs = rhs_shape.broadcast_strides(out_shape);
    let (l_inner, r_inner) = (
        ls.last().copied().unwrap_or(0),
        rs.last().copied().unwrap_or(0),
    );
    // Every row is written.
    let mut out = crate::backend::cpu::buffer_cache::uninit(out_shape.numel());
    for_each_broadcast_row(&mut out, out_shape, &ls, &rs, |o, lo, ro| {
        for (j, o) in o.iter_mut().enumerate() {
            *o = f(a[lo + j * l_inner], b[ro + j * r_inner]);
        }
    });
    out
}

impl ElementwiseBackend for CpuBackend {
    fn unary(&self, op: UnaryOp, x: &Storage) -> Result<Storage> {
        Ok(Storage::cpu(map_unary(x.as_cpu("unary")?, unary_fn(op))))
    }

    fn binary(
        &self,
        op: BinaryOp,
        lhs: &Storage,
        lhs_shape: &Shape,
        rhs: &Storage,
        rhs_shape: &Shape,
        out_shape: &Shape,
    ) -> Result<Storage> {
        let (a, b) = (lhs.as_cpu("binary")?, rhs.as_cpu("binary")?);
        let shapes = [lhs_shape, rhs_shape, out_shape];
        // The common ops get loops of their own (vectorised); the general closure matches `op`
        // per element.
        let out = match op {
            BinaryOp::Add => binary_with(add, a, b, shapes),
            BinaryOp::Mul => binary_with(mul, a, b, shapes),
            _ => binary_with(binary_fn(op), a, b, shapes),
        };
        Ok(Storage::cpu(out))
    }

    fn broadcast_to(&self, x: &Storage, shape: &Shape, target: &Shape) -> Result<Storage> {
        let x = x.as_cpu("broadcast_to")?;
        let strides = shape.broadcast_strides(target);
        let inner = strides.last().copied().unwrap_or(0);
        let mut out = crate::backend::cpu::buffer_cache::zeroed(target.numel());
        for_each_broadcast_row(&mut out, target, &strides, &strides, |o, offset, _| {
            for (j, o) in o.iter_mut().enumerate() {
                *o = x[offset + j * inner];
            }
        });
        Ok(Storage::cpu(out))
    }
}
