//! Indexing along one axis: gather, scatter-add, index_select and top-k.
//!
//! Kernels view the indexed tensor as `[outer, size, inner]` around the axis and the index /
//! result as `[outer, count, inner]`. Indices are f32 tensors holding exact integers; the
//! `Tensor` methods check every index against the axis size before any kernel runs.

mod cpu_kernel;
mod cuda_kernel;

use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// Geometry of an indexing op: the indexed tensor is `[outer, size, inner]`, the index and the
/// gathered values `[outer, count, inner]` (for index_select the index is just `[count]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AxisIndexParams {
    /// Product of the dimensions before the axis.
    pub outer: usize,
    /// Size of the indexed axis.
    pub size: usize,
    /// Product of the dimensions after the axis.
    pub inner: usize,
    /// Number of indices along the axis.
    pub count: usize,
}

/// Geometry and order of a top-k: `x` is `[outer, size, inner]`, the results `[outer, k, inner]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopkParams {
    /// Product of the dimensions before the axis.
    pub outer: usize,
    /// Size of the searched axis.
    pub size: usize,
    /// Product of the dimensions after the axis.
    pub inner: usize,
    /// Number of elements kept.
    pub k: usize,
    /// Largest first (descending) when true, smallest first (ascending) when false.
    pub largest: bool,
}

/// Kernels of this family.
pub trait IndexBackend {
    /// `out[o, j, i] = x[o, index[o, j, i], i]` (`torch.gather`).
    fn gather(&self, x: &Storage, index: &Storage, p: AxisIndexParams) -> Result<Storage>;

    /// `out = base`, then `out[o, index[o, j, i], i] += src[o, j, i]` for every `(o, j, i)`
    /// (`Tensor.scatter_add`), in a deterministic order; also the gradient of `gather` on a
    /// zero base.
    fn scatter_add(
        &self,
        base: &Storage,
        index: &Storage,
        src: &Storage,
        p: AxisIndexParams,
    ) -> Result<Storage>;

    /// `out[o, j, i] = x[o, indices[j], i]` (`torch.index_select`).
    fn index_select(&self, x: &Storage, indices: &Storage, p: AxisIndexParams) -> Result<Storage>;

    /// Gradient of `index_select` (`index_add` onto zeros):
    /// `out[o, s, i] = Σ_{j : indices[j] = s} grad_out[o, j, i]`, deterministic.
    fn index_select_backward(
        &self,
        grad_out: &Storage,
        indices: &Storage,
        p: AxisIndexParams,
    ) -> Result<Storage>;

    /// The `k` largest (or smallest) elements of each lane `x[o, :, i]` in order, with their
    /// indices as exact integers in f32. Equal values are ordered by index, lower first; NaN
    /// counts as larger than every number.
    fn topk(&self, x: &Storage, p: TopkParams) -> Result<(Storage, Storage)>;
}

impl Tensor {
    /// Values picked along `axis` by `index` (`torch.gather`):
    /// `out[…, j, …] = x[…, index[…, j, …], …]`. `index` has this tensor's rank and equal
    /// dimensions except along `axis` (PyTorch also accepts smaller ones; this engine does
    /// not). The gradient scatter-adds the output gradient back.
    pub fn gather(&self, axis: isize, index: &Tensor) -> Result<Tensor> {
        let axis_index = self.shape().axis("gather", axis)?;
        self.same_device("gather", index)?;
        check_same_except_axis("gather", "index", self, index, axis_index)?;
        let p = axis_params(self, axis_index, index.dims()[axis_index]);
        check_indices("gather", index, axis_index, p.size)?;
        let storage = self
            .backend()
            .gather(&self.storage(), &index.storage(), p)?;
        let saved_index = index.detach();
        let input_shape = self.shape().clone();
        Tensor::from_op(
            "gather",
            storage,
            index.shape().clone(),
            &[self],
            move || {
                Box::new(move |g: &Tensor, _: &[bool]| {
                    let backend = g.backend();
                    let zeros = backend.full(input_shape.numel(), 0.0)?;
                    let grad =
                        backend.scatter_add(&zeros, &saved_index.storage(), &g.storage(), p)?;
                    Ok(vec![Some(Tensor::from_storage(grad, input_shape)?)])
                })
            },
        )
    }

