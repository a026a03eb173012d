//! CUDA launchers of the shape family (kernels in `kernels/shape.cu`): narrow, pad and their
//! backward passes are one box copy with different offsets.

use super::{NarrowParams, ShapeBackend};
use crate::backend::cuda::runtime::{dim32, grid_for};
use crate::backend::cuda::CudaBackend;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Storage};
use cudarc::driver::DeviceRepr;

const FAMILY: &str = "shape";

/// Highest rank (mirror: `MAX_RANK` in shape.cu).
pub const MAX_RANK: usize = 8;

/// A box copy (mirror: `BoxParams` in shape.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BoxParams {
    pub n: u64,
    pub rank: u32,
    pub fill: f32,
    pub out_dims: [u32; MAX_RANK],
    pub in_dims: [u32; MAX_RANK],
    pub offset: [i32; MAX_RANK],
}

/// A permutation (mirror: `PermuteParams` in shape.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PermuteParams {
    pub n: u64,
    pub rank: u32,
    pub pad: u32,
    pub out_dims: [u32; MAX_RANK],
    pub in_strides: [u64; MAX_RANK],
}

/// One concat part (mirror: `ConcatParams` in shape.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConcatParams {
    pub outer: u32,
    pub width: u32,
    pub total: u32,
    pub at: u32,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu structs.
unsafe impl DeviceRepr for BoxParams {}
const _: () = assert!(
    std::mem::size_of::<BoxParams>() == 112,
    "BoxParams: size of the .cu struct"
);
unsafe impl DeviceRepr for PermuteParams {}
const _: () = assert!(
    std::mem::size_of::<PermuteParams>() == 112,
    "PermuteParams: size of the .cu struct"
);
const _: () = assert!(
    std::mem::offset_of!(PermuteParams, in_strides) == 48,
    "PermuteParams: 64-bit field offset"
);
unsafe impl DeviceRepr for ConcatParams {}
const _: () = assert!(
    std::mem::size_of::<ConcatParams>() == 16,
    "ConcatParams: size of the .cu struct"
);

fn check_rank(op: &'static str, rank: usize) -> Result<()> {
    if rank > MAX_RANK {
        return Err(Error::Unsupported(format!(
            "{op}: rank {rank} is above the CUDA kernels' limit of {MAX_RANK}"
        )));
    }
    Ok(())
}

fn offset32(op: &'static str, value: i64) -> Result<i32> {
    i32::try_from(value)
        .map_err(|_| Error::Unsupported(format!("{op}: offset {value} does not fit 32 bits")))
}

impl CudaBackend {
    /// `out[c] = x[c − offset]` inside `in_dims`, else `fill`.
    fn box_copy(
        &self,
        op: &'static str,
        x: &Storage,
        in_dims: &[usize],
        out_dims: &[usize],
        offset: &[i64],
        fill: f32,
    ) -> Result<Storage> {
        check_rank(op, out_dims.len())?;
        let x = self.buffer(op, x)?;
        let n: usize = out_dims.iter().product();
        let mut p = BoxParams {
            n: n as u64,
            rank: out_dims.len() as u32,
            fill,
            ..Default::default()
        };
        for d in 0..out_dims.len() {
            p.out_dims[d] = dim32(op, out_dims[d])?;
            p.in_dims[d] = dim32(op, in_dims[d])?;
            p.offset[d] = offset32(op, offset[d])?;
        }
        self.launch_into(FAMILY, "box_copy", grid_for(n), &p, &[x], n)
    }
}

/// `(full, kept, start)` of a narrow as a rank-3 box.
fn narrow_box(p: NarrowParams) -> ([usize; 3], [usize; 3], i64) {
    (
        [p.outer, p.size, p.inner],
        [p.outer, p.len, p.inner],
        p.start as i64,
    )
}

impl ShapeBackend for CudaBackend {
    fn permute(&self, x: &Storage, shape: &Shape, axes: &[usize]) -> Result<Storage> {
        check_rank("permute", axes.len())?;
        let x = self.buffer("permute", x)?;
        let dims = shape.dims();
        let strides = shape.strides();
        let mut p = PermuteParams {
            n: shape.numel() as u64,
            rank: axes.len() as u32,
            ..Default::default()
        };
        for (d, &axis) in axes.iter().enumerate() {
            p.out_dims[d] = dim32("permute", dims[axis])?;
            p.in_strides[d] = strides[axis] as u64;
        }
        let n = shape.numel();
        self.launch_into(FAMILY, "permute", grid_for(n), &p, &[x], n)
    }

    fn concat(&self, parts: &[&Storage], outer: usize, widths: &[usize]) -> Result<Storage> {
        let total: usize = widths.iter().sum();
        let out = self.alloc(outer * total)?;
        let mut at = 0;
        for (part, &width) in parts.iter().zip(widths) {
            let part = self.buffer("cat", part)?;
            let p = ConcatParams {
                outer: dim32("cat", outer)?,
                width: dim32("cat", width)?,
                total: dim32("cat", total)?,
                at: dim32("cat", at)?,
            };
            if outer * width > 0 {
                self.launch(
                    FAMILY,
                    "concat_part",
                    grid_for(outer * width),
                    &p,
                    &[part, &out],
                )?;
            }
            at += width;
        }
        Ok(Storage::Cuda(out))
    }

    fn narrow(&self, x: &Storage, params: NarrowParams) -> Result<Storage> {
        let (full, kept, start) = narrow_box(params);
        self.box_copy("narrow", x, &full, &kept, &[0, -start, 0], 0.0)
    }

    fn narrow_backward(&self, grad_out: &Storage, params: NarrowParams) -> Result<Storage> {
        let (full, kept, start) = narrow_box(params);
        self.box_copy(
            "narrow_backward",
            grad_out,
            &kept,
            &full,
            &[0, start, 0],
            0.0,
        )
    }

    fn pad(
        &self,
        x: &Storage,
        shape: &Shape,
        padding: &[(usize, usize)],
        value: f32,
    ) -> Result<Storage> {
        let inside = shape.dims();
        let padded: Vec<usize> = inside
            .iter()
            .zip(padding)
            .map(|(&d, &(before, after))| d + before + after)
            .collect();
        let offset: Vec<i64> = padding.iter().map(|&(before, _)| before as i64).collect();
        self.box_copy("pad", x, inside, &padded, &offset, value)
    }

    fn pad_backward(
        &self,
        grad_out: &Storage,
        shape: &Shape,
        padding: &[(usize, usize)],
    ) -> Result<Storage> {
        let inside = shape.dims();
        let padded: Vec<usize> = inside
            .iter()
            .zip(padding)
            .map(|(&d, &(before, after))| d + before + after)
            .collect();
        let offset: Vec<i64> = padding
            .iter()
            .map(|&(before, _)| -(before as i64))
            .collect();
        self.box_copy("pad_backward", grad_out, &padded, inside, &offset, 0.0)
    }
}
