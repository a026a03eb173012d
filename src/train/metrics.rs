//! Evaluation metrics: the confusion matrix, per-class IoU and mIoU as Cityscapes computes them
//! (`datasets.md`): one matrix accumulated over the whole split, label 255 excluded, a class
//! with neither ground truth nor prediction left out of the mean.
//!
//! With `M[t][p]` the pixels of target class t predicted as p:
//! `IoU_c = M[c][c] / (Σ_p M[c][p] + Σ_t M[t][c] − M[c][c])`, pixel accuracy `= Σ_c M[c][c] /
//! Σ M`, class accuracy `= M[c][c] / Σ_p M[c][p]`.

use crate::data::IGNORE_INDEX;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::fmt::Write;

/// A `classes × classes` matrix of pixel counts, rows = target, columns = prediction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfusionMatrix {
    classes: usize,
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// An empty matrix.
    pub fn new(classes: usize) -> ConfusionMatrix {
        ConfusionMatrix {
            classes,
            counts: vec![0; classes * classes],
        }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The counts, row-major `[target][prediction]`.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// `M[target][prediction]` (0 outside the matrix).
    pub fn count(&self, target: usize, prediction: usize) -> u64 {
        if target >= self.classes || prediction >= self.classes {
            return 0;
        }
        self.counts[target * self.classes + prediction]
    }

    /// Pixels counted (255 excluded).
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds predictions against targets (same length; targets 255 skipped). A prediction or
    /// target outside `0..classes` is an error, and then nothing is added.
    pub fn update<P: Copy + Into<usize>>(&mut self, pred: &[P], target: &[u8]) -> Result<()> {
        if pred.len() != target.len() {
            return Err(Error::shape(
                "confusion matrix",
                format!("{} predictions for {} targets", pred.len(), target.len()),
            ));
        }
        let k = self.classes;
        if let Some((i, (p, t))) = pred
            .iter()
            .zip(target)
            .enumerate()
            .find(|(_, (p, &t))| t != IGNORE_INDEX && ((t as usize) >= k || (**p).into() >= k))
        {
            return Err(Error::invalid(
                "confusion matrix",
                format!(
                    "pixel {i}: prediction {} / target {t} out of range for {k} classes",
                    (*p).into()
                ),
            ));
        }
        for (&p, &t) in pred.iter().zip(target) {
            if t != IGNORE_INDEX {
                self.counts[t as usize * k + p.into()] += 1;
            }
        }
        Ok(())
    }

    /// Adds `argmax_c logits [B, C, H, W]` (ties to the lower index) against `labels [B, H, W]`
    /// (trainIds as f32, 255 ignored).
    pub fn update_from_logits(&mut self, logits: &Tensor, labels: &Tensor) -> Result<()> {
        let op = "confusion matrix";
        logits.expect_rank(op, "logits", 4)?;
        labels.expect_rank(op, "labels", 3)?;
        let d = logits.dims();
        let (b, c, plane) = (d[0], d[1], d[2] * d[3]);
        if c != self.classes || labels.dims() != [d[0], d[2], d[3]] {
            return Err(Error::shape(
                op,
                format!(
                    "logits {:?} and labels {:?} do not fit {} classes ([B, C, H, W] and [B, H, W])",
                    d,
                    labels.dims(),
                    self.classes
                ),
            ));
        }
        if c == 0 || c > 255 {
            return Err(Error::invalid(op, format!("{c} classes: need 1..=255")));
        }
        let values = logits.try_to_vec()?;
        let mut pred = vec![0u8; b * plane];
        for (i, p) in pred.iter_mut().enumerate() {
            let (n, pixel) = (i / plane, i % plane);
            let base = n * c * plane + pixel;
            let mut best = 0;
            for class in 1..c {
                // `>` keeps the lower index on ties; NaN never wins.
                if values[base + class * plane] > values[base + best * plane] {
                    best = class;
                }
            }
            *p = best as u8;
        }
        let target = labels
            .try_to_vec()?
            .iter()
            .map(|&v| {
                if (0.0..255.5).contains(&v) && v.fract() == 0.0 {
                    Ok(v as u8)
                } else {
                    Err(Error::invalid(
                        op,
                        format!("label {v} is not a class id or 255"),
                    ))
                }
            })
            .collect::<Result<Vec<u8>>>()?;
        self.update(&pred, &target)
    }

    /// Adds another matrix of the same size (e.g. from another worker).
    pub fn merge(&mut self, other: &ConfusionMatrix) -> Result<()> {
        if other.classes != self.classes {
            return Err(Error::shape(
                "confusion matrix",
                format!(
                    "cannot merge {} classes into {}",
                    other.classes, self.classes
                ),
            ));
        }
        self.counts
            .iter_mut()
            .zip(&other.counts)
            .for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn row_sum(&self, c: usize) -> u64 {
        self.counts[c * self.classes..(c + 1) * self.classes]
            .iter()
            .sum()
    }

    fn col_sum(&self, c: usize) -> u64 {
        (0..self.classes).map(|t| self.count(t, c)).sum()
    }

    /// Per-class IoU; `None` for a class with neither ground truth nor prediction.
    pub fn iou(&self) -> Vec<Option<f64>> {
        (0..self.classes)
            .map(|c| {
                let tp = self.count(c, c);
                let union = self.row_sum(c) + self.col_sum(c) - tp;
                (union > 0).then(|| tp as f64 / union as f64)
            })
            .collect()
    }

    /// Mean IoU over the classes that have one (0 when none has).
    pub fn miou(&self) -> f64 {
        mean(self.iou().into_iter().flatten())
    }

    /// Per-class accuracy (recall); `None` for a class without ground truth.
    pub fn class_accuracy(&self) -> Vec<Option<f64>> {
        (0..self.classes)
            .map(|c| {
                let gt = self.row_sum(c);
                (gt > 0).then(|| self.count(c, c) as f64 / gt as f64)
            })
            .collect()
    }

    /// Correct pixels / counted pixels (0 when none was counted).
    pub fn pixel_accuracy(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        (0..self.classes).map(|c| self.count(c, c)).sum::<u64>() as f64 / total as f64
    }

    /// Rows divided by their sums (`[target][prediction]`, the share of class `target`'s
    /// pixels predicted as `prediction`); a class without ground truth has a NaN row.
    pub fn row_normalized(&self) -> Vec<Vec<f64>> {
        (0..self.classes)
            .map(|t| {
                let sum = self.row_sum(t) as f64;
                (0..self.classes)
                    .map(|p| self.count(t, p) as f64 / sum)
                    .collect()
            })
            .collect()
    }

    /// The `n` most confused pairs `(target, prediction, share of target's pixels)`, off the
    /// diagonal, largest share first (ties: by target, then prediction), zero shares left out.
    pub fn most_confused(&self, n: usize) -> Vec<(usize, usize, f64)> {
        let rows = self.row_normalized();
        let mut pairs: Vec<(usize, usize, f64)> = (0..self.classes)
            .flat_map(|t| (0..self.classes).map(move |p| (t, p)))
            .filter(|&(t, p)| t != p && self.count(t, p) > 0)
            .map(|(t, p)| (t, p, rows[t][p]))
            .collect();
        pairs.sort_by(|a, b| b.2.total_cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        pairs.truncate(n);
        pairs
    }

    /// Mean of the class accuracies over classes with ground truth (0 when none).
    pub fn mean_accuracy(&self) -> f64 {
        mean(self.class_accuracy().into_iter().flatten())
    }

    /// A plain-text table: class, IoU, accuracy and ground-truth pixels per class, then mIoU,
    /// pixel accuracy and mean accuracy. Missing names are shown as `class <i>`.
    pub fn summary_table(&self, class_names: &[impl AsRef<str>]) -> String {
        let name = |c: usize| {
            class_names
                .get(c)
                .map_or_else(|| format!("class {c}"), |n| n.as_ref().to_string())
        };
        let width = (0..self.classes)
            .map(|c| name(c).len())
            .max()
            .unwrap_or(5)
            .max(5);
        let pct = |v: Option<f64>| {
            v.map_or_else(|| "   n/a".to_string(), |v| format!("{:6.2}", 100.0 * v))
        };
        let mut out = format!(
            "{:width$}  {:>6}  {:>6}  {:>12}\n",
            "class", "IoU%", "acc%", "gt pixels"
        );
        let (iou, acc) = (self.iou(), self.class_accuracy());
        for c in 0..self.classes {
            let _ = writeln!(
                out,
                "{:width$}  {}  {}  {:>12}",
                name(c),
                pct(iou[c]),
                pct(acc[c]),
                self.row_sum(c)
            );
        }
        let counted = iou.iter().flatten().count();
        let _ = writeln!(
            out,
            "mIoU {:.2}% over {counted}/{} classes, pixel accuracy {:.2}%, mean accuracy {:.2}%",
            100.0 * self.miou(),
            self.classes,
            100.0 * self.pixel_accuracy(),
            100.0 * self.mean_accuracy()
        );
        out
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}
