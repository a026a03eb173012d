//! `nn.Sequential` and `nn.ModuleList`: children named `0`, `1`, … so state-dict keys read
//! `.0.`, `.1.`.

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

/// Modules held by index without a forward of their own (`nn.ModuleList`), e.g. the experts
/// of a MoE layer (`experts.0.weight`, `experts.1.weight`, …).
#[derive(Default)]
pub struct ModuleList {
    /// The children, in order.
    pub items: Vec<Box<dyn Module>>,
}

impl ModuleList {
    /// A list of modules.
    pub fn new(items: Vec<Box<dyn Module>>) -> Self {
        ModuleList { items }
    }
}

impl Module for ModuleList {
    fn type_name(&self) -> &'static str {
        "ModuleList"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        Err(Error::invalid(
            "ModuleList",
            format!(
                "has no forward of its own (input {}); call its items",
                input.shape()
            ),
        ))
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.items
            .iter()
            .enumerate()
            .map(|(i, m)| (i.to_string(), m.as_ref()))
            .collect()
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        let i = name.parse::<usize>().ok()?;
        Some(self.items.get_mut(i)?.as_mut())
    }

    fn replace_child(&mut self, name: &str, module: Box<dyn Module>) -> Result<Box<dyn Module>> {
        let len = self.items.len();
        let slot = name
            .parse::<usize>()
            .ok()
            .and_then(|i| self.items.get_mut(i))
            .ok_or_else(|| {
                Error::invalid(
                    "replace_module",
                    format!("ModuleList of {len} items has no child `{name}`"),
                )
            })?;
        Ok(std::mem::replace(slot, module))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
