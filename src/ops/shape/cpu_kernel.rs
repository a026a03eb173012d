//! CPU kernels of the layout family. Narrow, pad and their gradients are all one of two box
//! copies over contiguous rows: [`crop`] (read a box out of a larger tensor) and [`embed`]
//! (write a tensor into a box of a larger one filled with a constant).

use super::{NarrowParams, ShapeBackend};
use crate::backend::cpu::{CpuBackend, PAR_CHUNK};
use crate::error::Result;
use crate::tensor::{Shape, Storage};
use rayon::prelude::*;

impl ShapeBackend for CpuBackend {
    fn permute(&self, x: &Storage, shape: &Shape, axes: &[usize]) -> Result<Storage> {
        let x = x.as_cpu("permute")?;
        Ok(Storage::cpu(super::permute::permute(x, shape.dims(), axes)))
    }

    fn concat(&self, parts: &[&Storage], outer: usize, widths: &[usize]) -> Result<Storage> {
        let parts: Vec<&[f32]> = parts
            .iter()
            .map(|p| p.as_cpu("cat"))
            .collect::<Result<_>>()?;
        let total: usize = widths.iter().sum();
        let mut out = crate::backend::cpu::buffer_cache::zeroed(outer * total);
        if total > 0 {
            out.par_chunks_mut(total)
                .with_min_len(rows_per_task(total))
                .enumerate()
                .for_each(|(o, row)| {
                    let mut at = 0;
                    for (part, &width) in parts.iter().zip(widths) {
                        row[at..at + width].copy_from_slice(&part[o * width..(o + 1) * width]);
                        at += width;
                    }
                });
        }
        Ok(Storage::cpu(out))
    }

    fn narrow(&self, x: &Storage, p: NarrowParams) -> Result<Storage> {
        let x = x.as_cpu("narrow")?;
        let (full, kept, offset) = narrow_rows(p);
        Ok(Storage::cpu(crop(x, &full, &kept, &offset)))
    }

    fn narrow_backward(&self, grad_out: &Storage, p: NarrowParams) -> Result<Storage> {
        let g = grad_out.as_cpu("narrow_backward")?;
        let (full, kept, offset) = narrow_rows(p);
        Ok(Storage::cpu(embed(g, &kept, &full, &offset, 0.0)))
    }

    fn pad(
        &self,
        x: &Storage,
        shape: &Shape,
        padding: &[(usize, usize)],
        value: f32,
    ) -> Result<Storage> {
        let x = x.as_cpu("pad")?;
        let (inside, padded, offset) = pad_box(shape, padding);
        Ok(Storage::cpu(embed(x, &inside, &padded, &offset, value)))
    }

    fn pad_backward(
        &self,
        grad_out: &Storage,
        shape: &Shape,
        padding: &[(usize, usize)],
    ) -> Result<Storage> {
        let g = grad_out.as_cpu("pad_backward")?;
        let (inside, padded, offset) = pad_box(shape, padding);
        Ok(Storage::cpu(crop(g, &padded, &inside, &offset)))
    }
}

/// A narrow as a 2-D box: rows `[outer, size·inner]`, kept columns `[start·inner, +len·inner)`.
/// Returns (full dims, kept dims, offset of the kept box).
fn narrow_rows(p: NarrowParams) -> ([usize; 2], [usize; 2], [usize; 2]) {
    (
        [p.outer, p.size * p.inner],
        [p.outer, p.len * p.inner],
        [0, p.start * p.inner],
    )
}

/// A constant pad as a box: (input dims, padded dims, offset of the input inside).
fn pad_box(shape: &Shape, padding: &[(usize, usize)]) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let inside = shape.dims().to_vec();
    let padded = inside
        .iter()
        .zip(padding)
        .map(|(&d, &(before, after))| d + before + after)
        .collect();
    let offset = padding.iter().map(|&(before, _)| before).collect();
    (inside, padded, offset)
}

/// Rows per rayon task so that a task moves about [`PAR_CHUNK`] elements.
fn rows_per_task(row_len: usize) -> usize {
    (PAR_CHUNK / row_len.max(1)).max(1)
}

/// Offset in a tensor with `strides` of the row `row` of a tensor of `dims` (all but the last
/// dimension), shifted by `offset` in each of those dimensions.
fn shifted_row_offset(
    mut row: usize,
    dims: &[usize],
    offset: &[usize],
    strides: &[usize],
) -> usize {
    let mut at = 0;
    for d in (0..dims.len().saturating_sub(1)).rev() {
        at += (row % dims[d] + offset[d]) * strides[d];
        row /= dims[d];
    }
    at
}

/// `out[m] = x[m + offset]`: the box of `out_dims` at `offset` inside `x` of `in_dims`.
fn crop(x: &[f32], in_dims: &[usize], out_dims: &[usize], offset: &[usize]) -> Vec<f32> {
    let numel: usize = out_dims.iter().product();
    let mut out = crate::backend::cpu::buffer_cache::zeroed(numel);
    let Some(&width) = out_dims.last() else {
        out.copy_from_slice(x);
        return out;
    };
    if numel == 0 {
        return out;
    }
    let in_strides = Shape::from(in_dims).strides();
    let column = offset[offset.len() - 1];
    out.par_chunks_mut(width)
        .with_min_len(rows_per_task(width))
        .enumerate()
        .for_each(|(row, out_row)| {
            let at = shifted_row_offset(row, out_dims, offset, &in_strides) + column;
            out_row.copy_from_slice(&x[at..at + width]);
        });
    out
}

/// `out[m + offset] = x[m]` and `fill` elsewhere: `x` of `in_dims` placed at `offset` inside a
/// tensor of `out_dims`.
fn embed(
    x: &[f32],
    in_dims: &[usize],
    out_dims: &[usize],
    offset: &[usize],
    fill: f32,
) -> Vec<f32> {
    let numel: usize = out_dims.iter().product();
    let mut out = vec![fill; numel];
    let Some(&width) = out_dims.last() else {
        out.copy_from_slice(x);
        return out;
    };
    let in_width = in_dims[in_dims.len() - 1];
    if numel == 0 || in_dims.contains(&0) {
        return out;
    }
    let in_strides = Shape::from(in_dims).strides();
    let leading = out_dims.len() - 1;
    let column = offset[leading];
    out.par_chunks_mut(width)
        .with_min_len(rows_per_task(width))
        .enumerate()
        .for_each(|(row, out_row)| {
            // Where this output row comes from, if it lies inside the box.
            let mut rest = row;
            let mut at = 0;
            for d in (0..leading).rev() {
                let coordinate = rest % out_dims[d];
                rest /= out_dims[d];
                if coordinate < offset[d] || coordinate >= offset[d] + in_dims[d] {
                    return;
                }
                at += (coordinate - offset[d]) * in_strides[d];
            }
            out_row[column..column + in_width].copy_from_slice(&x[at..at + in_width]);
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_and_embed_are_inverse_box_copies() {
        let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let inner = crop(&x, &[2, 3, 4], &[2, 2, 2], &[0, 1, 1]);
        assert_eq!(inner, vec![5., 6., 9., 10., 17., 18., 21., 22.]);
        let back = embed(&inner, &[2, 2, 2], &[2, 3, 4], &[0, 1, 1], -1.0);
        for (i, (&b, &v)) in back.iter().zip(&x).enumerate() {
            let (r, c) = ((i / 4) % 3, i % 4);
            let inside = (1..3).contains(&r) && (1..3).contains(&c);
            assert_eq!(b, if inside { v } else { -1.0 });
        }
    }
}
