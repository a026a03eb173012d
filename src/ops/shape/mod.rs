//! Layout ops: permute / transpose, concat, narrow / split / chunk, constant pad, squeeze and
//! unsqueeze. Every result is contiguous (tensors here never alias strided views), so each op
//! copies; the backward of a copy is the inverse copy (permute ↔ inverse permute,
//! narrow ↔ zero-pad, pad ↔ narrow, concat ↔ narrows).

mod cpu_kernel;
mod cuda_kernel;
mod permute;

use crate::error::{Error, Result};
use crate::tensor::{Shape, Storage, Tensor};

/// A slice `[start, start + len)` of the middle axis of a tensor viewed as `[outer, size, inner]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NarrowParams {
    /// Product of the dimensions before the axis.
    pub outer: usize,
    /// Size of the axis in the full tensor.
    pub size: usize,
    /// Product of the dimensions after the axis.
    pub inner: usize,
    /// First kept index along the axis.
    pub start: usize,
    /// Number of kept indices.
    pub len: usize,
}

/// Kernels of this family.
pub trait ShapeBackend {
    /// `out[j₀, …, j_{n−1}] = x[i]` with `i[axes[d]] = j_d`: the axes of `x` (of `shape`)
    /// reordered, written contiguously.
    fn permute(&self, x: &Storage, shape: &Shape, axes: &[usize]) -> Result<Storage>;

    /// Concatenation along one axis: part `p` is viewed as `[outer, widths[p]]` (its axis size
    /// times the inner size) and the output row `o` is the parts' rows `o` side by side.
    fn concat(&self, parts: &[&Storage], outer: usize, widths: &[usize]) -> Result<Storage>;

    /// `out[o, s, i] = x[o, start + s, i]` for `s < len`.
    fn narrow(&self, x: &Storage, params: NarrowParams) -> Result<Storage>;

    /// Gradient of [`ShapeBackend::narrow`]: `grad_out` placed at `[start, start + len)` of a
    /// zero tensor `[outer, size, inner]`.
    fn narrow_backward(&self, grad_out: &Storage, params: NarrowParams) -> Result<Storage>;

    /// Constant padding: `x` (of `shape`) placed inside a tensor filled with `value`, with
    /// `padding[d] = (before, after)` extra elements on each side of dimension `d`.
    fn pad(
        &self,
        x: &Storage,
        shape: &Shape,
        padding: &[(usize, usize)],
        value: f32,
    ) -> Result<Storage>;

    /// Gradient of [`ShapeBackend::pad`]: the block of `grad_out` where the input of `shape`
    /// sat (a narrow along every padded dimension).
    fn pad_backward(
        &self,
        grad_out: &Storage,
        shape: &Shape,
        padding: &[(usize, usize)],
    ) -> Result<Storage>;
}

impl Tensor {
    /// The axes reordered (`torch.permute`): output dimension `d` is input dimension `axes[d]`.
    /// The result is contiguous; its gradient is the inverse permutation.
    pub fn permute(&self, axes: &[usize]) -> Result<Tensor> {
        let rank = self.rank();
        let mut seen = vec![false; rank];
        let is_permutation = axes.len() == rank
            && axes
                .iter()
                .all(|&a| a < rank && !std::mem::replace(&mut seen[a], true));
        if !is_permutation {
            return Err(Error::invalid(
                "permute",
                format!(
                    "axes {axes:?} are not a permutation of 0..{rank} for shape {}",
                    self.shape()
                ),
            ));
        }
        if axes.iter().enumerate().all(|(d, &a)| d == a) {
            return Ok(self.clone());
        }
        let storage = self
            .backend()
            .permute(&self.storage(), self.shape(), axes)?;
        let out_dims: Vec<usize> = axes.iter().map(|&a| self.dims()[a]).collect();
        let mut inverse = vec![0; rank];
        for (d, &a) in axes.iter().enumerate() {
            inverse[a] = d;
        }
        Tensor::from_op("permute", storage, out_dims, &[self], move || {
            Box::new(move |g: &Tensor, _: &[bool]| Ok(vec![Some(g.permute(&inverse)?)]))
        })
    }

    /// Swaps two axes (negative axes count from the end); contiguous result.
    pub fn transpose(&self, axis_a: isize, axis_b: isize) -> Result<Tensor> {
        let a = self.shape().axis("transpose", axis_a)?;
        let b = self.shape().axis("transpose", axis_b)?;
        let mut axes: Vec<usize> = (0..self.rank()).collect();
        axes.swap(a, b);
        self.permute(&axes)
    }

