//! CPU kernels of the indexing family. Reads go through one helper ([`select_along_axis`]) and
//! accumulations through another ([`accumulate_along_axis`]), which makes scatter-adds
//! deterministic by giving each task its own block of output columns.

use super::{AxisIndexParams, IndexBackend, TopkParams};
use crate::backend::cpu::{CpuBackend, SendPtr, PAR_CHUNK};
use crate::error::Result;
use crate::ops::shape::ShapeBackend;
use crate::tensor::{Shape, Storage};
use rayon::prelude::*;
use std::cmp::Ordering;

impl IndexBackend for CpuBackend {
    fn gather(&self, x: &Storage, index: &Storage, p: AxisIndexParams) -> Result<Storage> {
        let (x, index) = (x.as_cpu("gather")?, index.as_cpu("gather")?);
        let out = select_along_axis(x, p, |row, i| index[row * p.inner + i] as usize);
        Ok(Storage::cpu(out))
    }

    fn scatter_add(
        &self,
        base: &Storage,
        index: &Storage,
        src: &Storage,
        p: AxisIndexParams,
    ) -> Result<Storage> {
        let mut out = base.as_cpu("scatter_add")?.to_vec();
        let (index, src) = (index.as_cpu("scatter_add")?, src.as_cpu("scatter_add")?);
        accumulate_along_axis(&mut out, src, p, |row, i| index[row * p.inner + i] as usize);
        Ok(Storage::cpu(out))
    }

    fn index_select(&self, x: &Storage, indices: &Storage, p: AxisIndexParams) -> Result<Storage> {
        let (x, indices) = (x.as_cpu("index_select")?, indices.as_cpu("index_select")?);
        let out = select_along_axis(x, p, |row, _| indices[row % p.count] as usize);
        Ok(Storage::cpu(out))
    }

    fn index_select_backward(
        &self,
        grad_out: &Storage,
        indices: &Storage,
        p: AxisIndexParams,
    ) -> Result<Storage> {
        let g = grad_out.as_cpu("index_select_backward")?;
        let indices = indices.as_cpu("index_select_backward")?;
        let mut out = crate::backend::cpu::buffer_cache::zeroed(p.outer * p.size * p.inner);
        accumulate_along_axis(&mut out, g, p, |row, _| indices[row % p.count] as usize);
        Ok(Storage::cpu(out))
    }

    fn topk(&self, x: &Storage, p: TopkParams) -> Result<(Storage, Storage)> {
        let x = x.as_cpu("topk")?;
        let lanes = p.outer * p.inner;
        // Results lane by lane (`[outer, inner, k]`), one lane per task.
        let mut values = crate::backend::cpu::buffer_cache::zeroed(lanes * p.k);
        let mut indices = crate::backend::cpu::buffer_cache::zeroed(lanes * p.k);
        if p.k > 0 {
            type LaneOrder = fn(&(f32, usize), &(f32, usize)) -> Ordering;
            let order: LaneOrder = if p.largest {
                |a: &(f32, usize), b: &(f32, usize)| value_order(b.0, a.0).then(a.1.cmp(&b.1))
            } else {
                |a: &(f32, usize), b: &(f32, usize)| value_order(a.0, b.0).then(a.1.cmp(&b.1))
            };
            values
                .par_chunks_mut(p.k)
                .zip(indices.par_chunks_mut(p.k))
                .with_min_len((PAR_CHUNK / (p.size * 8).max(1)).max(1))
                .enumerate()
                .for_each_init(Vec::new, |lane, (lane_index, (values, indices))| {
                    let (o, i) = (lane_index / p.inner, lane_index % p.inner);
                    let base = o * p.size * p.inner + i;
                    lane.clear();
                    lane.extend((0..p.size).map(|s| (x[base + s * p.inner], s)));
                    if p.k < p.size {
                        lane.select_nth_unstable_by(p.k - 1, order);
                    }
                    lane[..p.k].sort_unstable_by(order);
                    for ((v, ix), &(value, s)) in values.iter_mut().zip(indices).zip(&lane[..p.k]) {
                        *v = value;
                        *ix = s as f32;
                    }
                });
        }
        if p.inner == 1 {
            return Ok((Storage::cpu(values), Storage::cpu(indices)));
        }
        let lane_major = Shape::new(vec![p.outer, p.inner, p.k]);
        Ok((
            self.permute(&Storage::cpu(values), &lane_major, &[0, 2, 1])?,
            self.permute(&Storage::cpu(indices), &lane_major, &[0, 2, 1])?,
        ))
    }
}

