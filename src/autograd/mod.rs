//! Reverse-mode automatic differentiation over a dynamic graph.
//!
//! Every tensor that takes part in differentiation carries a [`GradNode`]: a *leaf* holds the
//! gradient slot of a `requires_grad` tensor, an *op* node holds the backward closure of the op
//! that produced the tensor (with whatever activations it saved) and edges to its inputs' nodes.
//! [`backward`] orders the nodes topologically, runs each closure once with gradient recording
//! off, sums gradients of tensors used several times, and drops each closure (and the
//! activations it saved) right after it ran.

use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The backward of one op: given the gradient of its output and which inputs need gradients,
/// returns one optional gradient per input, in the order the inputs were recorded.
pub type BackwardFn =
    Box<dyn FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// A node of the graph.
pub struct GradNode {
    id: u64,
    kind: NodeKind,
}

enum NodeKind {
    Leaf {
        grad: Mutex<Option<Tensor>>,
    },
    Op {
        name: &'static str,
        inputs: Vec<Option<Arc<GradNode>>>,
        input_shapes: Vec<Shape>,
        backward: Mutex<Option<BackwardFn>>,
    },
}

static NEXT_NODE: AtomicU64 = AtomicU64::new(1);

/// Locks a mutex, recovering the value if a panicking thread poisoned it (the engine's locks
/// guard plain data that stays valid).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl GradNode {
    pub(crate) fn leaf() -> Arc<GradNode> {
        Arc::new(GradNode {
            id: NEXT_NODE.fetch_add(1, Ordering::Relaxed),
            kind: NodeKind::Leaf {
                grad: Mutex::new(None),
            },
        })
    }

    pub(crate) fn op(
        name: &'static str,
        inputs: Vec<Option<Arc<GradNode>>>,
        input_shapes: Vec<Shape>,
        backward: BackwardFn,
    ) -> Arc<GradNode> {
        Arc::new(GradNode {
            id: NEXT_NODE.fetch_add(1, Ordering::Relaxed),
            kind: NodeKind::Op {
                name,
                inputs,
                input_shapes,
                backward: Mutex::new(Some(backward)),
            },
        })
    }

    pub(crate) fn is_leaf(&self) -> bool {
        matches!(self.kind, NodeKind::Leaf { .. })
    }

    pub(crate) fn grad(&self) -> Option<Tensor> {
        match &self.kind {
            NodeKind::Leaf { grad } => lock(grad).clone(),
            NodeKind::Op { .. } => None,
        }
    }

    pub(crate) fn set_grad(&self, value: Option<Tensor>) {
        if let NodeKind::Leaf { grad } = &self.kind {
            *lock(grad) = value;
        }
    }

    fn inputs(&self) -> &[Option<Arc<GradNode>>] {
        match &self.kind {
            NodeKind::Leaf { .. } => &[],
            NodeKind::Op { inputs, .. } => inputs,
        }
    }
}

impl Drop for GradNode {
    /// Frees a chain of nodes iteratively: the default recursive drop would overflow the
    /// stack on graphs thousands of ops deep.
    fn drop(&mut self) {
        let NodeKind::Op { inputs, .. } = &mut self.kind else {
            return;
        };
        let mut stack: Vec<Arc<GradNode>> = inputs.drain(..).flatten().collect();
        while let Some(node) = stack.pop() {
            if let Ok(mut node) = Arc::try_unwrap(node) {
                if let NodeKind::Op { inputs, .. } = &mut node.kind {
                    stack.extend(inputs.drain(..).flatten());
                }
            }
        }
    }
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// True unless inside [`no_grad`] (per thread).
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Runs `f` without recording ops in the graph (`torch.no_grad()`): for evaluation, optimizer
/// steps and the backward pass itself.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _guard = NoGradGuard::new();
    f()
}

/// Turns gradient recording off until dropped (restoring the previous state).
pub struct NoGradGuard {
    previous: bool,
}

impl NoGradGuard {
    /// Disables recording on this thread.
    pub fn new() -> Self {
        let previous = GRAD_ENABLED.with(|g| g.replace(false));
        NoGradGuard { previous }
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.previous));
    }
}

/// Nodes reachable from `root`, each after all nodes that consume it (reverse post-order of
/// an iterative depth-first search, so deep networks cannot overflow the stack).
fn topological_order(root: &Arc<GradNode>) -> Vec<Arc<GradNode>> {
    let mut visited = std::collections::HashSet::new();
    let mut post_order = Vec::new();
    let mut stack: Vec<(Arc<GradNode>, usize)> = vec![(root.clone(), 0)];
    visited.insert(root.id);
    while let Some((node, next_child)) = stack.pop() {
        let inputs = node.inputs();
        if let Some(child) = inputs[next_child..].iter().position(Option::is_some) {
            let child_index = next_child + child;
            let child_node = inputs[child_index].clone();
            stack.push((node, child_index + 1));
            if let Some(child_node) = child_node {
                if visited.insert(child_node.id) {
                    stack.push((child_node, 0));
                }
            }
        } else {
            post_order.push(node);
        }
    }
    post_order.reverse();
    post_order
}

/// Backpropagates from the one-element tensor `root` (see [`Tensor::backward`]).
pub fn backward(root: &Tensor) -> Result<()> {
    if root.numel() != 1 {
        return Err(Error::Autograd(format!(
            "backward() needs a one-element tensor (a loss), got shape {}",
            root.shape()
        )));
    }
    let Some(root_node) = root.grad_node() else {
        return Err(Error::Autograd(
            "backward() on a tensor that does not require grad: no input asked for gradients, \
             or it was computed inside no_grad"
                .into(),
        ));
    };
    let _guard = NoGradGuard::new();
    let order = topological_order(root_node);
    let mut pending: HashMap<u64, Tensor> = HashMap::new();
    pending.insert(root_node.id, root.ones_like()?);

    for node in order {
        let Some(grad) = pending.remove(&node.id) else {
            continue;
        };
        match &node.kind {
            NodeKind::Leaf { grad: slot } => {
                let mut slot = lock(slot);
                let total = match slot.take() {
                    Some(existing) => existing.add(&grad)?,
                    None => grad,
                };
                *slot = Some(total);
            }
            NodeKind::Op {
                name,
                inputs,
                input_shapes,
                backward,
            } => {
                let Some(backward_fn) = lock(backward).take() else {
                    return Err(Error::Autograd(format!(
                        "backward through `{name}` a second time: its saved values were freed \
                         by the first backward"
                    )));
                };
                let needs: Vec<bool> = inputs.iter().map(Option::is_some).collect();
                let grads = backward_fn(&grad, &needs)?;
                if grads.len() != inputs.len() {
                    return Err(Error::Autograd(format!(
                        "`{name}` returned {} gradients for {} inputs",
                        grads.len(),
                        inputs.len()
                    )));
                }
                for ((input, g), shape) in inputs.iter().zip(grads).zip(input_shapes) {
                    let (Some(input), Some(g)) = (input, g) else {
                        continue;
                    };
                    if g.shape() != shape {
                        return Err(Error::Autograd(format!(
                            "`{name}` returned a gradient of shape {} for an input of shape {shape}",
                            g.shape()
                        )));
                    }
                    let total = match pending.remove(&input.id) {
                        Some(existing) => existing.add(&g)?,
                        None => g,
                    };
                    pending.insert(input.id, total);
                }
            }
        }
    }
    Ok(())
}