    /// Concatenation along `axis` (`torch.cat`): all tensors have the same rank and equal
    /// dimensions except along `axis`. The gradient of each part is a narrow of the output's.
    pub fn cat(tensors: &[&Tensor], axis: isize) -> Result<Tensor> {
        let Some(first) = tensors.first() else {
            return Err(Error::invalid("cat", "needs at least one tensor"));
        };
        if first.rank() == 0 {
            return Err(Error::shape("cat", "cannot concatenate rank-0 tensors"));
        }
        let axis = first.shape().axis("cat", axis)?;
        let mismatch = |t: &Tensor| {
            t.rank() != first.rank()
                || t.dims()
                    .iter()
                    .zip(first.dims())
                    .enumerate()
                    .any(|(d, (a, b))| d != axis && a != b)
        };
        if tensors.iter().any(|t| mismatch(t)) {
            let shapes: Vec<String> = tensors.iter().map(|t| t.shape().to_string()).collect();
            return Err(Error::shape(
                "cat",
                format!("shapes {} differ outside axis {axis}", shapes.join(", ")),
            ));
        }
        for t in &tensors[1..] {
            first.same_device("cat", t)?;
        }
        let (outer, _, inner) = first.shape().outer_size_inner(axis);
        let sizes: Vec<usize> = tensors.iter().map(|t| t.dims()[axis]).collect();
        let widths: Vec<usize> = sizes.iter().map(|s| s * inner).collect();
        let storages: Vec<Storage> = tensors.iter().map(|t| t.storage()).collect();
        let storage_refs: Vec<&Storage> = storages.iter().collect();
        let storage = first.backend().concat(&storage_refs, outer, &widths)?;
        let mut out_dims = first.dims().to_vec();
        out_dims[axis] = sizes.iter().sum();
        let inputs: Vec<&Tensor> = tensors.to_vec();
        Tensor::from_op("cat", storage, out_dims, &inputs, move || {
            Box::new(move |g: &Tensor, needs: &[bool]| {
                let mut start = 0;
                let mut grads = Vec::with_capacity(sizes.len());
                for (&size, &need) in sizes.iter().zip(needs) {
                    grads.push(
                        need.then(|| g.narrow(axis as isize, start, size))
                            .transpose()?,
                    );
                    start += size;
                }
                Ok(grads)
            })
        })
    }

