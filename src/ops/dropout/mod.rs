//! Dropout and dropout2d (training only; identity in evaluation).
//!
//! Kept values are scaled by `1 / (1 − p)` so the expectation is unchanged. The mask is a
//! backend kernel driven by a single u64 seed and a counter-based hash of the element index,
//! so it is parallel, reproducible for a seed, and can be generated the same way on a GPU.
//! The seed comes from the default generator ([`crate::tensor::manual_seed`]) or from an
//! explicit [`Rng`].

mod cpu_kernel;
mod cuda_kernel;

use crate::error::{Error, Result};
use crate::tensor::{with_default_rng, Rng, Storage, Tensor};

/// Kernels of this family.
pub trait DropoutBackend {
    /// `len` mask values: 0 with probability `p`, else `1 / (1 − p)`. Element `i` depends only
    /// on `(seed, i)`: it is dropped when `u < p` for `u` uniform in [0, 1) from the top 24
    /// bits of `splitmix64(seed + (i + 1) · γ)`.
    fn dropout_mask(&self, len: usize, p: f32, seed: u64) -> Result<Storage>;
}

impl Tensor {
    /// Zeroes each element with probability `p` and scales the rest by `1 / (1 − p)` when
    /// `training` (identity otherwise), drawing the seed from the default generator. The
    /// gradient is `grad · mask · 1/(1 − p)`.
    pub fn dropout(&self, p: f32, training: bool) -> Result<Tensor> {
        self.dropout_impl("dropout", p, training, false, None)
    }

    /// [`Tensor::dropout`] with the seed drawn from `rng`.
    pub fn dropout_with_rng(&self, p: f32, training: bool, rng: &mut Rng) -> Result<Tensor> {
        self.dropout_impl("dropout", p, training, false, Some(rng))
    }

    /// Zeroes whole channels (`[n, c, :, :]` planes of NCHW input) with probability `p` and
    /// scales the rest by `1 / (1 − p)` when `training`, seed from the default generator.
    pub fn dropout2d(&self, p: f32, training: bool) -> Result<Tensor> {
        self.dropout_impl("dropout2d", p, training, true, None)
    }

    /// [`Tensor::dropout2d`] with the seed drawn from `rng`.
    pub fn dropout2d_with_rng(&self, p: f32, training: bool, rng: &mut Rng) -> Result<Tensor> {
        self.dropout_impl("dropout2d", p, training, true, Some(rng))
    }

    /// Shared body: `per_channel` draws one mask value per `[n, c]` plane instead of per element.
    fn dropout_impl(
        &self,
        op: &'static str,
        p: f32,
        training: bool,
        per_channel: bool,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid(
                op,
                format!("p must be in [0, 1], got {p} (input {})", self.shape()),
            ));
        }
        if per_channel && self.rank() != 4 {
            return Err(Error::shape(
                op,
                format!("input must be [N, C, H, W], got {}", self.shape()),
            ));
        }
        if !training || p == 0.0 {
            return Ok(self.clone());
        }
        let seed = match rng {
            Some(rng) => rng.next_u64(),
            None => with_default_rng(|rng| rng.next_u64()),
        };
        let mask_dims = if per_channel {
            vec![self.dims()[0], self.dims()[1], 1, 1]
        } else {
            self.dims().to_vec()
        };
        let mask_len = mask_dims.iter().product();
        let mask = self.backend().dropout_mask(mask_len, p, seed)?;
        let mask = Tensor::from_storage(mask, mask_dims)?;
        // The mask is a constant: mul's backward gives exactly grad · mask.
        self.mul(&mask)
    }
}
