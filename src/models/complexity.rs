//! Parameter and multiply-accumulate counts of a network, as `../shared/manifests/summary.md`
//! defines them: parameters in total and *active* (k of the E experts of every PatchConvMoE
//! counted, the gate always), and MACs of one eval-mode forward (convolutions, transposed
//! convolutions, linear layers; a PatchConvMoE costs its gate on the halo tokens plus k expert
//! convolutions per token on the central patch outputs).

use crate::error::Result;
use crate::moe::PatchConvMoE;
use crate::nn::{module_device, parameter_count, set_training, visit_modules, Module};
use crate::ops::macs::count_macs;
use crate::tensor::Tensor;

/// The counts for one network at one input size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Complexity {
    /// Every parameter (trainable = total for all networks here).
    pub total_params: u64,
    /// Parameters a token uses: total minus `E − k` experts of every MoE layer.
    pub active_params: u64,
    /// Multiply-accumulates of one forward at `input`.
    pub macs: u64,
    /// The `[B, 3, H, W]` input the MACs are for.
    pub input: [usize; 4],
}

impl Complexity {
    /// MACs in units of 10⁹, as the summary's "G" column.
    pub fn gmacs(&self) -> f64 {
        self.macs as f64 / 1e9
    }
}

/// Counts the parameters of `net` and the MACs of one forward at `input` (a dry run: no
/// arithmetic is done, so a 512×1024 forward takes a moment). Leaves `net` in eval mode.
pub fn complexity(net: &dyn Module, input: [usize; 4]) -> Result<Complexity> {
    let (total, active) = parameter_counts(net);
    set_training(net, false);
    let zeros = Tensor::zeros(input, &module_device(net))?;
    let (_, macs) = count_macs(|| net.forward(&zeros))?;
    Ok(Complexity {
        total_params: total,
        active_params: active,
        macs,
        input,
    })
}

/// `(total, active)` parameters: active leaves out the `E − k` unused experts of every
/// PatchConvMoE.
pub fn parameter_counts(net: &dyn Module) -> (u64, u64) {
    let total = parameter_count(net) as u64;
    let mut inactive = 0u64;
    visit_modules(net, &mut |_, module| {
        if let Some(moe) = module.as_any().downcast_ref::<PatchConvMoE>() {
            inactive += moe.inactive_parameter_count() as u64;
        }
    });
    (total, total - inactive)
}
