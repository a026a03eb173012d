//! Matrix products: `matmul` (2-D, batched 3-D, and 3-D × 2-D with the matrix shared by the
//! batch), `matmul_t` (the same with the rhs read transposed) and `linear` (`F.linear`). Backward reuses the same GEMM with transposed operands:
//! `∂A = G·op(B)ᵀ`, `∂B = op(A)ᵀ·G` (summed over the batch when `B` is shared, which is one
//! GEMM over the batch-flattened rows).

mod cpu_kernel;
mod cuda_kernel;
pub mod grouped;

use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// Geometry of a (batched) product `C[b] = A[b] · op(B[b])`: `A` is `[batch, m, k]`, `C` is
/// `[batch, m, n]`, `B` is `[batch, k, n]`, or a single matrix when `rhs_shared`, stored as
/// `[n, k]` when `rhs_transposed` (the weight layout of `linear`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulDims {
    /// Number of independent products.
    pub batch: usize,
    /// Rows of `A` and `C`.
    pub m: usize,
    /// Columns of `A`, rows of `op(B)`.
    pub k: usize,
    /// Columns of `op(B)` and `C`.
    pub n: usize,
    /// One `B` for the whole batch.
    pub rhs_shared: bool,
    /// `B` is stored transposed (`[n, k]`) and used as its transpose.
    pub rhs_transposed: bool,
}

/// Kernels of this family.
pub trait MatmulBackend {
    /// `C[b] = A[b] · op(B[b])`.
    fn matmul(&self, lhs: &Storage, rhs: &Storage, dims: MatmulDims) -> Result<Storage>;

    /// Gradient of `A`: `∂A[b] = G[b] · op(B[b])ᵀ`, shape `[batch, m, k]`.
    fn matmul_lhs_backward(
        &self,
        grad_out: &Storage,
        rhs: &Storage,
        dims: MatmulDims,
    ) -> Result<Storage>;

    /// Gradient of `B` in its stored layout: `∂op(B)[b] = A[b]ᵀ · G[b]` (summed over `b` when
    /// `B` is shared; transposed back when `B` is stored as `[n, k]`).
    fn matmul_rhs_backward(
        &self,
        lhs: &Storage,
        grad_out: &Storage,
        dims: MatmulDims,
    ) -> Result<Storage>;
}

