//! Counting multiply-accumulates (MACs) of a forward pass, the way the network summaries count
//! them: convolutions, transposed convolutions, linear layers, matrix products (the routing
//! products of soft MoE layers) and the routed expert convolutions of PatchConvMoE and
//! SoftConvMoE; nothing else (activations, norms, pools, resizes are free).
//!
//! [`count_macs`] runs a closure in a *dry run*: the counted ops add their MACs and return zeros
//! of the right shape instead of computing, so even a 512×1024 forward of a large network takes
//! a moment. Everything else runs as usual on those zeros, so the shapes are the real ones.

use crate::error::Result;
use std::cell::Cell;

thread_local! {
    static COUNT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Runs `forward` as a dry run without gradient recording and returns its result and the MACs
/// of the counted ops it called on this thread.
pub fn count_macs<R>(forward: impl FnOnce() -> Result<R>) -> Result<(R, u64)> {
    let previous = COUNT.with(|c| c.replace(Some(0)));
    let result = crate::autograd::no_grad(forward);
    let counted = COUNT.with(|c| c.replace(previous)).unwrap_or(0);
    Ok((result?, counted))
}

/// True inside [`count_macs`].
pub fn is_counting() -> bool {
    COUNT.with(|c| c.get().is_some())
}

/// Adds `macs` to the running count and returns true when counting: the caller then skips its
/// arithmetic and returns zeros.
pub(crate) fn record(macs: usize) -> bool {
    COUNT.with(|c| match c.get() {
        Some(total) => {
            c.set(Some(total + macs as u64));
            true
        }
        None => false,
    })
}
