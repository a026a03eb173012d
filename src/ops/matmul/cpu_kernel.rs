//! CPU kernels of the matrix-product family: every product and gradient is one call of
//! [`batched_gemm`] on the backend GEMM ([`crate::backend::cpu::gemm`]), with the batch folded
//! into the rows (or into the contraction) when `B` is shared.

use super::{MatmulBackend, MatmulDims};
use crate::backend::cpu::gemm::{gemm, gemm_parallel, Operand};
use crate::backend::cpu::CpuBackend;
use crate::error::Result;
use crate::tensor::Storage;
use rayon::prelude::*;

impl MatmulBackend for CpuBackend {
    fn matmul(&self, lhs: &Storage, rhs: &Storage, d: MatmulDims) -> Result<Storage> {
        let (a, b) = (lhs.as_cpu("matmul")?, rhs.as_cpu("matmul")?);
        let rhs = BatchedOperand::new(b, d.k * d.n, d.rhs_transposed);
        let out = if d.rhs_shared {
            // One GEMM: [batch·m, k] × op(B).
            batched_gemm(
                1,
                d.batch * d.m,
                d.n,
                d.k,
                BatchedOperand::new(a, 0, false),
                rhs,
            )
        } else {
            batched_gemm(
                d.batch,
                d.m,
                d.n,
                d.k,
                BatchedOperand::new(a, d.m * d.k, false),
                rhs,
            )
        };
        Ok(Storage::cpu(out))
    }

    fn matmul_lhs_backward(
        &self,
        grad_out: &Storage,
        rhs: &Storage,
        d: MatmulDims,
    ) -> Result<Storage> {
        let (g, b) = (
            grad_out.as_cpu("matmul_backward")?,
            rhs.as_cpu("matmul_backward")?,
        );
        // op(B)ᵀ: a [k, n] matrix is read transposed, a stored [n, k] one as it is.
        let rhs = BatchedOperand::new(b, d.k * d.n, !d.rhs_transposed);
        let out = if d.rhs_shared {
            batched_gemm(
                1,
                d.batch * d.m,
                d.k,
                d.n,
                BatchedOperand::new(g, 0, false),
                rhs,
            )
        } else {
            batched_gemm(
                d.batch,
                d.m,
                d.k,
                d.n,
                BatchedOperand::new(g, d.m * d.n, false),
                rhs,
            )
        };
        Ok(Storage::cpu(out))
    }

    fn matmul_rhs_backward(
        &self,
        lhs: &Storage,
        grad_out: &Storage,
        d: MatmulDims,
    ) -> Result<Storage> {
        let (a, g) = (
            lhs.as_cpu("matmul_backward")?,
            grad_out.as_cpu("matmul_backward")?,
        );
        // A shared B sums over the batch: contract over all batch·m rows at once.
        let (batch, rows) = if d.rhs_shared {
            (1, d.batch * d.m)
        } else {
            (d.batch, d.m)
        };
        let (a_stride, g_stride) = (rows * d.k, rows * d.n);
        let out = if d.rhs_transposed {
            // ∂B as stored, [n, k] = Gᵀ · A.
            let g = BatchedOperand::new(g, g_stride, true);
            batched_gemm(
                batch,
                d.n,
                d.k,
                rows,
                g,
                BatchedOperand::new(a, a_stride, false),
            )
        } else {
            // ∂B [k, n] = Aᵀ · G.
            let a = BatchedOperand::new(a, a_stride, true);
            batched_gemm(
                batch,
                d.k,
                d.n,
                rows,
                a,
                BatchedOperand::new(g, g_stride, false),
            )
        };
        Ok(Storage::cpu(out))
    }
}

/// A stack of GEMM operands: matrix `i` starts at `i · stride` (0 for one shared matrix).
#[derive(Clone, Copy)]
struct BatchedOperand<'a> {
    data: &'a [f32],
    stride: usize,
    transposed: bool,
}

impl<'a> BatchedOperand<'a> {
    fn new(data: &'a [f32], stride: usize, transposed: bool) -> Self {
        BatchedOperand {
            data,
            stride,
            transposed,
        }
    }

    fn at(&self, i: usize) -> Operand<'a> {
        Operand {
            data: &self.data[i * self.stride..],
            transposed: self.transposed,
        }
    }
}

/// `C[i] = op(A[i]) · op(B[i])` (`[m, k] · [k, n]`) for `i < batch`, contiguous `[batch, m, n]`.
/// A large batch runs one single-threaded GEMM per task; a small one parallelises each GEMM.
fn batched_gemm(
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a: BatchedOperand,
    b: BatchedOperand,
) -> Vec<f32> {
    let mut c = crate::backend::cpu::buffer_cache::zeroed(batch * m * n);
    if c.is_empty() || k == 0 {
        return c;
    }
    if batch >= rayon::current_num_threads() {
        c.par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(i, c)| gemm(m, n, k, a.at(i), b.at(i), c, 0.0));
    } else {
        c.chunks_mut(m * n)
            .enumerate()
            .for_each(|(i, c)| gemm_parallel(m, n, k, a.at(i), b.at(i), c, 0.0));
    }
    c
}