impl Tensor {
    /// Matrix product (`torch.matmul` for these ranks): `[m, k] × [k, n] → [m, n]`,
    /// `[b, m, k] × [b, k, n] → [b, m, n]` and `[b, m, k] × [k, n] → [b, m, n]`.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.batched_product("matmul", rhs, false)
    }

    /// `self · rhsᵀ` over the last two axes: `[m, k] × [n, k] → [m, n]`,
    /// `[b, m, k] × [b, n, k] → [b, m, n]` (one `rhs` per batch item, e.g. attention's `q·kᵀ`)
    /// and `[b, m, k] × [n, k] → [b, m, n]` (one `rhs` for the batch). No transposed copy is
    /// made: the GEMM reads `rhs` transposed, in the forward and in both gradients.
    pub fn matmul_t(&self, rhs: &Tensor) -> Result<Tensor> {
        self.batched_product("matmul_t", rhs, true)
    }

    /// `self · op(rhs)` for a 2-D or 3-D `self` and a 2-D (shared) or 3-D (per batch item)
    /// `rhs`, stored `[…, k, n]`, or `[…, n, k]` when `rhs_transposed`.
    fn batched_product(
        &self,
        op: &'static str,
        rhs: &Tensor,
        rhs_transposed: bool,
    ) -> Result<Tensor> {
        let mismatch = || {
            let (rhs_2d, rhs_3d) = if rhs_transposed {
                ("[n, k]", "[b, n, k]")
            } else {
                ("[k, n]", "[b, k, n]")
            };
            Error::shape(
                op,
                format!(
                    "cannot multiply shapes {} and {} (supported: [m, k]×{rhs_2d}, \
                     [b, m, k]×{rhs_3d}, [b, m, k]×{rhs_2d})",
                    self.shape(),
                    rhs.shape()
                ),
            )
        };
        let (batch, m, k) = match *self.dims() {
            [m, k] => (1, m, k),
            [b, m, k] => (b, m, k),
            _ => return Err(mismatch()),
        };
        let (rhs_batch, [rows, columns]) = match *rhs.dims() {
            [r, c] => (None, [r, c]),
            [b, r, c] => (Some(b), [r, c]),
            _ => return Err(mismatch()),
        };
        let (rhs_k, n) = if rhs_transposed {
            (columns, rows)
        } else {
            (rows, columns)
        };
        let batched_lhs = self.rank() == 3;
        if rhs_k != k || rhs_batch.is_some_and(|b| !batched_lhs || b != batch) {
            return Err(mismatch());
        }
        let dims = MatmulDims {
            batch,
            m,
            k,
            n,
            rhs_shared: rhs_batch.is_none(),
            rhs_transposed,
        };
        let out_dims = if batched_lhs {
            vec![batch, m, n]
        } else {
            vec![m, n]
        };
        if super::macs::record(batch * m * k * n) {
            return Tensor::zeros(out_dims, &self.device());
        }
        self.product(op, rhs, dims, out_dims)
    }

    /// `x · wᵀ + bias` over the last axis (`F.linear`): `x` is `[…, in]`, `w` `[out, in]`,
    /// `bias` `[out]`; the result is `[…, out]`.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        weight.expect_rank("linear", "weight", 2)?;
        let (out_features, in_features) = (weight.dims()[0], weight.dims()[1]);
        if self.rank() == 0 || self.dims()[self.rank() - 1] != in_features {
            return Err(Error::shape(
                "linear",
                format!(
                    "input shape {} does not end in {in_features}, the in-features of weight {}",
                    self.shape(),
                    weight.shape()
                ),
            ));
        }
        if let Some(b) = bias {
            if b.dims() != [out_features] {
                return Err(Error::shape(
                    "linear",
                    format!(
                        "bias shape {} must be [{out_features}] for weight {}",
                        b.shape(),
                        weight.shape()
                    ),
                ));
            }
        }
        let rank = self.rank();
        let rows: usize = self.dims()[..rank - 1].iter().product();
        let dims = MatmulDims {
            batch: 1,
            m: rows,
            k: in_features,
            n: out_features,
            rhs_shared: true,
            rhs_transposed: true,
        };
        let mut out_dims = self.dims().to_vec();
        out_dims[rank - 1] = out_features;
        if super::macs::record(rows * in_features * out_features) {
            return Tensor::zeros(out_dims, &self.device());
        }
        let product = self.product("linear", weight, dims, out_dims)?;
        match bias {
            Some(b) => product.add(b),
            None => Ok(product),
        }
    }

    /// Runs the product kernel and records its backward (`self` is `A`, `rhs` is `B`).
    fn product(
        &self,
        op: &'static str,
        rhs: &Tensor,
        dims: MatmulDims,
        out_dims: Vec<usize>,
    ) -> Result<Tensor> {
        self.same_device(op, rhs)?;
        let storage = self
            .backend()
            .matmul(&self.storage(), &rhs.storage(), dims)?;
        let (lhs, rhs_saved) = (self.detach(), rhs.detach());
        Tensor::from_op(op, storage, out_dims, &[self, rhs], move || {
            Box::new(move |g: &Tensor, needs: &[bool]| {
                let backend = g.backend();
                let grad_lhs = needs[0]
                    .then(|| -> Result<Tensor> {
                        let grad = backend.matmul_lhs_backward(
                            &g.storage(),
                            &rhs_saved.storage(),
                            dims,
                        )?;
                        Tensor::from_storage(grad, lhs.shape().clone())
                    })
                    .transpose()?;
                let grad_rhs = needs[1]
                    .then(|| -> Result<Tensor> {
                        let grad =
                            backend.matmul_rhs_backward(&lhs.storage(), &g.storage(), dims)?;
                        Tensor::from_storage(grad, rhs_saved.shape().clone())
                    })
                    .transpose()?;
                Ok(vec![grad_lhs, grad_rhs])
            })
        })
    }
}
