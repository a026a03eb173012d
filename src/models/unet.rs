//! unet (see `../shared/spec/networks.md`).

use super::{ModelConfig, SegNet};
use crate::error::Result;

/// Builds unet with fresh weights.
pub fn build(_config: &ModelConfig) -> Result<Box<dyn SegNet>> {
    Err(super::not_yet("unet"))
}
