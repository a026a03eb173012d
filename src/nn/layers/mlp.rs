//! timm's `Mlp` (`timm.layers.Mlp`): `fc1 → act → fc2`, the feed-forward block of a Vision
//! Transformer and the expert of a Soft-MoE ViT.

use crate::error::Result;
use crate::nn::{Linear, Module};
use crate::ops::activation::Activation;
use crate::tensor::Tensor;
use std::any::Any;

/// `Mlp(in_features, hidden_features, out_features, act_layer)` with both linears biased
/// (timm's default): state-dict keys `fc1.weight`, `fc1.bias`, `fc2.weight`, `fc2.bias`. The
/// dropouts and the optional norm of timm's block are identities at the ViT defaults
/// (`drop = 0`, `norm_layer = None`) and are not represented.
pub struct Mlp {
    /// `[hidden, in]` first projection.
    pub fc1: Linear,
    /// The activation between the projections (GELU in a ViT).
    pub activation: Activation,
    /// `[out, hidden]` second projection.
    pub fc2: Linear,
}

impl Mlp {
    /// An MLP with PyTorch's default init of both linears and the given activation.
    pub fn new(
        in_features: usize,
        hidden_features: usize,
        out_features: usize,
        activation: Activation,
    ) -> Result<Self> {
        Ok(Mlp {
            fc1: Linear::new(in_features, hidden_features, true)?,
            activation,
            fc2: Linear::new(hidden_features, out_features, true)?,
        })
    }
}

impl Module for Mlp {
    fn type_name(&self) -> &'static str {
        "Mlp"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let hidden = self.fc1.forward(input)?.activation(self.activation)?;
        self.fc2.forward(&hidden)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("fc1".to_string(), &self.fc1 as &dyn Module),
            ("fc2".to_string(), &self.fc2 as &dyn Module),
        ]
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
