//! The layers networks are built from, with PyTorch's parameter names, shapes and defaults.

mod activation;
mod conv;
mod dropout;
mod linear;
mod mlp;
mod norm;
mod pool;
mod sequential;
mod upsample;

pub use activation::{ActivationLayer, PReLU};
pub use conv::{Conv2d, ConvOptions, ConvPadding, ConvTranspose2d};
pub use dropout::{set_dropout_probability, Dropout, Dropout2d};
pub use linear::Linear;
pub use mlp::Mlp;
pub use norm::{BatchCount, BatchNorm2d, LayerNorm};
pub use pool::{AdaptiveAvgPool2d, AvgPool2d, MaxPool2d, MaxUnpool2d};
pub use sequential::{ModuleList, Sequential};
pub use upsample::Upsample;
