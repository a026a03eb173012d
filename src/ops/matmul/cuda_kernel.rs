//! CUDA launchers of the matmul family (kernel in `kernels/matmul.cu`): the forward and both
//! gradients are one batched SGEMM with the operands' storage orders and strides chosen as in
//! the CPU kernel.

use super::{MatmulBackend, MatmulDims};
use crate::backend::cuda::runtime::dim32;
use crate::backend::cuda::{CudaBackend, CudaBuffer};
use crate::error::{Error, Result};
use crate::tensor::Storage;
use cudarc::driver::{DeviceRepr, LaunchConfig};

/// Output tile edge of the SGEMM (mirror: `TILE` in matmul.cu).
const TILE: u32 = 64;

/// One batched GEMM (mirror: `GemmParams` in matmul.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GemmParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub a_transposed: u32,
    pub b_transposed: u32,
    pub pad: u32,
    pub a_stride: u64,
    pub b_stride: u64,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu struct.
unsafe impl DeviceRepr for GemmParams {}
const _: () = assert!(
    std::mem::size_of::<GemmParams>() == 40,
    "GemmParams: size of the .cu struct"
);
const _: () = assert!(
    std::mem::offset_of!(GemmParams, a_stride) == 24,
    "GemmParams: 64-bit field offset"
);

/// One operand: buffer, elements between batch items (0: shared), stored transposed.
struct Operand<'a> {
    buffer: &'a CudaBuffer,
    stride: usize,
    transposed: bool,
}

impl CudaBackend {
    /// `C[b] = op(A[b]) · op(B[b])` for `b < batch`, C of `[batch, m, n]`.
    fn batched_gemm(
        &self,
        op: &'static str,
        batch: usize,
        [m, n, k]: [usize; 3],
        a: Operand,
        b: Operand,
    ) -> Result<Storage> {
        let len = batch * m * n;
        let p = GemmParams {
            m: dim32(op, m)?,
            n: dim32(op, n)?,
            k: dim32(op, k)?,
            a_transposed: u32::from(a.transposed),
            b_transposed: u32::from(b.transposed),
            pad: 0,
            a_stride: a.stride as u64,
            b_stride: b.stride as u64,
        };
        if k == 0 {
            return self.fill(len, 0.0);
        }
        let batch = u32::try_from(batch)
            .ok()
            .filter(|&b| b <= 65_535)
            .ok_or_else(|| Error::Unsupported(format!("{op}: batch {batch} is above 65535")))?;
        let config = LaunchConfig {
            grid_dim: (p.n.div_ceil(TILE), p.m.div_ceil(TILE), batch.max(1)),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch_into("matmul", "sgemm", config, &p, &[a.buffer, b.buffer], len)
    }
}

impl MatmulBackend for CudaBackend {
    fn matmul(&self, lhs: &Storage, rhs: &Storage, d: MatmulDims) -> Result<Storage> {
        let (a, b) = (self.buffer("matmul", lhs)?, self.buffer("matmul", rhs)?);
        let rhs = Operand {
            buffer: b,
            stride: if d.rhs_shared { 0 } else { d.k * d.n },
            transposed: d.rhs_transposed,
        };
        if d.rhs_shared {
            let lhs = Operand {
                buffer: a,
                stride: 0,
                transposed: false,
            };
            self.batched_gemm("matmul", 1, [d.batch * d.m, d.n, d.k], lhs, rhs)
        } else {
            let lhs = Operand {
                buffer: a,
                stride: d.m * d.k,
                transposed: false,
            };
            self.batched_gemm("matmul", d.batch, [d.m, d.n, d.k], lhs, rhs)
        }
    }

    fn matmul_lhs_backward(
        &self,
        grad_out: &Storage,
        rhs: &Storage,
        d: MatmulDims,
    ) -> Result<Storage> {
        const OP: &str = "matmul_backward";
        let (g, b) = (self.buffer(OP, grad_out)?, self.buffer(OP, rhs)?);
        let rhs = Operand {
            buffer: b,
            stride: if d.rhs_shared { 0 } else { d.k * d.n },
            transposed: !d.rhs_transposed,
        };
        if d.rhs_shared {
            let g = Operand {
                buffer: g,
                stride: 0,
                transposed: false,
            };
            self.batched_gemm(OP, 1, [d.batch * d.m, d.k, d.n], g, rhs)
        } else {
            let g = Operand {
                buffer: g,
                stride: d.m * d.n,
                transposed: false,
            };
            self.batched_gemm(OP, d.batch, [d.m, d.k, d.n], g, rhs)
        }
    }

    fn matmul_rhs_backward(
        &self,
        lhs: &Storage,
        grad_out: &Storage,
        d: MatmulDims,
    ) -> Result<Storage> {
        const OP: &str = "matmul_backward";
        let (a, g) = (self.buffer(OP, lhs)?, self.buffer(OP, grad_out)?);
        let (batch, rows) = if d.rhs_shared {
            (1, d.batch * d.m)
        } else {
            (d.batch, d.m)
        };
        let (a_stride, g_stride) = (rows * d.k, rows * d.n);
        if d.rhs_transposed {
            // dBᵀ[n, k] = gᵀ · A
            let g = Operand {
                buffer: g,
                stride: g_stride,
                transposed: true,
            };
            let a = Operand {
                buffer: a,
                stride: a_stride,
                transposed: false,
            };
            self.batched_gemm(OP, batch, [d.n, d.k, rows], g, a)
        } else {
            // dB[k, n] = Aᵀ · g
            let a = Operand {
                buffer: a,
                stride: a_stride,
                transposed: true,
            };
            let g = Operand {
                buffer: g,
                stride: g_stride,
                transposed: false,
            };
            self.batched_gemm(OP, batch, [d.k, d.n, rows], a, g)
        }
    }
}
