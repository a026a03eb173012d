//! CUDA launchers of the elementwise family (kernels in `kernels/elementwise.cu`).

use super::{BinaryOp, ElementwiseBackend, UnaryOp};
use crate::backend::cuda::runtime::grid_for;
use crate::backend::cuda::CudaBackend;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Storage};
use cudarc::driver::DeviceRepr;

const FAMILY: &str = "elementwise";

/// Highest rank of a broadcast (mirror: `MAX_RANK` in elementwise.cu).
pub const MAX_RANK: usize = 8;

/// Parameters of `unary` (mirror: `UnaryParams` in elementwise.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UnaryParams {
    pub n: u64,
    pub op: u32,
    pub a: f32,
    pub b: f32,
    pub pad: u32,
}

/// Parameters of the broadcast kernels (mirror: `BroadcastParams` in elementwise.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BroadcastParams {
    pub n: u64,
    pub rank: u32,
    pub op: u32,
    pub dims: [u32; MAX_RANK],
    pub lhs_strides: [u32; MAX_RANK],
    pub rhs_strides: [u32; MAX_RANK],
}

/// Parameters of `fill` (mirror: `FillParams` in elementwise.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FillParams {
    pub n: u64,
    pub value: f32,
    pub pad: u32,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu structs (checked in tests).
unsafe impl DeviceRepr for UnaryParams {}
const _: () = assert!(
    std::mem::size_of::<UnaryParams>() == 24,
    "UnaryParams: size of the .cu struct"
);
unsafe impl DeviceRepr for BroadcastParams {}
const _: () = assert!(
    std::mem::size_of::<BroadcastParams>() == 112,
    "BroadcastParams: size of the .cu struct"
);
unsafe impl DeviceRepr for FillParams {}
const _: () = assert!(
    std::mem::size_of::<FillParams>() == 16,
    "FillParams: size of the .cu struct"
);

/// `(op code, a, b)` of a unary op (codes: the `U_*` enum of elementwise.cu).
fn unary_code(op: UnaryOp) -> (u32, f32, f32) {
    match op {
        UnaryOp::Neg => (0, 0.0, 0.0),
        UnaryOp::Exp => (1, 0.0, 0.0),
        UnaryOp::Log => (2, 0.0, 0.0),
        UnaryOp::Sqrt => (3, 0.0, 0.0),
        UnaryOp::Abs => (4, 0.0, 0.0),
        UnaryOp::Sign => (5, 0.0, 0.0),
        UnaryOp::AddScalar(c) => (6, c, 0.0),
        UnaryOp::MulScalar(c) => (7, c, 0.0),
        UnaryOp::PowScalar(p) => (8, p, 0.0),
        UnaryOp::Clamp { min, max } => (9, min, max),
        UnaryOp::InRange { min, max } => (10, min, max),
    }
}

/// The `B_*` code of elementwise.cu.
fn binary_code(op: BinaryOp) -> u32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Maximum => 4,
        BinaryOp::Minimum => 5,
        BinaryOp::Equal => 6,
        BinaryOp::Greater => 7,
    }
}

/// Fills `dst` with `values` as u32, or an error naming `op` when they do not fit.
fn copy_dims(op: &'static str, dst: &mut [u32; MAX_RANK], values: &[usize]) -> Result<()> {
    for (d, &v) in dst.iter_mut().zip(values) {
        *d = crate::backend::cuda::runtime::dim32(op, v)?;
    }
    Ok(())
}

/// Broadcast parameters for an output of `out` from operands of `lhs` and `rhs` shapes.
fn broadcast_params(
    op: &'static str,
    lhs: &Shape,
    rhs: &Shape,
    out: &Shape,
) -> Result<BroadcastParams> {
    if out.rank() > MAX_RANK {
        return Err(Error::Unsupported(format!(
            "{op}: rank {} is above the CUDA kernels' limit of {MAX_RANK}",
            out.rank()
        )));
    }
    let mut p = BroadcastParams {
        n: out.numel() as u64,
        rank: out.rank() as u32,
        ..Default::default()
    };
    copy_dims(op, &mut p.dims, out.dims())?;
    copy_dims(op, &mut p.lhs_strides, &lhs.broadcast_strides(out))?;
    copy_dims(op, &mut p.rhs_strides, &rhs.broadcast_strides(out))?;
    Ok(p)
}

impl ElementwiseBackend for CudaBackend {
    fn unary(&self, op: UnaryOp, x: &Storage) -> Result<Storage> {
        let x = self.buffer("unary", x)?;
        let (code, a, b) = unary_code(op);
        let p = UnaryParams {
            n: x.len() as u64,
            op: code,
            a,
            b,
            pad: 0,
        };
        self.launch_into(FAMILY, "unary", grid_for(x.len()), &p, &[x], x.len())
    }

    fn binary(
        &self,
        op: BinaryOp,
        lhs: &Storage,
        lhs_shape: &Shape,
        rhs: &Storage,
        rhs_shape: &Shape,
        out_shape: &Shape,
    ) -> Result<Storage> {
        let (a, b) = (self.buffer("binary", lhs)?, self.buffer("binary", rhs)?);
        let mut p = broadcast_params("binary", lhs_shape, rhs_shape, out_shape)?;
        p.op = binary_code(op);
        let n = out_shape.numel();
        let kernel = if lhs_shape == out_shape && rhs_shape == out_shape {
            "binary_same_shape"
        } else {
            "binary_broadcast"
        };
        self.launch_into(FAMILY, kernel, grid_for(n), &p, &[a, b], n)
    }

    fn broadcast_to(&self, x: &Storage, shape: &Shape, target: &Shape) -> Result<Storage> {
        let x = self.buffer("broadcast_to", x)?;
        let p = broadcast_params("broadcast_to", shape, shape, target)?;
        let n = target.numel();
        self.launch_into(FAMILY, "broadcast_to", grid_for(n), &p, &[x], n)
    }
}

impl CudaBackend {
    /// `len` elements all equal to `value`.
    pub(crate) fn fill(&self, len: usize, value: f32) -> Result<Storage> {
        let p = FillParams {
            n: len as u64,
            value,
            pad: 0,
        };
        self.launch_into(FAMILY, "fill", grid_for(len), &p, &[], len)
    }
}
