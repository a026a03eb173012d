//! Reductions over axes: sum, mean, max (with the index of the maximum) and argmax.
//!
//! Kernels see a tensor as `[outer, size, inner]` around the reduced axis and produce
//! `[outer, inner]`; several axes reduce one after the other.

mod cpu_kernel;
mod cuda_kernel;

use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// Kernels of this family.
pub trait ReduceBackend {
    /// `out[o, i] = Σ_s x[o, s, i]`.
    fn sum_axis(&self, x: &Storage, outer: usize, size: usize, inner: usize) -> Result<Storage>;

    /// `(max_s x[o, s, i], argmax_s)`; the first index wins ties; NaN is the maximum, as in
    /// PyTorch. Indices are returned as exact integers in f32.
    fn max_axis(
        &self,
        x: &Storage,
        outer: usize,
        size: usize,
        inner: usize,
    ) -> Result<(Storage, Storage)>;

    /// Gradient of `max_axis`: `grad_out[o, i]` placed at `[o, index[o, i], i]`, zeros elsewhere.
    fn max_axis_backward(
        &self,
        grad_out: &Storage,
        indices: &Storage,
        outer: usize,
        size: usize,
        inner: usize,
    ) -> Result<Storage>;
}

impl Tensor {
    /// Sum over `axes` (negative axes count from the end); `keepdim` keeps them as size 1.
    /// An empty `axes` list sums over everything.
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        let axes = self.reduction_axes("sum", axes)?;
        let mut x = self.storage();
        let mut dims = self.dims().to_vec();
        for &axis in &axes {
            let (outer, size, inner) =
                crate::tensor::Shape::new(dims.clone()).outer_size_inner(axis);
            x = self.backend().sum_axis(&x, outer, size, inner)?;
            dims[axis] = 1;
        }
        let kept_shape = dims.clone();
        let out_dims = reduced_dims(&dims, &axes, keepdim);
        let input_shape = self.shape().clone();
        Tensor::from_op("sum", x, out_dims, &[self], move || {
            Box::new(move |g: &Tensor, _: &[bool]| {
                Ok(vec![Some(
                    g.reshape_to(kept_shape)?.broadcast_to(input_shape)?,
                )])
            })
        })
    }

    /// Sum of all elements as a rank-0 tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.sum(&[], false)
    }

    /// Mean over `axes` (empty: over everything).
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        let resolved = self.reduction_axes("mean", axes)?;
        let count: usize = resolved.iter().map(|&a| self.dims()[a]).product();
        if count == 0 {
            return Err(Error::shape(
                "mean",
                format!("mean over an empty axis of {}", self.shape()),
            ));
        }
        self.sum(axes, keepdim)?.mul_scalar(1.0 / count as f32)
    }

    /// Mean of all elements as a rank-0 tensor.
    pub fn mean_all(&self) -> Result<Tensor> {
        self.mean(&[], false)
    }

    /// `x / max(‖x‖₂, eps)` along `axis` (torch's `F.normalize(x, p=2, dim=axis, eps=eps)`,
    /// whose default eps is 1e-12). Composed as `x / √max(Σ x², eps²)`: where the norm is below
    /// eps the divisor is the constant eps, so the gradient is `g / eps`, as in PyTorch.
    pub fn l2_normalize(&self, axis: isize, eps: f32) -> Result<Tensor> {
        if eps.is_nan() || eps < 0.0 {
            return Err(Error::invalid(
                "l2_normalize",
                format!("eps must be ≥ 0, got {eps} (input {})", self.shape()),
            ));
        }
        let squared_norm = self.square()?.sum(&[axis], true)?;
        let norm = squared_norm.clamp(eps * eps, f32::INFINITY)?.sqrt()?;
        self.div(&norm)
    }

    /// Maximum along `axis` and its index (`torch.max(x, dim)`); the gradient flows to the
    /// maximum's position only.
    pub fn max(&self, axis: isize, keepdim: bool) -> Result<(Tensor, Tensor)> {
        let axis = self.shape().axis("max", axis)?;
        let (outer, size, inner) = self.shape().outer_size_inner(axis);
        if size == 0 {
            return Err(Error::shape(
                "max",
                format!("max over an empty axis of {}", self.shape()),
            ));
        }
        let (values, indices) = self
            .backend()
            .max_axis(&self.storage(), outer, size, inner)?;
        let out_dims = reduced_dims(self.dims(), &[axis], keepdim);
        let indices = Tensor::from_storage(indices, out_dims.clone())?;
        let saved = indices.clone();
        let input_shape = self.shape().clone();
        let values = Tensor::from_op("max", values, out_dims, &[self], move || {
            Box::new(move |g: &Tensor, _: &[bool]| {
                let grad = g.backend().max_axis_backward(
                    &g.storage(),
                    &saved.storage(),
                    outer,
                    size,
                    inner,
                )?;
                Ok(vec![Some(Tensor::from_storage(grad, input_shape)?)])
            })
        })?;
        Ok((values, indices))
    }

    /// Index of the maximum along `axis` (first on ties), as exact integers in f32.
    pub fn argmax(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        let _no_grad = crate::autograd::NoGradGuard::new();
        Ok(self.max(axis, keepdim)?.1)
    }

    /// Resolves axes for a reduction: sorted, unique, normalised; empty means all.
    fn reduction_axes(&self, op: &'static str, axes: &[isize]) -> Result<Vec<usize>> {
        let mut resolved: Vec<usize> = if axes.is_empty() {
            (0..self.rank()).collect()
        } else {
            axes.iter()
                .map(|&a| self.shape().axis(op, a))
                .collect::<Result<_>>()?
        };
        resolved.sort_unstable();
        resolved.dedup();
        Ok(resolved)
    }
}

fn reduced_dims(dims: &[usize], axes: &[usize], keepdim: bool) -> Vec<usize> {
    dims.iter()
        .enumerate()
        .filter_map(|(i, &d)| {
            if axes.contains(&i) {
                keepdim.then_some(1)
            } else {
                Some(d)
            }
        })
        .collect()
}
