//! CPU kernels of the dropout family.

use super::DropoutBackend;
use crate::backend::cpu::{CpuBackend, PAR_CHUNK};
use crate::error::Result;
use crate::tensor::Storage;
use rayon::prelude::*;

/// The SplitMix64 increment (2^64 / golden ratio).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Element `index` of the SplitMix64 stream seeded with `seed`: a strong 64-bit mix of
/// `seed + (index + 1) · γ`, so any element can be drawn independently.
fn splitmix64(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl DropoutBackend for CpuBackend {
    fn dropout_mask(&self, len: usize, p: f32, seed: u64) -> Result<Storage> {
        let keep_scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
        let mut mask = crate::backend::cpu::buffer_cache::zeroed(len);
        mask.par_chunks_mut(PAR_CHUNK)
            .enumerate()
            .for_each(|(chunk, values)| {
                let start = chunk * PAR_CHUNK;
                for (i, value) in values.iter_mut().enumerate() {
                    let bits = splitmix64(seed, (start + i) as u64);
                    let uniform = (bits >> 40) as f32 * (1.0 / (1u64 << 24) as f32);
                    *value = if uniform < p { 0.0 } else { keep_scale };
                }
            });
        Ok(Storage::cpu(mask))
    }
}