    /// The slice `[start, start + len)` along `axis` (`torch.narrow`, copied); its gradient
    /// pads the output gradient back with zeros.
    pub fn narrow(&self, axis: isize, start: usize, len: usize) -> Result<Tensor> {
        let axis_index = self.shape().axis("narrow", axis)?;
        let (outer, size, inner) = self.shape().outer_size_inner(axis_index);
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::invalid(
                "narrow",
                format!(
                    "[{start}, {start} + {len}) is out of range for axis {axis} of size {size} \
                     (shape {})",
                    self.shape()
                ),
            ));
        }
        if start == 0 && len == size {
            return Ok(self.clone());
        }
        let params = NarrowParams {
            outer,
            size,
            inner,
            start,
            len,
        };
        let storage = self.backend().narrow(&self.storage(), params)?;
        let mut out_dims = self.dims().to_vec();
        out_dims[axis_index] = len;
        let input_shape = self.shape().clone();
        Tensor::from_op("narrow", storage, out_dims, &[self], move || {
            Box::new(move |g: &Tensor, _: &[bool]| {
                let grad = g.backend().narrow_backward(&g.storage(), params)?;
                Ok(vec![Some(Tensor::from_storage(grad, input_shape)?)])
            })
        })
    }

    /// Chunks of `size` along `axis`, the last one smaller if the axis does not divide
    /// (`torch.split` with an int).
    pub fn split(&self, size: usize, axis: isize) -> Result<Vec<Tensor>> {
        let total = self.dim(axis)?;
        if size == 0 {
            return Err(Error::invalid(
                "split",
                format!(
                    "split size must be positive, got 0 (shape {})",
                    self.shape()
                ),
            ));
        }
        if total == 0 {
            return Ok(vec![self.clone()]);
        }
        let sizes: Vec<usize> = (0..total)
            .step_by(size)
            .map(|start| size.min(total - start))
            .collect();
        self.split_sizes(&sizes, axis)
    }

    /// Consecutive pieces of the given sizes along `axis` (`torch.split` with a list); the
    /// sizes must add up to the axis size.
    pub fn split_sizes(&self, sizes: &[usize], axis: isize) -> Result<Vec<Tensor>> {
        let total = self.dim(axis)?;
        if sizes.iter().sum::<usize>() != total {
            return Err(Error::invalid(
                "split_sizes",
                format!(
                    "sizes {sizes:?} do not add up to {total}, the size of axis {axis} of shape {}",
                    self.shape()
                ),
            ));
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&len| {
                let piece = self.narrow(axis, start, len);
                start += len;
                piece
            })
            .collect()
    }

    /// At most `chunks` pieces of `ceil(size / chunks)` along `axis` (`torch.chunk`): fewer
    /// when the axis is too short, the last one smaller (an empty axis gives `chunks` empty
    /// pieces).
    pub fn chunk(&self, chunks: usize, axis: isize) -> Result<Vec<Tensor>> {
        if chunks == 0 {
            return Err(Error::invalid(
                "chunk",
                format!(
                    "number of chunks must be positive, got 0 (shape {})",
                    self.shape()
                ),
            ));
        }
        let total = self.dim(axis)?;
        if total == 0 {
            // As torch.chunk: `chunks` empty pieces.
            return (0..chunks).map(|_| self.narrow(axis, 0, 0)).collect();
        }
        self.split(total.div_ceil(chunks), axis)
    }

    /// Constant padding like `F.pad(x, padding, value=value)`: `padding` lists
    /// `(before, after)` pairs from the last dimension backwards, e.g.
    /// `[left, right, top, bottom]` for the two spatial dimensions of NCHW. Its gradient is
    /// the block of the output gradient where the input sat.
    pub fn pad(&self, padding: &[usize], value: f32) -> Result<Tensor> {
        let rank = self.rank();
        if padding.is_empty() || !padding.len().is_multiple_of(2) || padding.len() / 2 > rank {
            return Err(Error::invalid(
                "pad",
                format!(
                    "padding {padding:?} must hold one (before, after) pair per trailing \
                     dimension, at most {rank} pairs for shape {}",
                    self.shape()
                ),
            ));
        }
        let mut per_dim = vec![(0usize, 0usize); rank];
        for (pair, chunk) in padding.chunks(2).enumerate() {
            per_dim[rank - 1 - pair] = (chunk[0], chunk[1]);
        }
        let out_dims: Vec<usize> = self
            .dims()
            .iter()
            .zip(&per_dim)
            .map(|(&d, &(before, after))| d + before + after)
            .collect();
        let storage = self
            .backend()
            .pad(&self.storage(), self.shape(), &per_dim, value)?;
        let input_shape = self.shape().clone();
        Tensor::from_op("pad", storage, out_dims, &[self], move || {
            Box::new(move |g: &Tensor, _: &[bool]| {
                let grad = g
                    .backend()
                    .pad_backward(&g.storage(), &input_shape, &per_dim)?;
                Ok(vec![Some(Tensor::from_storage(grad, input_shape)?)])
            })
        })
    }

    /// Removes `axis` if it has size 1; otherwise returns the tensor unchanged, as
    /// `torch.squeeze(x, dim)` does.
    pub fn squeeze(&self, axis: isize) -> Result<Tensor> {
        let axis = self.shape().axis("squeeze", axis)?;
        if self.dims()[axis] != 1 {
            return Ok(self.clone());
        }
        let mut dims = self.dims().to_vec();
        dims.remove(axis);
        self.reshape_to(dims)
    }

    /// Inserts a dimension of size 1 at `axis` (in `-(rank+1)..=rank`, as `torch.unsqueeze`).
    pub fn unsqueeze(&self, axis: isize) -> Result<Tensor> {
        let rank = self.rank() as isize;
        let position = if axis < 0 { axis + rank + 1 } else { axis };
        if !(0..=rank).contains(&position) {
            return Err(Error::Axis {
                op: "unsqueeze",
                axis,
                shape: self.dims().to_vec(),
            });
        }
        let mut dims = self.dims().to_vec();
        dims.insert(position as usize, 1);
        self.reshape_to(dims)
    }
}
