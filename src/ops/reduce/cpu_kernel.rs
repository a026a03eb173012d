//! CPU kernels of the reduction family.

use super::ReduceBackend;
use crate::backend::cpu::{CpuBackend, PAR_CHUNK};
use crate::error::Result;
use crate::tensor::Storage;
use rayon::prelude::*;

impl ReduceBackend for CpuBackend {
    fn sum_axis(&self, x: &Storage, outer: usize, size: usize, inner: usize) -> Result<Storage> {
        let x = x.as_cpu("sum")?;
        let mut out = crate::backend::cpu::buffer_cache::zeroed(outer * inner);
        if inner == 1 {
            // Contiguous rows: one dot-free horizontal sum each, in f64 for long rows.
            out.par_iter_mut()
                .with_min_len((PAR_CHUNK / size.max(1)).max(1))
                .enumerate()
                .for_each(|(o, out)| {
                    let row = &x[o * size..(o + 1) * size];
                    *out = row.iter().map(|&v| v as f64).sum::<f64>() as f32;
                });
        } else {
            // Accumulate whole inner rows (vectorisable), one task per (outer, inner block).
            let block = inner.clamp(1, PAR_CHUNK);
            out.par_chunks_mut(inner)
                .enumerate()
                .for_each(|(o, out_row)| {
                    out_row
                        .chunks_mut(block)
                        .enumerate()
                        .for_each(|(b, out_block)| {
                            let start = b * block;
                            let mut acc = vec![0.0f64; out_block.len()];
                            for s in 0..size {
                                let base = (o * size + s) * inner + start;
                                for (a, &v) in acc.iter_mut().zip(&x[base..base + out_block.len()])
                                {
                                    *a += v as f64;
                                }
                            }
                            for (o, a) in out_block.iter_mut().zip(acc) {
                                *o = a as f32;
                            }
                        });
                });
        }
        Ok(Storage::cpu(out))
    }

    fn max_axis(
        &self,
        x: &Storage,
        outer: usize,
        size: usize,
        inner: usize,
    ) -> Result<(Storage, Storage)> {
        let x = x.as_cpu("max")?;
        let results: Vec<(f32, f32)> = (0..outer * inner)
            .into_par_iter()
            .with_min_len(256)
            .map(|oi| {
                let (o, i) = (oi / inner, oi % inner);
                let base = o * size * inner + i;
                let mut best = x[base];
                let mut best_index = 0usize;
                for s in 1..size {
                    let v = x[base + s * inner];
                    if best.is_nan() {
                        break;
                    }
                    if v > best || v.is_nan() {
                        best = v;
                        best_index = s;
                    }
                }
                (best, best_index as f32)
            })
            .collect();
        let (values, indices): (Vec<f32>, Vec<f32>) = results.into_iter().unzip();
        Ok((Storage::cpu(values), Storage::cpu(indices)))
    }

    fn max_axis_backward(
        &self,
        grad_out: &Storage,
        indices: &Storage,
        outer: usize,
        size: usize,
        inner: usize,
    ) -> Result<Storage> {
        let (g, idx) = (
            grad_out.as_cpu("max_backward")?,
            indices.as_cpu("max_backward")?,
        );
        let mut out = crate::backend::cpu::buffer_cache::zeroed(outer * size * inner);
        out.par_chunks_mut((size * inner).max(1))
            .enumerate()
            .for_each(|(o, plane)| {
                for i in 0..inner {
                    let s = idx[o * inner + i] as usize;
                    plane[s * inner + i] = g[o * inner + i];
                }
            });
        Ok(Storage::cpu(out))
    }
}
