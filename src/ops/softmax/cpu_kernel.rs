//! CPU kernels of the softmax family, and the column/row helpers that the fused cross-entropy
//! and batch norm kernels share.
//!
//! Two passes: per-column statistics (max and Σ e^(x − max), or the backward's dot product)
//! over blocks of adjacent columns so the inner loop runs along contiguous memory, then an
//! elementwise pass over contiguous rows that reads the statistics.
//!
//! Soft routing runs one task per batch item: one pass over its `[tokens, slots]` logits
//! updates a running (max, sum) for every row and every column at once, then one pass writes
//! both outputs; its backward likewise gathers the row and column dot products in one pass.

use super::{RouteLayout, SoftmaxBackend};
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
        let mut sum = crate::backend::cpu::pool::zeroed(width);
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
        let mut sum = crate::backend::cpu::pool::zeroed(width);
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
        let mut out = crate::backend::cpu::pool::zeroed(x.len());
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
        let mut out = crate::backend::cpu::pool::zeroed(y.len());
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

    fn soft_route_forward(&self, logits: &Storage, layout: RouteLayout) -> Result<Storage> {
        let x = logits.as_cpu("soft_route")?;
        let RouteLayout { tokens, slots, .. } = layout;
        let per_batch = tokens * slots;
        let mut out = crate::backend::cpu::pool::zeroed(2 * layout.numel());
        if per_batch == 0 {
            return Ok(Storage::cpu(out));
        }
        let (dispatch, combine) = out.split_at_mut(layout.numel());
        dispatch
            .par_chunks_mut(per_batch)
            .zip(combine.par_chunks_mut(per_batch))
            .zip(x.par_chunks(per_batch))
            .for_each(|((dispatch, combine), x)| {
                // One pass: every logit updates its row's and its column's running (max, sum).
                let mut rows = vec![RunningMax::EMPTY; tokens];
                let mut columns = vec![RunningMax::EMPTY; slots];
                for (row, line) in rows.iter_mut().zip(x.chunks(slots)) {
                    for (column, &v) in columns.iter_mut().zip(line) {
                        row.push(v);
                        column.push(v);
                    }
                }
                let outputs = dispatch.chunks_mut(slots).zip(combine.chunks_mut(slots));
                for ((row, line), (dispatch, combine)) in
                    rows.iter().zip(x.chunks(slots)).zip(outputs)
                {
                    for (((d, c), &v), column) in dispatch
                        .iter_mut()
                        .zip(combine.iter_mut())
                        .zip(line)
                        .zip(&columns)
                    {
                        *d = column.softmax(v);
                        *c = row.softmax(v);
                    }
                }
            });
        Ok(Storage::cpu(out))
    }

    fn soft_route_backward(
        &self,
        routes: &Storage,
        grad_routes: &Storage,
        layout: RouteLayout,
    ) -> Result<Storage> {
        const OP: &str = "soft_route_backward";
        let (routes, grad) = (routes.as_cpu(OP)?, grad_routes.as_cpu(OP)?);
        let RouteLayout { tokens, slots, .. } = layout;
        let (n, per_batch) = (layout.numel(), tokens * slots);
        let mut out = crate::backend::cpu::pool::zeroed(n);
        if per_batch == 0 {
            return Ok(Storage::cpu(out));
        }
        let (dispatch, combine) = routes.split_at(n);
        let (grad_dispatch, grad_combine) = grad.split_at(n);
        out.par_chunks_mut(per_batch)
            .enumerate()
            .for_each(|(b, out)| {
                let range = b * per_batch..(b + 1) * per_batch;
                let (d, c) = (&dispatch[range.clone()], &combine[range.clone()]);
                let (gd, gc) = (&grad_dispatch[range.clone()], &grad_combine[range]);
                // One pass: Σ_slots g_C·C per token (row), Σ_tokens g_D·D per slot (column).
                let mut row_dots = vec![0.0f32; tokens];
                let mut column_dots = vec![0.0f32; slots];
                for (i, row_dot) in row_dots.iter_mut().enumerate() {
                    let line = i * slots..(i + 1) * slots;
                    let terms = d[line.clone()].iter().zip(&gd[line.clone()]);
                    let terms = terms.zip(c[line.clone()].iter().zip(&gc[line]));
                    for (column_dot, ((&d, &gd), (&c, &gc))) in column_dots.iter_mut().zip(terms) {
                        *column_dot += gd * d;
                        *row_dot += gc * c;
                    }
                }
                for (k, dx) in out.iter_mut().enumerate() {
                    let (i, j) = (k / slots, k % slots);
                    *dx = d[k] * (gd[k] - column_dots[j]) + c[k] * (gc[k] - row_dots[i]);
                }
            });
        Ok(Storage::cpu(out))
    }
}

/// A softmax line's running maximum and `Σ e^(x − max)`, updated one value at a time (the sum
/// is rescaled when the maximum grows).
#[derive(Clone, Copy)]
struct RunningMax {
    max: f32,
    sum: f32,
}

impl RunningMax {
    const EMPTY: RunningMax = RunningMax {
        max: f32::NEG_INFINITY,
        sum: 0.0,
    };

    fn push(&mut self, v: f32) {
        if v > self.max {
            self.sum = self.sum * (self.max - v).exp() + 1.0;
            self.max = v;
        } else {
            self.sum += (v - self.max).exp();
        }
    }

    /// `e^(v − max) / Σ`, the softmax of `v` within the line.
    fn softmax(&self, v: f32) -> f32 {
        (v - self.max).exp() / self.sum
    }
}