    /// This tensor with `src` added at the positions `index` names along `axis`
    /// (`Tensor.scatter_add`): `out[…, index[…, j, …], …] += src[…, j, …]`. `index` and `src`
    /// have the same shape, equal to this tensor's except along `axis`. Gradients: this tensor
    /// gets the output gradient, `src` its gather by `index`.
    pub fn scatter_add(&self, axis: isize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        let axis_index = self.shape().axis("scatter_add", axis)?;
        self.same_device("scatter_add", index)?;
        self.same_device("scatter_add", src)?;
        if index.shape() != src.shape() {
            return Err(Error::shape(
                "scatter_add",
                format!(
                    "index shape {} differs from src shape {}",
                    index.shape(),
                    src.shape()
                ),
            ));
        }
        check_same_except_axis("scatter_add", "index", self, index, axis_index)?;
        let p = axis_params(self, axis_index, index.dims()[axis_index]);
        check_indices("scatter_add", index, axis_index, p.size)?;
        let storage =
            self.backend()
                .scatter_add(&self.storage(), &index.storage(), &src.storage(), p)?;
        let saved_index = index.detach();
        let src_shape = src.shape().clone();
        Tensor::from_op(
            "scatter_add",
            storage,
            self.shape().clone(),
            &[self, src],
            move || {
                Box::new(move |g: &Tensor, needs: &[bool]| {
                    let grad_src = needs[1]
                        .then(|| -> Result<Tensor> {
                            let gathered =
                                g.backend()
                                    .gather(&g.storage(), &saved_index.storage(), p)?;
                            Tensor::from_storage(gathered, src_shape)
                        })
                        .transpose()?;
                    Ok(vec![needs[0].then(|| g.clone()), grad_src])
                })
            },
        )
    }

    /// The slices at `indices` (rank 1) along `axis` (`torch.index_select`); indices may
    /// repeat. The gradient adds each output slice back at its index (`index_add`).
    pub fn index_select(&self, axis: isize, indices: &Tensor) -> Result<Tensor> {
        let axis_index = self.shape().axis("index_select", axis)?;
        self.same_device("index_select", indices)?;
        indices.expect_rank("index_select", "indices", 1)?;
        let p = axis_params(self, axis_index, indices.numel());
        check_indices("index_select", indices, axis_index, p.size)?;
        let storage = self
            .backend()
            .index_select(&self.storage(), &indices.storage(), p)?;
        let mut out_dims = self.dims().to_vec();
        out_dims[axis_index] = p.count;
        let saved_indices = indices.detach();
        let input_shape = self.shape().clone();
        Tensor::from_op("index_select", storage, out_dims, &[self], move || {
            Box::new(move |g: &Tensor, _: &[bool]| {
                let grad =
                    g.backend()
                        .index_select_backward(&g.storage(), &saved_indices.storage(), p)?;
                Ok(vec![Some(Tensor::from_storage(grad, input_shape)?)])
            })
        })
    }

    /// The `k` largest (`largest = true`, descending) or smallest (ascending) elements along
    /// `axis` and their indices (`torch.topk(sorted=True)`), without gradient. Equal values are
    /// ordered by index, lower first, so ties pick the lower index: the MoE router relies on
    /// this, and PyTorch does not promise it. NaN counts as the largest value.
    pub fn topk(&self, k: usize, axis: isize, largest: bool) -> Result<(Tensor, Tensor)> {
        let axis_index = self.shape().axis("topk", axis)?;
        let (outer, size, inner) = self.shape().outer_size_inner(axis_index);
        if k > size {
            return Err(Error::invalid(
                "topk",
                format!(
                    "k = {k} is larger than axis {axis} of size {size} (shape {})",
                    self.shape()
                ),
            ));
        }
        let p = TopkParams {
            outer,
            size,
            inner,
            k,
            largest,
        };
        let (values, indices) = self.backend().topk(&self.storage(), p)?;
        let mut out_dims = self.dims().to_vec();
        out_dims[axis_index] = k;
        Ok((
            Tensor::from_storage(values, out_dims.clone())?,
            Tensor::from_storage(indices, out_dims)?,
        ))
    }
}

/// The `[outer, size, inner]` view of `x` around `axis`, with `count` indices.
fn axis_params(x: &Tensor, axis: usize, count: usize) -> AxisIndexParams {
    let (outer, size, inner) = x.shape().outer_size_inner(axis);
    AxisIndexParams {
        outer,
        size,
        inner,
        count,
    }
}

/// Checks that `other` has the rank of `x` and the same dimensions except along `axis`.
fn check_same_except_axis(
    op: &'static str,
    name: &str,
    x: &Tensor,
    other: &Tensor,
    axis: usize,
) -> Result<()> {
    let fits = other.rank() == x.rank()
        && x.dims()
            .iter()
            .zip(other.dims())
            .enumerate()
            .all(|(d, (a, b))| d == axis || a == b);
    if fits {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!(
                "{name} shape {} must equal input shape {} except along axis {axis}",
                other.shape(),
                x.shape()
            ),
        ))
    }
}

/// Checks that every element of `index` is an integer in `0..size` (reads it to the host).
fn check_indices(op: &'static str, index: &Tensor, axis: usize, size: usize) -> Result<()> {
    let bad = index
        .try_to_vec()?
        .into_iter()
        .find(|&v| !(v >= 0.0 && v < size as f32 && v.fract() == 0.0));
    match bad {
        None => Ok(()),
        Some(v) => Err(Error::invalid(
            op,
            format!("index {v} is out of range (or not an integer) for axis {axis} of size {size}"),
        )),
    }
}
