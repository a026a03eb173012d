//! Routing statistics of one MoE layer over an evaluation set (moe.md §4).
//!
//! [`RoutingStats`] is fed once per batch with the chosen experts `indices: [T, k]` (rank order,
//! so column 0 is each token's top-1) and, optionally, per-token class histograms `[T, C]` (the
//! number of labelled pixels of each class inside each token's patch). It keeps integer counts
//! and reports:
//!
//! - usage `u_e = n_e / (k·T)`, `n_e` the assignments to `e` (each token contributes k);
//! - NRE `= H(u) / ln E` with `H(u) = −Σ u ln u` (0 ln 0 = 0); 1 means perfectly balanced;
//!   defined as 1 for `E = 1`;
//! - TEC `= max_e (tokens whose top-1 is e) / T`;
//! - co-activation `A[i][j]` = share of tokens whose top-k contains both i and j (the diagonal
//!   is the share of tokens that use i at all);
//! - expert×class `M[e][c]` = labelled pixels of class c in the patches routed to e (each
//!   assignment counts, without the routing weight), reported row-normalised per expert, and
//!   column-normalised as the expert distribution per class.
//!
//! With no tokens seen every share is 0; a row or column without pixels normalises to zeros.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Counts accumulated over batches; see the module doc for the reported quantities.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutingStats {
    experts: usize,
    classes: usize,
    /// Experts per token (fixed by the first batch).
    k: Option<usize>,
    tokens: u64,
    /// `[E]` assignments per expert.
    assignments: Vec<u64>,
    /// `[E]` tokens whose top-1 is the expert.
    top1: Vec<u64>,
    /// `[E·E]` tokens whose top-k holds both experts.
    coactivation: Vec<u64>,
    /// `[E·C]` labelled pixels per expert and class.
    expert_class: Vec<f64>,
}

/// The statistics in plain numbers (rows are `Vec`s), ready to print or serialise.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutingReport {
    /// Tokens seen.
    pub tokens: u64,
    /// `u_e`, summing to 1 once a token was seen.
    pub usage: Vec<f64>,
    /// Normalised routing entropy `H(u) / ln E`.
    pub nre: f64,
    /// Top-expert concentration.
    pub tec: f64,
    /// `A[i][j]`, `E×E`, symmetric.
    pub coactivation: Vec<Vec<f64>>,
    /// `E×C`: per expert, the class distribution of its patches' labelled pixels.
    pub expert_class: Vec<Vec<f64>>,
    /// `C×E`: per class, the distribution of its labelled pixels over the experts.
    pub class_expert: Vec<Vec<f64>>,
}

impl RoutingStats {
    /// Empty statistics for `experts` experts and `classes` classes (0 when no class
    /// histograms will be given).
    pub fn new(experts: usize, classes: usize) -> Result<RoutingStats> {
        if experts == 0 {
            return Err(Error::invalid("routing stats", "needs at least one expert"));
        }
        Ok(RoutingStats {
            experts,
            classes,
            k: None,
            tokens: 0,
            assignments: vec![0; experts],
            top1: vec![0; experts],
            coactivation: vec![0; experts * experts],
            expert_class: vec![0.0; experts * classes],
        })
    }

