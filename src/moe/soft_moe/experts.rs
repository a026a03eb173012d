//! The batched fast path of the experts: when every expert is a [`Linear`] or every expert is
//! an [`Mlp`] of one shape, each projection of all `n` experts is one batched matmul
//! `[n, b·p, in] × [n, out, in]ᵀ` over the experts' weights stacked along a new leading axis
//! (and a broadcast add of the stacked biases `[n, 1, out]`), instead of `n` small products.
//! Gradients reach each expert's own weight through the stacking (a concatenation). On the CPU
//! the stacking is skipped: [`Tensor::grouped_linear`] reads every expert's weight in place.

use crate::error::Result;
use crate::nn::{Linear, Mlp, Module, ModuleList};
use crate::ops::activation::Activation;
use crate::tensor::Tensor;

/// Experts whose projections can be stacked.
pub enum StackedExperts<'a> {
    /// Every expert is one linear layer.
    Linear(Vec<&'a Linear>),
    /// Every expert is `fc1 → activation → fc2`, with one activation for all.
    Mlp {
        /// Each expert's `fc1`.
        fc1: Vec<&'a Linear>,
        /// The shared activation.
        activation: Activation,
        /// Each expert's `fc2`.
        fc2: Vec<&'a Linear>,
    },
}

impl<'a> StackedExperts<'a> {
    /// The stackable form of `experts`, or `None` when they are of another type, of mixed
    /// types or shapes (the caller then runs them one by one).
    pub fn detect(experts: &'a ModuleList) -> Option<Self> {
        let items = &experts.items;
        if let Some(linears) = downcast_all::<Linear>(items) {
            return same_shapes(&linears).then_some(StackedExperts::Linear(linears));
        }
        let mlps = downcast_all::<Mlp>(items)?;
        let activation = mlps.first()?.activation;
        if mlps.iter().any(|m| m.activation != activation) {
            return None;
        }
        let fc1: Vec<&Linear> = mlps.iter().map(|m| &m.fc1).collect();
        let fc2: Vec<&Linear> = mlps.iter().map(|m| &m.fc2).collect();
        (same_shapes(&fc1) && same_shapes(&fc2)).then_some(StackedExperts::Mlp {
            fc1,
            activation,
            fc2,
        })
    }

    /// Slots `[b, n·p, d]` (expert-major: expert `j` owns slots `j·p .. (j+1)·p`) through
    /// their experts: `[b, n·p, d_out]`.
    pub fn forward(&self, slots: &Tensor, num_experts: usize) -> Result<Tensor> {
        let (b, s, d) = (slots.dims()[0], slots.dims()[1], slots.dims()[2]);
        let p = s / num_experts;
        let per_expert = slots
            .reshape_to([b, num_experts, p, d])?
            .permute(&[1, 0, 2, 3])?
            .reshape_to([num_experts, b * p, d])?;
        let out = match self {
            StackedExperts::Linear(layers) => stacked_linear(&per_expert, layers)?,
            StackedExperts::Mlp {
                fc1,
                activation,
                fc2,
            } => {
                let hidden = stacked_linear(&per_expert, fc1)?.activation(*activation)?;
                stacked_linear(&hidden, fc2)?
            }
        };
        let d_out = out.dims()[2];
        out.reshape_to([num_experts, b, p, d_out])?
            .permute(&[1, 0, 2, 3])?
            .reshape_to([b, s, d_out])
    }
}

/// `x[j] · W_jᵀ + b_j` for every expert `j` at once: `x` is `[n, rows, in]`.
/// On the CPU the weights are read where they are ([`Tensor::grouped_linear`]); elsewhere they
/// are stacked for one batched matmul.
fn stacked_linear(x: &Tensor, layers: &[&Linear]) -> Result<Tensor> {
    if x.supports_grouped_linear() && layers.iter().all(|l| l.weight.supports_grouped_linear()) {
        let weights: Vec<&Tensor> = layers.iter().map(|l| &l.weight).collect();
        let biases: Option<Vec<&Tensor>> = layers.iter().map(|l| l.bias.as_ref()).collect();
        return x.grouped_linear(&weights, biases.as_deref());
    }
    let weights = stack(layers.iter().map(|l| &l.weight))?;
    let y = x.matmul_t(&weights)?;
    let biases: Option<Vec<&Tensor>> = layers.iter().map(|l| l.bias.as_ref()).collect();
    match biases {
        Some(biases) => {
            let out = biases[0].dims()[0];
            let stacked = stack(biases.into_iter())?.reshape_to([layers.len(), 1, out])?;
            y.add(&stacked)
        }
        None => Ok(y),
    }
}

/// The tensors stacked along a new leading axis.
fn stack<'t>(tensors: impl Iterator<Item = &'t Tensor>) -> Result<Tensor> {
    let expanded: Vec<Tensor> = tensors.map(|t| t.unsqueeze(0)).collect::<Result<_>>()?;
    let refs: Vec<&Tensor> = expanded.iter().collect();
    Tensor::cat(&refs, 0)
}

fn downcast_all<T: 'static>(items: &[Box<dyn Module>]) -> Option<Vec<&T>> {
    items
        .iter()
        .map(|m| m.as_any().downcast_ref::<T>())
        .collect()
}

/// All layers have the first one's weight shape and bias presence (and there is one).
fn same_shapes(layers: &[&Linear]) -> bool {
    let Some(first) = layers.first() else {
        return false;
    };
    layers
        .iter()
        .all(|l| l.weight.dims() == first.weight.dims() && l.bias.is_some() == first.bias.is_some())
}
