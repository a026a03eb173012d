//! Single-precision GEMM for the CPU backend, on ndarray's packed SIMD kernel
//! (`ndarray::linalg::general_mat_mul`), with a rayon-parallel variant that splits the output.
//!
//! All matrices are row-major slices. `op(X)` is `X` or its transpose: a transposed operand is
//! stored as the transpose's row-major layout, exactly as the caller has it in memory.

use super::SendPtr;
use ndarray::linalg::general_mat_mul;
use ndarray::{s, ArrayView2, ArrayViewMut2, ShapeBuilder};
use rayon::prelude::*;

/// One GEMM operand: a row-major slice read as `op(X)` of shape `rows × cols`.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    /// The elements as laid out in memory.
    pub data: &'a [f32],
    /// True when memory holds `cols × rows` and the operand is its transpose.
    pub transposed: bool,
}

impl<'a> Operand<'a> {
    /// A matrix used as stored.
    pub fn plain(data: &'a [f32]) -> Self {
        Operand {
            data,
            transposed: false,
        }
    }

    /// A matrix used transposed.
    pub fn transposed(data: &'a [f32]) -> Self {
        Operand {
            data,
            transposed: true,
        }
    }

    fn view(&self, rows: usize, cols: usize) -> ArrayView2<'a, f32> {
        let len = rows * cols;
        if self.transposed {
            // Shapes are checked by the callers; a wrong length here is a bug in the engine.
            ArrayView2::from_shape((cols, rows), &self.data[..len])
                .expect("gemm operand length checked by caller")
                .reversed_axes()
        } else {
            ArrayView2::from_shape((rows, cols), &self.data[..len])
                .expect("gemm operand length checked by caller")
        }
    }
}

/// `C[m×n] = op(A)[m×k] · op(B)[k×n] + beta · C`, single-threaded.
pub fn gemm(m: usize, n: usize, k: usize, a: Operand, b: Operand, c: &mut [f32], beta: f32) {
    if m == 0 || n == 0 {
        return;
    }
    let a = a.view(m, k);
    let b = b.view(k, n);
    let mut c = ArrayViewMut2::from_shape((m, n), &mut c[..m * n])
        .expect("gemm output length checked by caller");
    general_mat_mul(1.0, &a, &b, beta, &mut c);
}

/// Work (multiply-adds) below which splitting a GEMM across threads does not pay.
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// `C[m×n] = op(A) · op(B) + beta · C`, split across rayon threads along the larger of the
/// output's dimensions. Same result as [`gemm`] up to summation order within a block.
pub fn gemm_parallel(
    m: usize,
    n: usize,
    k: usize,
    a: Operand,
    b: Operand,
    c: &mut [f32],
    beta: f32,
) {
    let threads = rayon::current_num_threads();
    if threads <= 1 || m * n * k < PARALLEL_MIN_WORK {
        gemm(m, n, k, a, b, c, beta);
        return;
    }
    let a_view = a.view(m, k);
    let b_view = b.view(k, n);
    if m >= n {
        // Split rows of C (and of op(A)): each block of rows is contiguous in C.
        let rows = m.div_ceil(threads * 2).max(1);
        c[..m * n]
            .par_chunks_mut(rows * n)
            .enumerate()
            .for_each(|(i, c_block)| {
                let r0 = i * rows;
                let r1 = (r0 + rows).min(m);
                let a_block = a_view.slice(s![r0..r1, ..]);
                let mut c_block = ArrayViewMut2::from_shape((r1 - r0, n), c_block)
                    .expect("gemm row block length");
                general_mat_mul(1.0, &a_block, &b_view, beta, &mut c_block);
            });
    } else {
        // Split columns of C: blocks are strided, so each thread writes through its own view.
        let cols = n.div_ceil(threads * 2).max(1);
        let blocks: Vec<(usize, usize)> = (0..n)
            .step_by(cols)
            .map(|c0| (c0, (c0 + cols).min(n)))
            .collect();
        let c_ptr = SendPtr(c.as_mut_ptr());
        blocks.par_iter().for_each(|&(c0, c1)| {
            let ptr = c_ptr;
            // SAFETY: the column blocks are disjoint, so no two threads write the same element,
            // and `c` outlives the parallel loop.
            let mut c_block = unsafe {
                ArrayViewMut2::from_shape_ptr((m, c1 - c0).strides((n, 1)), ptr.0.add(c0))
            };
            let b_block = b_view.slice(s![.., c0..c1]);
            general_mat_mul(1.0, &a_view, &b_block, beta, &mut c_block);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], ta: bool, b: &[f32], tb: bool) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0;
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    acc += av * bv;
                }
                c[i * n + j] = acc;
            }
        }
        c
    }

    #[test]
    fn gemm_matches_naive_for_all_transpositions() {
        for &(m, n, k) in &[(3, 5, 4), (70, 9, 33), (9, 130, 300)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32) - 6.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32) - 5.0).collect();
            for &(ta, tb) in &[(false, false), (true, false), (false, true), (true, true)] {
                let expected = naive(m, n, k, &a, ta, &b, tb);
                let op = |d, t| Operand {
                    data: d,
                    transposed: t,
                };
                let mut c = vec![1.0; m * n];
                gemm_parallel(m, n, k, op(&a, ta), op(&b, tb), &mut c, 0.0);
                assert_eq!(c, expected, "m={m} n={n} k={k} ta={ta} tb={tb}");
                let mut c2 = vec![1.0; m * n];
                gemm(m, n, k, op(&a, ta), op(&b, tb), &mut c2, 1.0);
                let plus_one: Vec<f32> = expected.iter().map(|v| v + 1.0).collect();
                assert_eq!(c2, plus_one);
            }
        }
    }
}
