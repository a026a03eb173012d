//! The [`Tensor`]: a shape, shared contiguous f32 storage on a device, and (when it takes part in
//! differentiation) a node of the autograd graph. Cloning a tensor is cheap: clones share
//! storage, gradient slot and graph node, like two Python references to one `torch.Tensor`.

mod dtype;
mod rng;
mod shape;
mod storage;

pub use dtype::DType;
pub use rng::{manual_seed, with_default_rng, Rng};
pub use shape::Shape;
pub use storage::Storage;

use crate::autograd::{self, BackwardFn, GradNode};
use crate::backend::{Backend, Device};
use crate::error::{Error, Result};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// An n-dimensional f32 array with reverse-mode autograd.
#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

struct Inner {
    id: u64,
    shape: Shape,
    /// Behind a lock only so that optimizers and running statistics can swap in new values
    /// (`replace_data`); reads clone the `Arc` inside and let go at once.
    storage: RwLock<Storage>,
    /// `Some` when gradients flow to or through this tensor: a leaf's gradient slot or the op
    /// that produced it.
    grad_node: Option<Arc<GradNode>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Tensor {
    // ----- construction -------------------------------------------------------------------

    /// A tensor over existing storage; fails if the element count does not match the shape.
    pub fn from_storage(storage: Storage, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if storage.len() != shape.numel() {
            return Err(Error::shape(
                "from_storage",
                format!(
                    "{} elements cannot have shape {shape} ({} elements)",
                    storage.len(),
                    shape.numel()
                ),
            ));
        }
        Ok(Self::build(storage, shape, None))
    }

    /// A CPU tensor from host data in row-major order.
    pub fn from_vec(data: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
        Self::from_storage(Storage::cpu(data), shape)
    }

    /// A host tensor from data, placed on `device`.
    pub fn from_vec_on(data: Vec<f32>, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let storage = device.backend().upload(data)?;
        Self::from_storage(storage, shape)
    }

    /// A rank-0 tensor holding `value`.
    pub fn scalar(value: f32) -> Tensor {
        Self::build(Storage::cpu(vec![value]), Shape::new(vec![]), None)
    }

    /// A tensor filled with `value`.
    pub fn full(shape: impl Into<Shape>, value: f32, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let storage = device.backend().full(shape.numel(), value)?;
        Ok(Self::build(storage, shape, None))
    }

    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        Self::full(shape, 0.0, device)
    }

    /// A tensor of ones.
    pub fn ones(shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        Self::full(shape, 1.0, device)
    }

    /// Zeros with this tensor's shape and device.
    pub fn zeros_like(&self) -> Result<Tensor> {
        Self::zeros(self.shape().clone(), &self.device())
    }

    /// Ones with this tensor's shape and device.
    pub fn ones_like(&self) -> Result<Tensor> {
        Self::ones(self.shape().clone(), &self.device())
    }

    /// `0, 1, …, n−1` as a rank-1 tensor.
    pub fn arange(n: usize, device: &Device) -> Result<Tensor> {
        Self::from_vec_on((0..n).map(|i| i as f32).collect(), [n], device)
    }

    /// Samples of N(mean, std²) from `rng`.
    pub fn randn(shape: impl Into<Shape>, mean: f32, std: f32, rng: &mut Rng) -> Result<Tensor> {
        let shape = shape.into();
        let data = (0..shape.numel()).map(|_| rng.normal(mean, std)).collect();
        Self::from_vec(data, shape)
    }

    /// Samples of U[low, high) from `rng`.
    pub fn rand_uniform(
        shape: impl Into<Shape>,
        low: f32,
        high: f32,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let data = (0..shape.numel()).map(|_| rng.uniform(low, high)).collect();
        Self::from_vec(data, shape)
    }

