//! Routing diagnostics of a Soft-MoE layer, as vmoe's `SoftRouter.get_metrics` logs them
//! (google-research/vmoe, `vmoe/projects/soft_moe/router.py`), with each image of the batch a
//! routing group.
//!
//! With dispatch `D` and combine `C` weights `[b, m, s]` (m tokens, s = n·p slots):
//! - `dispatch_min_mean` / `dispatch_max_mean`: for every image and slot, the smallest /
//!   largest dispatch weight over the m tokens; averaged over images and slots. Uniform
//!   dispatch gives `1/m` for both; a slot that copies one token gives 0 and 1.
//! - `combine_min_mean` / `combine_max_mean`: for every image and token, the smallest /
//!   largest combine weight over the s slots; averaged over images and tokens.
//! - `combine_similarity`: cosine similarity between the combine-weight vectors (length s) of
//!   every pair of distinct tokens of one image: min, max and mean over all such pairs of all
//!   images (high: the tokens are mixed back from the same slots).
//! - `dispatch_similarity`: the same between the dispatch-weight vectors (length m) of every
//!   pair of distinct slots of one image (high: slots see the same mixture of tokens).
//! - `phi_similarity`: the same between the router's columns `phi[:, i, j]` (length d) of
//!   every pair of distinct slots.
//!
//! Cosine similarity is `⟨u, v⟩ / (√(‖u‖² + 1e-9) · √(‖v‖² + 1e-9))` (vmoe's `cosine_psim`).
//! vmoe's mean subtracts the diagonal assuming it is exactly 1; here the mean is taken over
//! the distinct pairs exactly. Values are computed in f64 on the host.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// What a soft layer keeps of its routing diagnostics: off by default (they copy the routing
/// weights to the host); while on, the last forward's and all of them merged. Shared by
/// [`crate::moe::SoftMoE`] and [`crate::moe::SoftConvMoE`] (the [`SoftRoutingLayer`] trait).
#[derive(Debug, Default)]
pub struct DiagnosticsRecorder {
    on: AtomicBool,
    data: Mutex<Option<(SoftRoutingDiagnostics, SoftRoutingDiagnostics)>>,
}

impl DiagnosticsRecorder {
    /// Turns recording on or off; either way clears what was recorded.
    pub fn set_recording(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
        *self.lock() = None;
    }

    /// Whether forwards are being recorded.
    pub fn is_recording(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// While recording, computes ([`compute`]) and records one forward's diagnostics from its
    /// routing weights and router; otherwise does nothing.
    pub fn observe(
        &self,
        dispatch: &Tensor,
        combine: &Tensor,
        phi: &Tensor,
        num_experts: usize,
    ) -> Result<()> {
        if self.is_recording() {
            self.record(compute(dispatch, combine, phi, num_experts)?);
        }
        Ok(())
    }

    /// Records one forward's diagnostics.
    pub fn record(&self, stats: SoftRoutingDiagnostics) {
        let mut guard = self.lock();
        let merged = match *guard {
            Some((_, mut all)) => {
                all.merge(&stats);
                all
            }
            None => stats,
        };
        *guard = Some((stats, merged));
    }

    /// The last recorded forward's diagnostics.
    pub fn last(&self) -> Option<SoftRoutingDiagnostics> {
        self.lock().map(|(last, _)| last)
    }

    /// Every recorded forward's diagnostics, merged ([`SoftRoutingDiagnostics::merge`]).
    pub fn merged(&self) -> Option<SoftRoutingDiagnostics> {
        self.lock().map(|(_, all)| all)
    }

    fn lock(&self) -> MutexGuard<'_, Option<(SoftRoutingDiagnostics, SoftRoutingDiagnostics)>> {
        // A panic while holding the lock leaves plain data behind: use it.
        self.data
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A layer that routes softly and can record [`SoftRoutingDiagnostics`] (what `moeseg
/// routing-stats` reports for it).
pub trait SoftRoutingLayer {
    /// The layer's recorder.
    fn diagnostics(&self) -> &DiagnosticsRecorder;
}

/// Min, max and mean of the cosine similarity over all distinct pairs (0 when there is no
/// pair).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Similarity {
    /// Smallest similarity of a distinct pair.
    pub min: f64,
    /// Largest similarity of a distinct pair.
    pub max: f64,
    /// Mean over the distinct pairs.
    pub mean: f64,
}

/// The diagnostics of one forward (see the module documentation for the definitions).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SoftRoutingDiagnostics {
    /// Images in the batch.
    pub batch: usize,
    /// Tokens per image (m).
    pub tokens: usize,
    /// Slots (s = n·p).
    pub slots: usize,
    /// Mean over images and slots of the smallest dispatch weight over the tokens.
    pub dispatch_min_mean: f64,
    /// Mean over images and slots of the largest dispatch weight over the tokens.
    pub dispatch_max_mean: f64,
    /// Mean over images and tokens of the smallest combine weight over the slots.
    pub combine_min_mean: f64,
    /// Mean over images and tokens of the largest combine weight over the slots.
    pub combine_max_mean: f64,
    /// Between the combine-weight vectors of distinct tokens of one image.
    pub combine_similarity: Similarity,
    /// Between the dispatch-weight vectors of distinct slots of one image.
    pub dispatch_similarity: Similarity,
    /// Between the router columns of distinct slots.
    pub phi_similarity: Similarity,
}

