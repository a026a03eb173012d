//! Single-precision GEMM for the CPU backend, with a rayon-parallel variant that splits the
//! output into blocks, one single-threaded GEMM each. The packed kernel follows the CPU kernel
//! path ([`super::gemm_path`]): `matrixmultiply`'s AVX-512F kernel on the AVX-512 path, the
//! `gemm` crate's AVX2+FMA kernel on the AVX2 path, `matrixmultiply` as it detects the CPU on
//! the portable path.
//!
//! Chosen by measurement (`cargo bench --bench gemm` beside `scripts/bench_gemm_torch.py`, at
//! the networks' 1×1 and im2col shapes and the soft-routing products, README "Benchmarks"): with
//! AVX2+FMA the `gemm` crate ran 10–40 % faster per core than `matrixmultiply`, whose AVX-512F
//! kernel (its `avx512` feature) in turn ran about 1.7× the `gemm` crate's AVX2 one (the crate's
//! AVX-512 kernels need a nightly compiler). Splitting the output ourselves scaled better at
//! small `m` than either crate's own threading.
//!
//! All matrices are row-major slices. `op(X)` is `X` or its transpose: a transposed operand is
//! stored as the transpose's row-major layout, exactly as the caller has it in memory.

use super::{KernelPath, SendPtr};
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

    /// The operand as `rows × cols` with its (row, column) strides. Shapes are checked by the
    /// callers; a short slice here is a bug in the engine.
    fn strided(&self, rows: usize, cols: usize) -> Strided {
        assert!(
            self.data.len() >= rows * cols,
            "gemm operand of {} floats for a {rows}×{cols} matrix",
            self.data.len()
        );
        let (row, col) = if self.transposed {
            (1, rows)
        } else {
            (cols, 1)
        };
        Strided {
            ptr: self.data.as_ptr(),
            row,
            col,
        }
    }
}

/// A matrix as a pointer and element strides.
#[derive(Clone, Copy)]
struct Strided {
    ptr: *const f32,
    row: usize,
    col: usize,
}

// SAFETY: a `Strided` only reads through `ptr`, which borrows an `Operand`'s slice that outlives
// every parallel loop using it.
unsafe impl Send for Strided {}
unsafe impl Sync for Strided {}

impl Strided {
    /// The sub-matrix starting at `(row, col)`.
    fn at(self, row: usize, col: usize) -> Strided {
        Strided {
            // SAFETY (of the offset): callers stay inside the matrix described by `strided`.
            ptr: self.ptr.wrapping_add(row * self.row + col * self.col),
            ..self
        }
    }
}

/// The output of one GEMM call: `C` at `ptr`, rows `ld` floats apart.
#[derive(Clone, Copy)]
struct Dst {
    ptr: *mut f32,
    ld: usize,
}

/// `C = A·B + beta·C` for the `m×n` `C` at `c` on one thread.
///
/// # Safety
/// `a`, `b` must describe readable `m×k`, `k×n` matrices and `c` a writable `m×n` one that no
/// other thread touches during the call.
unsafe fn kernel(m: usize, n: usize, k: usize, a: Strided, b: Strided, c: Dst, beta: f32) {
    let Dst { ptr: c, ld: ldc } = c;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            let row = std::slice::from_raw_parts_mut(c.add(i * ldc), n);
            if beta == 0.0 {
                row.fill(0.0);
            } else {
                row.iter_mut().for_each(|v| *v *= beta);
            }
        }
        return;
    }
    if super::gemm_path() != KernelPath::Avx2 {
        return matrixmultiply_kernel(m, n, k, a, b, Dst { ptr: c, ld: ldc }, beta);
    }
    // The crate computes `dst = alpha·dst + beta·lhs·rhs`, reading `dst` only with `read_dst`.
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        ldc as isize,
        beta != 0.0,
        a.ptr,
        a.col as isize,
        a.row as isize,
        b.ptr,
        b.col as isize,
        b.row as isize,
        beta,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// [`kernel`] on `matrixmultiply`.
///
/// # Safety
/// As [`kernel`].
unsafe fn matrixmultiply_kernel(
    m: usize,
    n: usize,
    k: usize,
    a: Strided,
    b: Strided,
    c: Dst,
    beta: f32,
) {
    let Dst { ptr: c, ld: ldc } = c;
    matrixmultiply::sgemm(
        m,
        k,
        n,
        1.0,
        a.ptr,
        a.row as isize,
        a.col as isize,
        b.ptr,
        b.row as isize,
        b.col as isize,
        beta,
        c,
        ldc as isize,
        1,
    );
}

fn check_output(m: usize, n: usize, c: &[f32]) {
    assert!(
        c.len() >= m * n,
        "gemm output of {} floats for {m}×{n}",
        c.len()
    );
}

/// `C[m×n] = op(A)[m×k] · op(B)[k×n] + beta · C`, single-threaded.
pub fn gemm(m: usize, n: usize, k: usize, a: Operand, b: Operand, c: &mut [f32], beta: f32) {
    check_output(m, n, c);
    let (a, b) = (a.strided(m, k), b.strided(k, n));
    // SAFETY: the operands and `c` were checked to hold their matrices; `c` is borrowed
    // mutably.
    unsafe {
        kernel(
            m,
            n,
            k,
            a,
            b,
            Dst {
                ptr: c.as_mut_ptr(),
                ld: n,
            },
            beta,
        )
    };
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
    check_output(m, n, c);
    let (a, b) = (a.strided(m, k), b.strided(k, n));
    // Blocks of rows (or columns) of C, two per thread, each a multiple of the kernels' tile.
    let (along_rows, len) = if m >= n { (true, m) } else { (false, n) };
    let step = len.div_ceil(threads * 2).next_multiple_of(16).max(16);
    let blocks: Vec<(usize, usize)> = (0..len)
        .step_by(step)
        .map(|s| (s, (s + step).min(len)))
        .collect();
    let c_ptr = SendPtr(c.as_mut_ptr());
    blocks.par_iter().for_each(|&(s, e)| {
        let ptr = c_ptr; // the whole `SendPtr`, not its raw field
                         // SAFETY: the blocks are disjoint rows (or columns) of C, which outlives
                         // the loop; the
                         // sub-matrices lie inside the checked operands.
        unsafe {
            if along_rows {
                let c = Dst {
                    ptr: ptr.0.add(s * n),
                    ld: n,
                };
                kernel(e - s, n, k, a.at(s, 0), b, c, beta);
            } else {
                let c = Dst {
                    ptr: ptr.0.add(s),
                    ld: n,
                };
                kernel(m, e - s, k, a, b.at(0, s), c, beta);
            }
        }
    });
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