    /// Samples of Bernoulli(p) (1.0 with probability `p`, else 0.0) from `rng`.
    pub fn bernoulli(shape: impl Into<Shape>, p: f32, rng: &mut Rng) -> Result<Tensor> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid(
                "bernoulli",
                format!("p must be in [0, 1], got {p}"),
            ));
        }
        let shape = shape.into();
        let data = (0..shape.numel()).map(|_| rng.bernoulli(p)).collect();
        Self::from_vec(data, shape)
    }

    fn build(storage: Storage, shape: Shape, grad_node: Option<Arc<GradNode>>) -> Tensor {
        Tensor(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shape,
            storage: RwLock::new(storage),
            grad_node,
        }))
    }

    /// The result of an op: records `backward` in the graph when gradients are enabled and
    /// any of `inputs` requires them. `backward` receives the output gradient and which inputs
    /// need a gradient, and returns one optional gradient per input, in order.
    pub fn from_op(
        op: &'static str,
        storage: Storage,
        shape: impl Into<Shape>,
        inputs: &[&Tensor],
        backward: impl FnOnce() -> BackwardFn,
    ) -> Result<Tensor> {
        let shape = shape.into();
        if storage.len() != shape.numel() {
            return Err(Error::shape(
                op,
                format!(
                    "kernel produced {} elements for output shape {shape}",
                    storage.len()
                ),
            ));
        }
        let node = if autograd::is_grad_enabled() && inputs.iter().any(|t| t.requires_grad()) {
            let edges = inputs.iter().map(|t| t.0.grad_node.clone()).collect();
            let shapes = inputs.iter().map(|t| t.shape().clone()).collect();
            Some(GradNode::op(op, edges, shapes, backward()))
        } else {
            None
        };
        Ok(Self::build(storage, shape, node))
    }

    // ----- accessors ------------------------------------------------------------------------

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.0.shape
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        self.0.shape.dims()
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.shape.rank()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.0.shape.numel()
    }

    /// Size of one dimension; negative axes count from the end.
    pub fn dim(&self, axis: isize) -> Result<usize> {
        let axis = self.0.shape.axis("dim", axis)?;
        Ok(self.0.shape.dim(axis))
    }

    /// The storage (a cheap clone sharing the buffer).
    pub fn storage(&self) -> Storage {
        match self.0.storage.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The device the elements live on.
    pub fn device(&self) -> Device {
        self.storage().device()
    }

    /// The device's backend.
    pub fn backend(&self) -> BackendRef {
        BackendRef(self.device())
    }

    /// A unique id (stable across clones of this tensor).
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The elements as a host vector in row-major order (a device-to-host copy for a GPU
    /// tensor); a failed copy is an error.
    pub fn try_to_vec(&self) -> Result<Vec<f32>> {
        self.storage().try_to_vec()
    }

    /// A copy of this tensor on `device` (the same tensor when it is already there). The only
    /// host↔device copy the engine makes; gradients flow back to the source device.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        let source = self.device();
        if &source == device {
            return Ok(self.clone());
        }
        let storage = device.backend().upload(self.try_to_vec()?)?;
        Tensor::from_op("to_device", storage, self.shape().clone(), &[self], || {
            Box::new(move |grad: &Tensor, _needs: &[bool]| Ok(vec![Some(grad.to_device(&source)?)]))
        })
    }

    /// The single element of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!(
                    "only one-element tensors have an item, got shape {}",
                    self.shape()
                ),
            ));
        }
        Ok(self.try_to_vec()?[0])
    }

    // ----- autograd -------------------------------------------------------------------------

    /// True when gradients flow to this tensor (a leaf that asked for them, or a result of ops
    /// on such tensors recorded while gradients were enabled).
    pub fn requires_grad(&self) -> bool {
        self.0.grad_node.is_some()
    }

    /// True for tensors not produced by a recorded op.
    pub fn is_leaf(&self) -> bool {
        self.0.grad_node.as_ref().is_none_or(|n| n.is_leaf())
    }

    /// A leaf sharing this tensor's storage that accumulates gradients (`.detach().requires_grad_()`
    /// on a fresh leaf in PyTorch terms); with `false`, a plain detached tensor.
    pub fn with_requires_grad(&self, requires_grad: bool) -> Tensor {
        let node = requires_grad.then(GradNode::leaf);
        Self::build(self.storage(), self.shape().clone(), node)
    }

    /// Same storage, cut from the graph.
    pub fn detach(&self) -> Tensor {
        self.with_requires_grad(false)
    }

    /// The accumulated gradient of a leaf, if `backward` has reached it.
    pub fn grad(&self) -> Option<Tensor> {
        self.0.grad_node.as_ref().and_then(|n| n.grad())
    }

    /// Clears a leaf's gradient (`zero_grad(set_to_none=True)`).
    pub fn clear_grad(&self) {
        if let Some(node) = &self.0.grad_node {
            node.set_grad(None);
        }
    }

    /// Backpropagates from this one-element tensor, accumulating into the leaves' gradients.
    /// The graph's saved activations are freed as they are used.
    pub fn backward(&self) -> Result<()> {
        autograd::backward(self)
    }

    pub(crate) fn grad_node(&self) -> Option<&Arc<GradNode>> {
        self.0.grad_node.as_ref()
    }

    /// Replaces the elements in place (optimizer steps, running statistics). The new values
    /// must have the same shape and device; the graph is not informed, so do this outside of
    /// a forward pass whose backward is still to run.
    pub fn replace_data(&self, values: &Tensor) -> Result<()> {
        if values.shape() != self.shape() {
            return Err(Error::shape(
                "replace_data",
                format!(
                    "new values have shape {}, tensor has {}",
                    values.shape(),
                    self.shape()
                ),
            ));
        }
        if values.device() != self.device() {
            return Err(Error::DeviceMismatch {
                op: "replace_data",
                lhs: self.device().to_string(),
                rhs: values.device().to_string(),
            });
        }
        let new = values.storage();
        self.set_storage(new);
        Ok(())
    }

    /// Swaps in `new` as this tensor's storage (every clone sees it).
    fn set_storage(&self, new: Storage) {
        match self.0.storage.write() {
            Ok(mut guard) => *guard = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }

    /// Moves a leaf's elements to `device` in place: every clone of this tensor (a module's
    /// parameter, an optimizer's handle on it) sees the new storage, and the tensor stays the
    /// same leaf (same id, same `requires_grad`). An accumulated gradient moves with it. This
    /// is how a network's parameters and buffers go to a device ([`crate::nn::to_device`]);
    /// [`Tensor::replace_data`] refuses to change a tensor's device, and [`Tensor::to_device`]
    /// makes a new tensor.
    ///
    /// Refused for the result of a recorded op (its backward may hold the old storage). A
    /// no-op when the tensor is already on `device`.
    pub fn move_leaf_to_device(&self, device: &Device) -> Result<()> {
        if !self.is_leaf() {
            return Err(Error::invalid(
                "move_leaf_to_device",
                format!(
                    "only leaves (parameters, buffers, detached tensors) can move in place; \
                     this {} tensor on {} is the result of a recorded op",
                    self.shape(),
                    self.device()
                ),
            ));
        }
        if &self.device() == device {
            return Ok(());
        }
        let new = device.backend().upload(self.try_to_vec()?)?;
        let moved_grad = match self.grad() {
            Some(grad) => Some(grad.detach().to_device(device)?),
            None => None,
        };
        self.set_storage(new);
        if let (Some(node), Some(grad)) = (&self.0.grad_node, moved_grad) {
            node.set_grad(Some(grad));
        }
        Ok(())
    }

    /// The same elements under a new shape (shares storage; `-1` infers one dimension).
    pub fn reshape(&self, dims: &[isize]) -> Result<Tensor> {
        let shape = infer_shape(self.numel(), dims)?;
        self.reshape_to(shape)
    }

    /// The same elements under a new shape given in full.
    pub fn reshape_to(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("cannot reshape {} into {shape}", self.shape()),
            ));
        }
        let input_shape = self.shape().clone();
        Tensor::from_op("reshape", self.storage(), shape, &[self], || {
            Box::new(move |grad: &Tensor, _: &[bool]| Ok(vec![Some(grad.reshape_to(input_shape)?)]))
        })
    }

    /// Flattens dimensions `start..=end` into one.
    pub fn flatten(&self, start: isize, end: isize) -> Result<Tensor> {
        if self.rank() == 0 {
            return self.reshape_to([1]);
        }
        let s = self.shape().axis("flatten", start)?;
        let e = self.shape().axis("flatten", end)?;
        if s > e {
            return Err(Error::invalid(
                "flatten",
                format!("start {start} is after end {end}"),
            ));
        }
        let dims = self.dims();
        let mut out: Vec<usize> = dims[..s].to_vec();
        out.push(dims[s..=e].iter().product());
        out.extend_from_slice(&dims[e + 1..]);
        self.reshape_to(out)
    }

    /// A no-op kept for PyTorch familiarity: every tensor here is contiguous (ops such as
    /// permute and transpose produce contiguous results).
    pub fn contiguous(&self) -> Tensor {
        self.clone()
    }

    /// Checks that `other` lives on the same device.
    pub fn same_device(&self, op: &'static str, other: &Tensor) -> Result<Device> {
        let (a, b) = (self.device(), other.device());
        if a != b {
            return Err(Error::DeviceMismatch {
                op,
                lhs: a.to_string(),
                rhs: b.to_string(),
            });
        }
        Ok(a)
    }

    /// Asserts the shape, for ops' argument checks.
    pub fn expect_rank(&self, op: &'static str, name: &str, rank: usize) -> Result<()> {
        self.shape().expect_rank(op, name, rank)
    }
}