impl SoftRoutingDiagnostics {
    /// Folds the diagnostics of another forward into these (an evaluation over several
    /// batches): the means are weighted by the number of images, similarity minima and maxima
    /// are the overall extremes (their means weighted by images), `phi_similarity`, `tokens`
    /// and `slots` are the latest forward's.
    pub fn merge(&mut self, other: &SoftRoutingDiagnostics) {
        let total = self.batch + other.batch;
        if total == 0 {
            return;
        }
        let (a, b) = (
            self.batch as f64 / total as f64,
            other.batch as f64 / total as f64,
        );
        let mean = |x: f64, y: f64| a * x + b * y;
        let fold = |x: Similarity, y: Similarity| Similarity {
            min: if self.batch == 0 {
                y.min
            } else {
                x.min.min(y.min)
            },
            max: if self.batch == 0 {
                y.max
            } else {
                x.max.max(y.max)
            },
            mean: mean(x.mean, y.mean),
        };
        *self = SoftRoutingDiagnostics {
            batch: total,
            tokens: other.tokens,
            slots: other.slots,
            dispatch_min_mean: mean(self.dispatch_min_mean, other.dispatch_min_mean),
            dispatch_max_mean: mean(self.dispatch_max_mean, other.dispatch_max_mean),
            combine_min_mean: mean(self.combine_min_mean, other.combine_min_mean),
            combine_max_mean: mean(self.combine_max_mean, other.combine_max_mean),
            combine_similarity: fold(self.combine_similarity, other.combine_similarity),
            dispatch_similarity: fold(self.dispatch_similarity, other.dispatch_similarity),
            phi_similarity: other.phi_similarity,
        };
    }

    /// The diagnostics as JSON (the field names above; similarities as `{min, max, mean}`).
    pub fn to_json(&self) -> serde_json::Value {
        let sim = |s: Similarity| serde_json::json!({"min": s.min, "max": s.max, "mean": s.mean});
        serde_json::json!({
            "images": self.batch,
            "tokens": self.tokens,
            "slots": self.slots,
            "dispatch_min_mean": self.dispatch_min_mean,
            "dispatch_max_mean": self.dispatch_max_mean,
            "combine_min_mean": self.combine_min_mean,
            "combine_max_mean": self.combine_max_mean,
            "combine_similarity": sim(self.combine_similarity),
            "dispatch_similarity": sim(self.dispatch_similarity),
            "phi_similarity": sim(self.phi_similarity),
        })
    }
}