    /// Adds one batch: `indices [T, k]` (distinct integers in `0..E` per row, rank order) and
    /// optional non-negative `class_histograms [T, C]`. Nothing is added when an argument is
    /// invalid.
    pub fn update(&mut self, indices: &Tensor, class_histograms: Option<&Tensor>) -> Result<()> {
        let op = "routing stats";
        indices.expect_rank(op, "indices", 2)?;
        let (tokens, k) = (indices.dims()[0], indices.dims()[1]);
        if k == 0 || k > self.experts || self.k.is_some_and(|seen| seen != k) {
            return Err(Error::shape(
                op,
                format!(
                    "indices {} must be [T, k] with 1 ≤ k ≤ E = {} and the same k in every batch \
                     (seen {:?})",
                    indices.shape(),
                    self.experts,
                    self.k
                ),
            ));
        }
        let chosen = self.read_indices(indices)?;
        let histograms = class_histograms
            .map(|h| self.read_histograms(h, tokens))
            .transpose()?;

        self.k = Some(k);
        self.tokens += tokens as u64;
        let e_count = self.experts;
        for (t, row) in chosen.chunks(k).enumerate() {
            self.top1[row[0]] += 1;
            for &i in row {
                self.assignments[i] += 1;
                for &j in row {
                    self.coactivation[i * e_count + j] += 1;
                }
                if let Some(h) = &histograms {
                    let hist = &h[t * self.classes..(t + 1) * self.classes];
                    let dst = &mut self.expert_class[i * self.classes..(i + 1) * self.classes];
                    for (d, &v) in dst.iter_mut().zip(hist) {
                        *d += v as f64;
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads `indices` as expert numbers, checking range, integrality and distinctness.
    fn read_indices(&self, indices: &Tensor) -> Result<Vec<usize>> {
        let k = indices.dims()[1];
        let values = indices.try_to_vec()?;
        let mut chosen = Vec::with_capacity(values.len());
        for (n, &v) in values.iter().enumerate() {
            let (t, slot) = (n / k, n % k);
            if !(v.fract() == 0.0 && v >= 0.0 && (v as usize) < self.experts) {
                return Err(Error::invalid(
                    "routing stats",
                    format!(
                        "indices[{t}, {slot}] = {v} is not an expert number in 0..{}",
                        self.experts
                    ),
                ));
            }
            let e = v as usize;
            if chosen[n - slot..].contains(&e) {
                return Err(Error::invalid(
                    "routing stats",
                    format!("token {t} lists expert {e} twice in its top-{k}"),
                ));
            }
            chosen.push(e);
        }
        Ok(chosen)
    }

    /// Reads `[T, C]` class histograms, checking the shape and that counts are ≥ 0.
    fn read_histograms(&self, histograms: &Tensor, tokens: usize) -> Result<Vec<f32>> {
        if histograms.dims() != [tokens, self.classes] {
            return Err(Error::shape(
                "routing stats",
                format!(
                    "class histograms must be [T = {tokens}, C = {}], got {}",
                    self.classes,
                    histograms.shape()
                ),
            ));
        }
        let values = histograms.try_to_vec()?;
        if let Some(bad) = values.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
            return Err(Error::invalid(
                "routing stats",
                format!("class histograms hold counts ≥ 0, found {bad}"),
            ));
        }
        Ok(values)
    }

    /// Tokens seen so far.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Usage `u_e = n_e / Σ n`.
    pub fn usage(&self) -> Vec<f64> {
        shares(&self.assignments)
    }

    /// Normalised routing entropy `H(u) / ln E` (1 for `E = 1`).
    pub fn nre(&self) -> f64 {
        if self.experts == 1 {
            return 1.0;
        }
        let entropy: f64 = self
            .usage()
            .iter()
            .filter(|&&u| u > 0.0)
            .map(|&u| -u * u.ln())
            .sum();
        entropy / (self.experts as f64).ln()
    }

    /// Top-expert concentration: the largest share of tokens with the same top-1.
    pub fn tec(&self) -> f64 {
        shares(&self.top1).into_iter().fold(0.0, f64::max)
    }

    /// Co-activation matrix `A[i][j]`, `E×E`.
    pub fn coactivation(&self) -> Vec<Vec<f64>> {
        let per_token = |c: &u64| ratio(*c as f64, self.tokens as f64);
        self.coactivation
            .chunks(self.experts)
            .map(|row| row.iter().map(per_token).collect())
            .collect()
    }

    /// Expert×class matrix, each expert's row normalised to sum 1 (`E×C`).
    pub fn expert_class(&self) -> Vec<Vec<f64>> {
        (0..self.experts)
            .map(|e| normalise((0..self.classes).map(|c| self.pixels(e, c)).collect()))
            .collect()
    }

    /// Per class, the distribution of its labelled pixels over the experts (`C×E`).
    pub fn class_expert(&self) -> Vec<Vec<f64>> {
        (0..self.classes)
            .map(|c| normalise((0..self.experts).map(|e| self.pixels(e, c)).collect()))
            .collect()
    }

    fn pixels(&self, expert: usize, class: usize) -> f64 {
        self.expert_class[expert * self.classes + class]
    }

    /// Everything at once.
    pub fn report(&self) -> RoutingReport {
        RoutingReport {
            tokens: self.tokens,
            usage: self.usage(),
            nre: self.nre(),
            tec: self.tec(),
            coactivation: self.coactivation(),
            expert_class: self.expert_class(),
            class_expert: self.class_expert(),
        }
    }
}

/// `a / b`, or 0 when `b` is 0.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Counts as shares of their total (zeros when the total is 0).
fn shares(counts: &[u64]) -> Vec<f64> {
    normalise(counts.iter().map(|&c| c as f64).collect())
}

/// A row scaled to sum 1 (zeros when it sums to 0).
fn normalise(row: Vec<f64>) -> Vec<f64> {
    let total: f64 = row.iter().sum();
    row.into_iter().map(|v| ratio(v, total)).collect()
}
