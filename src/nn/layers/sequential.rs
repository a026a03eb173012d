//! `nn.Sequential`: children named `0`, `1`, … so state-dict keys read `.0.`, `.1.`.

use crate::error::{Error, Result};
use crate::nn::Module;
use crate::tensor::Tensor;
use std::any::Any;

/// Modules applied in order.
#[derive(Default)]
pub struct Sequential {
    /// The children, in order.
    pub layers: Vec<Box<dyn Module>>,
}

impl Sequential {
    /// A sequence of modules.
    pub fn new(layers: Vec<Box<dyn Module>>) -> Self {
        Sequential { layers }
    }

    /// Appends a module (builder style).
    pub fn push(mut self, layer: impl Module) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    fn index(&self, name: &str) -> Option<usize> {
        name.parse::<usize>()
            .ok()
            .filter(|&i| i < self.layers.len())
    }
}

impl Module for Sequential {
    fn type_name(&self) -> &'static str {
        "Sequential"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let mut x = input.clone();
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, m)| (i.to_string(), m.as_ref()))
            .collect()
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        let i = self.index(name)?;
        Some(self.layers[i].as_mut())
    }

    fn replace_child(&mut self, name: &str, module: Box<dyn Module>) -> Result<Box<dyn Module>> {
        let i = self.index(name).ok_or_else(|| {
            Error::invalid(
                "replace_module",
                format!(
                    "Sequential of {} layers has no child `{name}`",
                    self.layers.len()
                ),
            )
        })?;
        Ok(std::mem::replace(&mut self.layers[i], module))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