/// Diagnostics of `dispatch` and `combine` `[b, m, s]` and router `phi` `[d, n, p]`.
pub fn compute(
    dispatch: &Tensor,
    combine: &Tensor,
    phi: &Tensor,
    num_experts: usize,
) -> Result<SoftRoutingDiagnostics> {
    let (b, m, s) = match *dispatch.dims() {
        [b, m, s] if combine.dims() == dispatch.dims() => (b, m, s),
        _ => {
            return Err(Error::shape(
                "soft routing diagnostics",
                format!(
                    "dispatch {} and combine {} must be one [b, m, s] shape",
                    dispatch.shape(),
                    combine.shape()
                ),
            ))
        }
    };
    if phi.rank() != 3 || phi.dims()[1] != num_experts || phi.dims()[1] * phi.dims()[2] != s {
        return Err(Error::shape(
            "soft routing diagnostics",
            format!(
                "phi {} does not hold {s} slots of {num_experts} experts",
                phi.shape()
            ),
        ));
    }
    let d_host: Vec<f64> = host(dispatch)?;
    let c_host: Vec<f64> = host(combine)?;
    let phi_host: Vec<f64> = host(phi)?;
    let d = phi.dims()[0];

    // Dispatch: per (image, slot), extremes over the tokens; combine: per (image, token),
    // extremes over the slots.
    let (mut dispatch_min, mut dispatch_max) = (0.0, 0.0);
    let (mut combine_min, mut combine_max) = (0.0, 0.0);
    let mut dispatch_vectors: Vec<Vec<Vec<f64>>> = Vec::with_capacity(b);
    let mut combine_vectors: Vec<Vec<Vec<f64>>> = Vec::with_capacity(b);
    for image in 0..b {
        let at = |t: usize, slot: usize| image * m * s + t * s + slot;
        let slots: Vec<Vec<f64>> = (0..s)
            .map(|slot| (0..m).map(|t| d_host[at(t, slot)]).collect())
            .collect();
        let tokens: Vec<Vec<f64>> = (0..m)
            .map(|t| (0..s).map(|slot| c_host[at(t, slot)]).collect())
            .collect();
        for v in &slots {
            let (lo, hi) = extremes(v);
            dispatch_min += lo;
            dispatch_max += hi;
        }
        for v in &tokens {
            let (lo, hi) = extremes(v);
            combine_min += lo;
            combine_max += hi;
        }
        dispatch_vectors.push(slots);
        combine_vectors.push(tokens);
    }
    let phi_columns: Vec<Vec<f64>> = (0..s)
        .map(|slot| (0..d).map(|k| phi_host[k * s + slot]).collect())
        .collect();
    Ok(SoftRoutingDiagnostics {
        batch: b,
        tokens: m,
        slots: s,
        dispatch_min_mean: dispatch_min / (b * s) as f64,
        dispatch_max_mean: dispatch_max / (b * s) as f64,
        combine_min_mean: combine_min / (b * m) as f64,
        combine_max_mean: combine_max / (b * m) as f64,
        combine_similarity: pair_similarity(&combine_vectors),
        dispatch_similarity: pair_similarity(&dispatch_vectors),
        phi_similarity: pair_similarity(&[phi_columns]),
    })
}

fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.try_to_vec()?.into_iter().map(f64::from).collect())
}

fn extremes(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// Cosine similarity over every distinct pair of vectors within each group.
fn pair_similarity(groups: &[Vec<Vec<f64>>]) -> Similarity {
    let (mut min, mut max, mut sum, mut pairs) = (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0usize);
    for vectors in groups {
        let unit: Vec<Vec<f64>> = vectors
            .iter()
            .map(|v| {
                let scale = 1.0 / (v.iter().map(|x| x * x).sum::<f64>() + 1e-9).sqrt();
                v.iter().map(|x| x * scale).collect()
            })
            .collect();
        for i in 0..unit.len() {
            for j in i + 1..unit.len() {
                let sim: f64 = unit[i].iter().zip(&unit[j]).map(|(a, b)| a * b).sum();
                min = min.min(sim);
                max = max.max(sim);
                sum += sim;
                pairs += 1;
            }
        }
    }
    if pairs == 0 {
        return Similarity::default();
    }
    Similarity {
        min,
        max,
        mean: sum / pairs as f64,
    }
}
