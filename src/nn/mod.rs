//! Layers and the [`Module`] abstraction: named parameters and buffers in PyTorch's dotted-path
//! style (`layer1.0.conv1.weight`, `bn.running_mean`), train / eval mode reaching every
//! sub-module, and visiting or replacing sub-modules by path (MoE layers replace convs by path).

pub mod init;
pub mod layers;
pub mod state_dict;

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};

pub use layers::set_dropout_probability;
pub use layers::{
    ActivationLayer, AdaptiveAvgPool2d, AvgPool2d, BatchCount, BatchNorm2d, Conv2d, ConvOptions,
    ConvPadding, ConvTranspose2d, Dropout, Dropout2d, LayerNorm, Linear, MaxPool2d, MaxUnpool2d,
    Mlp, ModuleList, PReLU, Sequential, Upsample,
};

/// What a named tensor of a module is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Trained by the optimizer (`nn.Parameter`).
    Parameter,
    /// State saved with the model but not trained (`register_buffer`), stored with this dtype
    /// (`num_batches_tracked` is i64 in PyTorch checkpoints).
    Buffer(DType),
}

/// One of a module's own tensors: its local name (`weight`), the tensor and its role.
pub struct OwnTensor {
    /// Name within the module.
    pub name: &'static str,
    /// The tensor (a cheap clone sharing the module's storage).
    pub tensor: Tensor,
    /// Parameter or buffer.
    pub role: Role,
}

impl OwnTensor {
    /// A parameter entry.
    pub fn parameter(name: &'static str, tensor: &Tensor) -> Self {
        OwnTensor {
            name,
            tensor: tensor.clone(),
            role: Role::Parameter,
        }
    }

    /// `weight` and, when present, `bias` parameters (conv and linear layers).
    pub fn weight_and_bias(weight: &Tensor, bias: Option<&Tensor>) -> Vec<Self> {
        let mut out = vec![Self::parameter("weight", weight)];
        out.extend(bias.map(|b| Self::parameter("bias", b)));
        out
    }

    /// A buffer entry stored as `dtype`.
    pub fn buffer(name: &'static str, tensor: &Tensor, dtype: DType) -> Self {
        OwnTensor {
            name,
            tensor: tensor.clone(),
            role: Role::Buffer(dtype),
        }
    }
}

/// A layer or a network: `torch.nn.Module`.
///
/// A module lists its own tensors (in registration order) and its children (in order); the
/// state dict is its own tensors, then each child's under `child_name.` — PyTorch's order.
pub trait Module: Any + Send + Sync {
    /// The type's name for messages (`"Conv2d"`).
    fn type_name(&self) -> &'static str;

    /// The forward pass on one input.
    fn forward(&self, input: &Tensor) -> Result<Tensor>;

    /// Own parameters and buffers, in registration order.
    fn own_tensors(&self) -> Vec<OwnTensor> {
        Vec::new()
    }

    /// Direct sub-modules with their names, in order.
    fn children(&self) -> Vec<(String, &dyn Module)> {
        Vec::new()
    }

    /// A direct sub-module, mutably (to reach deeper ones for replacement).
    fn child_mut(&mut self, _name: &str) -> Option<&mut dyn Module> {
        None
    }

    /// Puts `module` in the place of child `name` and returns the old one. Only children held
    /// as `Box<dyn Module>` can be replaced.
    fn replace_child(&mut self, name: &str, _module: Box<dyn Module>) -> Result<Box<dyn Module>> {
        Err(Error::invalid(
            "replace_module",
            format!("{} has no replaceable child `{name}`", self.type_name()),
        ))
    }

    /// Sets this module's own train / eval flag (children are reached by [`set_training`]).
    fn set_own_training(&self, _training: bool) {}

    /// For downcasting (e.g. checking that a path is a `Conv2d`).
    fn as_any(&self) -> &dyn Any;
}

impl std::fmt::Debug for dyn Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.type_name())
    }
}

/// A train / eval flag that can be flipped through `&self` (PyTorch's `module.training`).
#[derive(Debug)]
pub struct TrainingFlag(AtomicBool);

impl Default for TrainingFlag {
    /// Modules start in training mode, as in PyTorch.
    fn default() -> Self {
        TrainingFlag(AtomicBool::new(true))
    }
}

impl TrainingFlag {
    /// True in training mode.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets the mode.
    pub fn set(&self, training: bool) {
        self.0.store(training, Ordering::Relaxed)
    }
}

/// `module.train(training)`: sets the mode of the module and every sub-module.
pub fn set_training(module: &dyn Module, training: bool) {
    visit_modules(module, &mut |_, m| m.set_own_training(training));
}

