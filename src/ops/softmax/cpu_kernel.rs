//! CPU kernels of the softmax family, and the column/row helpers that the fused cross-entropy
//! and batch norm kernels share.
//!
//! Two passes: per-column statistics (max and Σ e^(x − max), or the backward's dot product)
//! over blocks of adjacent columns so the inner loop runs along contiguous memory, then an
//! elementwise pass over contiguous rows that reads the statistics.

use super::SoftmaxBackend;
use crate::backend::cpu::{CpuBackend, PAR_CHUNK};
use crate::error::Result;
use crate::tensor::Storage;
use rayon::prelude::*;

/// Columns per task in the per-column passes: wide enough to vectorise the inner loop, narrow
/// enough that a block of `size` rows stays in cache.
const COLUMN_BLOCK: usize = 64;

/// Runs `f(o, first_column, width)` for every block of up to [`COLUMN_BLOCK`] adjacent columns
/// of an `[outer, size, inner]` tensor, in parallel, and concatenates the per-column results
/// in `[outer, inner]` order. `f` returns one result per column of its block.
pub(crate) fn per_column_blocks<T: Send>(
    outer: usize,
    size: usize,
    inner: usize,
    f: impl Fn(usize, usize, usize) -> Result<Vec<T>> + Sync,
) -> Result<Vec<T>> {
    let blocks_per_outer = inner.div_ceil(COLUMN_BLOCK);
    let block_elements = size * COLUMN_BLOCK.min(inner);
    let parts: Vec<Vec<T>> = (0..outer * blocks_per_outer)
        .into_par_iter()
        .with_min_len((PAR_CHUNK / block_elements.max(1)).max(1))
        .map(|task| {
            let o = task / blocks_per_outer;
            let first = (task % blocks_per_outer) * COLUMN_BLOCK;
            f(o, first, COLUMN_BLOCK.min(inner - first))
        })
        .collect::<Result<_>>()?;
    Ok(parts.into_iter().flatten().collect())
}

/// Runs `f(row, o, out_row)` for every contiguous row of `inner` elements of an
/// `[outer, size, inner]` output (`row = o · size + s`), in parallel.
pub(crate) fn for_each_row(
    out: &mut [f32],
    size: usize,
    inner: usize,
    f: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    if inner == 0 || size == 0 {
        return;
    }
    out.par_chunks_mut(inner)
        .enumerate()
        .with_min_len((PAR_CHUNK / inner).max(1))
        .for_each(|(row, out_row)| f(row, row / size, out_row));
}

/// Offset of element `(o, s, first_column)` in an `[outer, size, inner]` tensor.
pub(crate) fn offset(o: usize, s: usize, first_column: usize, size: usize, inner: usize) -> usize {
    (o * size + s) * inner + first_column
}

/// Per column: `(max, Σ e^(x − max))` over the middle axis, in `[outer, inner]` order.
pub(crate) fn max_and_exp_sum(
    x: &[f32],
    outer: usize,
    size: usize,
    inner: usize,
) -> Result<Vec<(f32, f32)>> {
    per_column_blocks(outer, size, inner, |o, first, width| {
        let mut max = vec![f32::NEG_INFINITY; width];
        for s in 0..size {
            let start = offset(o, s, first, size, inner);
            for (m, &v) in max.iter_mut().zip(&x[start..start + width]) {
                *m = m.max(v);
            }
        }
        let mut sum = crate::backend::cpu::buffer_cache::zeroed(width);
        for s in 0..size {
            let start = offset(o, s, first, size, inner);
            for ((acc, &m), &v) in sum.iter_mut().zip(&max).zip(&x[start..start + width]) {
                *acc += (v - m).exp();
            }
        }
        Ok(max.into_iter().zip(sum).collect())
    })
}

/// Per column: `Σ_s term(a, b)` over the middle axis of two same-shaped tensors.
fn column_sums(
    a: &[f32],
    b: &[f32],
    outer: usize,
    size: usize,
    inner: usize,
    term: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<Vec<f32>> {
    per_column_blocks(outer, size, inner, |o, first, width| {
        let mut sum = crate::backend::cpu::buffer_cache::zeroed(width);
        for s in 0..size {
            let start = offset(o, s, first, size, inner);
            let rows = a[start..start + width].iter().zip(&b[start..start + width]);
            for (acc, (&a, &b)) in sum.iter_mut().zip(rows) {
                *acc += term(a, b);
            }
        }
        Ok(sum)
    })
}

impl SoftmaxBackend for CpuBackend {
    fn softmax_forward(
        &self,
        x: &Storage,
        outer: usize,
        size: usize,
        inner: usize,
        log: bool,
    ) -> Result<Storage> {
        let x = x.as_cpu("softmax")?;
        let stats = max_and_exp_sum(x, outer, size, inner)?;
        let mut out = crate::backend::cpu::buffer_cache::zeroed(x.len());
        for_each_row(&mut out, size, inner, |row, o, out_row| {
            let src = &x[row * inner..(row + 1) * inner];
            let column_stats = &stats[o * inner..(o + 1) * inner];
            for ((y, &v), &(max, sum)) in out_row.iter_mut().zip(src).zip(column_stats) {
                *y = if log {
                    v - max - sum.ln()
                } else {
                    (v - max).exp() / sum
                };
            }
        });
        Ok(Storage::cpu(out))
    }

    fn softmax_backward(
        &self,
        y: &Storage,
        grad_out: &Storage,
        outer: usize,
        size: usize,
        inner: usize,
        log: bool,
    ) -> Result<Storage> {
        let (y, g) = (
            y.as_cpu("softmax_backward")?,
            grad_out.as_cpu("softmax_backward")?,
        );
        // Softmax needs Σ g·y per column, log-softmax Σ g.
        let sums = if log {
            column_sums(y, g, outer, size, inner, |_, g| g)?
        } else {
            column_sums(y, g, outer, size, inner, |y, g| y * g)?
        };
        let mut out = crate::backend::cpu::buffer_cache::zeroed(y.len());
        for_each_row(&mut out, size, inner, |row, o, out_row| {
            let range = row * inner..(row + 1) * inner;
            let column_sums = &sums[o * inner..(o + 1) * inner];
            let values = y[range.clone()].iter().zip(&g[range]).zip(column_sums);
            for (dx, ((&y, &g), &sum)) in out_row.iter_mut().zip(values) {
                *dx = if log {
                    g - y.exp() * sum
                } else {
                    y * (g - sum)
                };
            }
        });
        Ok(Storage::cpu(out))
    }
}