/// A handle to a tensor's backend (keeps the device alive while kernels run).
pub struct BackendRef(Device);

impl std::ops::Deref for BackendRef {
    type Target = dyn Backend + 'static;
    fn deref(&self) -> &Self::Target {
        self.0.backend()
    }
}

fn infer_shape(numel: usize, dims: &[isize]) -> Result<Shape> {
    let mut inferred = None;
    let mut known = 1usize;
    let mut out = Vec::with_capacity(dims.len());
    for (i, &d) in dims.iter().enumerate() {
        if d == -1 {
            if inferred.is_some() {
                return Err(Error::invalid("reshape", "only one dimension can be -1"));
            }
            inferred = Some(i);
            out.push(0);
        } else if d < 0 {
            return Err(Error::invalid("reshape", format!("invalid dimension {d}")));
        } else {
            known *= d as usize;
            out.push(d as usize);
        }
    }
    if let Some(i) = inferred {
        if known == 0 || !numel.is_multiple_of(known) {
            return Err(Error::shape(
                "reshape",
                format!("cannot infer -1 in {dims:?} for {numel} elements"),
            ));
        }
        out[i] = numel / known;
    }
    Ok(Shape::new(out))
}

impl fmt::Debug for Tensor {
    /// Shape, device, grad flag and the first 8 elements; a failed copy to the host shows as
    /// `data=<copy to the host failed: …>` (formatting cannot return the engine's error).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor(shape={}, device={}, requires_grad={}, data=",
            self.shape(),
            self.device(),
            self.requires_grad(),
        )?;
        match self.try_to_vec() {
            Ok(data) => {
                let preview: Vec<f32> = data.iter().take(8).copied().collect();
                let more = if data.len() > 8 { ", …" } else { "" };
                write!(f, "{preview:?}{more})")
            }
            Err(e) => write!(f, "<copy to the host failed: {e}>)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_storage_and_reshape_shares_too() {
        let t = Tensor::from_vec((0..6).map(|v| v as f32).collect(), [2, 3]).unwrap();
        let c = t.clone();
        assert_eq!(c.id(), t.id());
        let r = t.reshape(&[3, -1]).unwrap();
        assert_eq!(r.dims(), &[3, 2]);
        match (t.storage(), r.storage()) {
            (Storage::Cpu(a), Storage::Cpu(b)) => assert!(Arc::ptr_eq(&a, &b)),
            _ => panic!("CPU tensors expected"),
        }
        assert_eq!(t.flatten(0, -1).unwrap().dims(), &[6]);
        assert_eq!(Tensor::scalar(2.5).item().unwrap(), 2.5);
        assert!(t.item().is_err());
        assert!(t.reshape(&[-1, -1]).is_err());
    }

    #[test]
    fn replace_data_updates_every_clone_and_checks_shape() {
        let p = Tensor::zeros([3], &Device::Cpu)
            .unwrap()
            .with_requires_grad(true);
        let alias = p.clone();
        p.replace_data(&Tensor::ones([3], &Device::Cpu).unwrap())
            .unwrap();
        assert_eq!(alias.try_to_vec().unwrap(), vec![1.0; 3]);
        assert!(alias.requires_grad());
        let err = p
            .replace_data(&Tensor::ones([4], &Device::Cpu).unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("[4]"));
    }
}