/// Calls `f(path, module)` for the module (path `""`) and every sub-module, depth first in
/// order (`named_modules()`).
pub fn visit_modules(module: &dyn Module, f: &mut dyn FnMut(&str, &dyn Module)) {
    fn walk(path: &str, module: &dyn Module, f: &mut dyn FnMut(&str, &dyn Module)) {
        f(path, module);
        for (name, child) in module.children() {
            walk(&join(path, &name), child, f);
        }
    }
    walk("", module, f);
}

/// Every parameter and buffer with its full dotted name, in state-dict order.
pub fn named_tensors(module: &dyn Module) -> Vec<(String, Tensor, Role)> {
    let mut out = Vec::new();
    visit_modules(module, &mut |path, m| {
        for own in m.own_tensors() {
            out.push((join(path, own.name), own.tensor, own.role));
        }
    });
    out
}

/// Every parameter with its full dotted name (`named_parameters()`).
pub fn named_parameters(module: &dyn Module) -> Vec<(String, Tensor)> {
    named_tensors(module)
        .into_iter()
        .filter(|(_, _, role)| *role == Role::Parameter)
        .map(|(name, tensor, _)| (name, tensor))
        .collect()
}

/// `module.to(device)`: moves every parameter and buffer of `module` to `device` in place
/// ([`Tensor::move_leaf_to_device`]). Parameters stay the same leaves with `requires_grad`, so
/// an optimizer built over [`named_parameters`] before or after the move updates the moved
/// tensors (build it after the move: its state is created on the parameters' device). A
/// tensor shared by several sub-modules moves once. Integer buffers (i64 in checkpoints:
/// BatchNorm's `num_batches_tracked`) are host-side counters and stay on the host, so a
/// training step never reads a count back from the device.
pub fn to_device(module: &dyn Module, device: &crate::backend::Device) -> Result<()> {
    for (name, tensor, role) in named_tensors(module) {
        if role == Role::Buffer(DType::I64) {
            continue;
        }
        tensor.move_leaf_to_device(device).map_err(|e| {
            Error::invalid(
                "to_device",
                format!("`{name}` of {}: {e}", module.type_name()),
            )
        })?;
    }
    Ok(())
}

/// The device of a module's first parameter or buffer (the CPU for a module without any): where
/// its inputs must be for a forward.
pub fn module_device(module: &dyn Module) -> crate::backend::Device {
    named_tensors(module)
        .first()
        .map(|(_, tensor, _)| tensor.device())
        .unwrap_or_default()
}

/// Number of trainable scalars.
pub fn parameter_count(module: &dyn Module) -> usize {
    named_parameters(module)
        .iter()
        .map(|(_, t)| t.numel())
        .sum()
}

/// The sub-module at a dotted `path` (`""` is the module itself).
pub fn get_module<'a>(module: &'a dyn Module, path: &str) -> Result<&'a dyn Module> {
    let mut current = module;
    for (depth, part) in path.split('.').filter(|p| !p.is_empty()).enumerate() {
        let children = current.children();
        let found = children
            .iter()
            .find(|(name, _)| name == part)
            .map(|(_, m)| *m);
        current = found.ok_or_else(|| no_such_path(path, depth, current))?;
    }
    Ok(current)
}

/// Replaces the sub-module at `path` by `module` and returns the old one (for MoE layers that
/// replace a conv).
pub fn replace_module(
    root: &mut dyn Module,
    path: &str,
    module: Box<dyn Module>,
) -> Result<Box<dyn Module>> {
    let parts: Vec<&str> = path.split('.').filter(|p| !p.is_empty()).collect();
    let Some((last, parents)) = parts.split_last() else {
        return Err(Error::invalid(
            "replace_module",
            "an empty path names the root itself",
        ));
    };
    let mut current: &mut dyn Module = root;
    for (depth, part) in parents.iter().enumerate() {
        let type_name = current.type_name();
        let children: Vec<String> = current.children().into_iter().map(|(n, _)| n).collect();
        current = current.child_mut(part).ok_or_else(|| {
            Error::invalid(
                "replace_module",
                format!(
                    "`{path}`: {type_name} at `{}` has no child `{part}` (children: {})",
                    parts[..depth].join("."),
                    children.join(", ")
                ),
            )
        })?;
    }
    current.replace_child(last, module)
}

fn no_such_path(path: &str, depth: usize, at: &dyn Module) -> Error {
    let parts: Vec<&str> = path.split('.').filter(|p| !p.is_empty()).collect();
    let children: Vec<String> = at.children().into_iter().map(|(n, _)| n).collect();
    Error::invalid(
        "get_module",
        format!(
            "`{path}`: {} at `{}` has no child `{}` (children: {})",
            at.type_name(),
            parts[..depth].join("."),
            parts[depth],
            if children.is_empty() {
                "none".to_string()
            } else {
                children.join(", ")
            }
        ),
    )
}

/// `prefix.name`, or `name` at the root.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
