//! deeplabv3plus (see `../shared/spec/networks.md`).

use super::{ModelConfig, SegNet};
use crate::error::Result;

/// Builds deeplabv3plus with fresh weights.
pub fn build(_config: &ModelConfig) -> Result<Box<dyn SegNet>> {
    Err(super::not_yet("deeplabv3plus"))
}
