//! The CPU permute kernel. The permutation is first simplified (size-1 axes dropped, input
//! axes that stay adjacent merged), so NCHW→NHWC becomes a batch of 2-D transposes. Then:
//! if the innermost axis stays innermost, rows are copied whole; otherwise the output is
//! written in `TILE × TILE` tiles spanning the output's last axis and the input's last axis,
//! so reads and writes both walk along cache lines.

use crate::backend::cpu::PAR_CHUNK;
use crate::tensor::Shape;
use rayon::prelude::*;

/// Side of the square tiles of the transposing path.
const TILE: usize = 32;

/// `x` of `dims` with output axis `d` taken from input axis `axes[d]`, contiguous.
pub(super) fn permute(x: &[f32], dims: &[usize], axes: &[usize]) -> Vec<f32> {
    let (dims, axes) = simplify(dims, axes);
    let rank = dims.len();
    if x.is_empty() || rank <= 1 || axes.iter().enumerate().all(|(d, &a)| d == a) {
        return x.to_vec();
    }
    let in_strides = Shape::from(dims.as_slice()).strides();
    // Dimensions and input strides in output order.
    let out_dims: Vec<usize> = axes.iter().map(|&a| dims[a]).collect();
    let read_strides: Vec<usize> = axes.iter().map(|&a| in_strides[a]).collect();
    let mut out = crate::backend::cpu::buffer_cache::zeroed(x.len());
    if axes[rank - 1] == rank - 1 {
        copy_rows(x, &mut out, &out_dims, &read_strides);
    } else {
        transpose_tiles(x, &mut out, &out_dims, &read_strides);
    }
    out
}

/// Drops size-1 axes and merges runs of input axes that stay consecutive in the output.
/// Returns the simplified input dims and permutation (same result, fewer axes).
fn simplify(dims: &[usize], axes: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let kept: Vec<usize> = (0..dims.len()).filter(|&a| dims[a] != 1).collect();
    let renumber = |a: usize| kept.iter().position(|&k| k == a).unwrap_or(0);
    let axes: Vec<usize> = axes
        .iter()
        .filter(|&&a| dims[a] != 1)
        .map(|&a| renumber(a))
        .collect();
    let dims: Vec<usize> = kept.iter().map(|&a| dims[a]).collect();
    // Runs of consecutive input axes, in output order: (first axis, last axis).
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &a in &axes {
        match runs.last_mut() {
            Some(run) if run.1 + 1 == a => run.1 = a,
            _ => runs.push((a, a)),
        }
    }
    let mut input_order: Vec<usize> = (0..runs.len()).collect();
    input_order.sort_by_key(|&r| runs[r].0);
    let merged_dims = input_order
        .iter()
        .map(|&r| dims[runs[r].0..=runs[r].1].iter().product())
        .collect();
    let mut position = vec![0; runs.len()];
    for (p, &r) in input_order.iter().enumerate() {
        position[r] = p;
    }
    (merged_dims, position)
}

/// Offset of flat index `flat` over `dims` in a tensor read with `strides`.
fn strided_offset(mut flat: usize, dims: &[usize], strides: &[usize]) -> usize {
    let mut at = 0;
    for d in (0..dims.len()).rev() {
        at += (flat % dims[d]) * strides[d];
        flat /= dims[d];
    }
    at
}

/// The innermost axis stays innermost: each output row is one contiguous input row.
fn copy_rows(x: &[f32], out: &mut [f32], out_dims: &[usize], read_strides: &[usize]) {
    let rank = out_dims.len();
    let width = out_dims[rank - 1];
    out.par_chunks_mut(width)
        .with_min_len((PAR_CHUNK / width).max(1))
        .enumerate()
        .for_each(|(row, out_row)| {
            let at = strided_offset(row, &out_dims[..rank - 1], &read_strides[..rank - 1]);
            out_row.copy_from_slice(&x[at..at + width]);
        });
}

/// The output viewed as `[A, Q, B, J]`: `Q` is the input's innermost axis (read stride 1) and
/// `J` the output's innermost axis (write stride 1). Tasks own blocks of `TILE` indices of `Q`
/// (contiguous in the output); inside, `TILE × TILE` tiles of `(Q, J)` are copied.
fn transpose_tiles(x: &[f32], out: &mut [f32], out_dims: &[usize], read_strides: &[usize]) {
    let rank = out_dims.len();
    let q_axis = read_strides
        .iter()
        .position(|&s| s == 1)
        .unwrap_or(rank - 2);
    let (a_dims, a_strides) = (&out_dims[..q_axis], &read_strides[..q_axis]);
    let (b_dims, b_strides) = (
        &out_dims[q_axis + 1..rank - 1],
        &read_strides[q_axis + 1..rank - 1],
    );
    let q_size = out_dims[q_axis];
    let j_size = out_dims[rank - 1];
    let j_stride = read_strides[rank - 1];
    let b_count: usize = b_dims.iter().product();
    let q_row = b_count * j_size;
    out.par_chunks_mut(q_size * q_row)
        .enumerate()
        .for_each(|(a, slab)| {
            let a_base = strided_offset(a, a_dims, a_strides);
            slab.par_chunks_mut(TILE * q_row)
                .enumerate()
                .for_each(|(tile, block)| {
                    let q0 = tile * TILE;
                    let q_count = block.len() / q_row;
                    for b in 0..b_count {
                        let base = a_base + strided_offset(b, b_dims, b_strides) + q0;
                        for j0 in (0..j_size).step_by(TILE) {
                            let j1 = (j0 + TILE).min(j_size);
                            for q in 0..q_count {
                                let out_row = &mut block[q * q_row + b * j_size..][..j_size];
                                for (j, o) in out_row[j0..j1].iter_mut().enumerate() {
                                    *o = x[base + q + (j0 + j) * j_stride];
                                }
                            }
                        }
                    }
                });
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], dims: &[usize], axes: &[usize]) -> Vec<f32> {
        let strides = Shape::from(dims).strides();
        let out_dims: Vec<usize> = axes.iter().map(|&a| dims[a]).collect();
        let read: Vec<usize> = axes.iter().map(|&a| strides[a]).collect();
        (0..x.len())
            .map(|i| x[strided_offset(i, &out_dims, &read)])
            .collect()
    }

    #[test]
    fn matches_naive_gather_for_many_orders() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3, 4, 5], &[0, 2, 3, 1]),
            (&[2, 3, 4, 5], &[3, 1, 0, 2]),
            (&[1, 37, 45], &[0, 2, 1]),
            (&[3, 1, 70, 33], &[2, 1, 3, 0]),
            (&[4, 5, 6], &[1, 0, 2]),
            (&[2, 3, 1, 5, 7], &[4, 2, 0, 3, 1]),
        ];
        for &(dims, axes) in cases {
            let n: usize = dims.iter().product();
            let x: Vec<f32> = (0..n).map(|v| v as f32).collect();
            assert_eq!(
                permute(&x, dims, axes),
                naive(&x, dims, axes),
                "{dims:?} {axes:?}"
            );
        }
    }

    #[test]
    fn simplify_merges_adjacent_axes() {
        assert_eq!(
            simplify(&[2, 3, 4, 5], &[0, 2, 3, 1]),
            (vec![2, 3, 20], vec![0, 2, 1])
        );
        assert_eq!(
            simplify(&[1, 3, 1, 5], &[2, 3, 0, 1]),
            (vec![3, 5], vec![1, 0])
        );
    }
}