/// Orders numbers as usual, with NaN above everything (PyTorch's top-k / sort convention)
/// and `-0.0 == 0.0`.
fn value_order(a: f32, b: f32) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// `out[o, j, i] = x[o, source(o·count + j, i), i]` for `out` of `[outer, count, inner]`,
/// parallel over output rows.
fn select_along_axis(
    x: &[f32],
    p: AxisIndexParams,
    source: impl Fn(usize, usize) -> usize + Sync,
) -> Vec<f32> {
    let mut out = crate::backend::cpu::buffer_cache::zeroed(p.outer * p.count * p.inner);
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(p.inner)
        .with_min_len((PAR_CHUNK / p.inner).max(1))
        .enumerate()
        .for_each(|(row, out_row)| {
            let base = (row / p.count) * p.size * p.inner;
            for (i, o) in out_row.iter_mut().enumerate() {
                *o = x[base + source(row, i) * p.inner + i];
            }
        });
    out
}

/// `out[o, target(o·count + j, i), i] += values[o, j, i]` for `out` of `[outer, size, inner]`
/// and `values` of `[outer, count, inner]`. Deterministic: each task owns one block of
/// columns `i` of one outer slab (no two tasks write one element) and adds in order of `j`.
fn accumulate_along_axis(
    out: &mut [f32],
    values: &[f32],
    p: AxisIndexParams,
    target: impl Fn(usize, usize) -> usize + Sync,
) {
    if out.is_empty() || values.is_empty() {
        return;
    }
    // Split columns only when there are too few outer slabs to keep the threads busy.
    let tasks_wanted = rayon::current_num_threads() * 4;
    let column_block = if p.outer >= tasks_wanted {
        p.inner
    } else {
        p.inner
            .div_ceil(tasks_wanted.div_ceil(p.outer))
            .max(64)
            .min(p.inner)
    };
    let blocks_per_slab = p.inner.div_ceil(column_block);
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..p.outer * blocks_per_slab)
        .into_par_iter()
        .for_each(|task| {
            let ptr = out_ptr;
            let (o, block) = (task / blocks_per_slab, task % blocks_per_slab);
            let columns = block * column_block..((block + 1) * column_block).min(p.inner);
            let slab = o * p.size * p.inner;
            for j in 0..p.count {
                let row = o * p.count + j;
                for i in columns.clone() {
                    let at = slab + target(row, i) * p.inner + i;
                    // SAFETY: `at` lies in slab `o`, column `i`, which only this task writes
                    // (targets were checked to be < size before the kernel), and `out`
                    // outlives the parallel loop.
                    unsafe { *ptr.0.add(at) += values[row * p.inner + i] };
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulate_matches_serial_sum_with_repeats() {
        let p = AxisIndexParams {
            outer: 2,
            size: 3,
            inner: 130,
            count: 5,
        };
        let values: Vec<f32> = (0..p.outer * p.count * p.inner).map(|v| v as f32).collect();
        let target = |row: usize, i: usize| (row * 7 + i) % 3;
        let mut out = crate::backend::cpu::buffer_cache::zeroed(p.outer * p.size * p.inner);
        accumulate_along_axis(&mut out, &values, p, target);
        let mut expected = crate::backend::cpu::buffer_cache::zeroed(out.len());
        for o in 0..p.outer {
            for j in 0..p.count {
                for i in 0..p.inner {
                    let row = o * p.count + j;
                    expected[(o * p.size + target(row, i)) * p.inner + i] +=
                        values[row * p.inner + i];
                }
            }
        }
        assert_eq!(out, expected);
    }
}
