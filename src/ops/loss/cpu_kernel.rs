//! CPU kernels of the loss family: the per-position log-sum-exp comes from the softmax
//! family's column pass; the backward is one elementwise pass over the logits.

use super::{CrossEntropyForward, CrossEntropyLayout, LossBackend};
use crate::backend::cpu::CpuBackend;
use crate::error::{Error, Result};
use crate::ops::softmax::cpu_kernel::{for_each_row, max_and_exp_sum};
use crate::tensor::Storage;
use rayon::prelude::*;

/// The class of target value `value` at `position`, `None` for the ignore index, or an error
/// naming the value when it is neither.
fn target_class(value: f32, position: usize, layout: CrossEntropyLayout) -> Result<Option<usize>> {
    if value == layout.ignore_index as f32 {
        return Ok(None);
    }
    if value.fract() != 0.0 || value < 0.0 || value >= layout.classes as f32 {
        return Err(Error::invalid(
            "cross_entropy",
            format!(
                "target value {value} at position {position} is neither a class in [0, {}) nor \
                 ignore_index {}",
                layout.classes, layout.ignore_index
            ),
        ));
    }
    Ok(Some(value as usize))
}

impl LossBackend for CpuBackend {
    fn cross_entropy_forward(
        &self,
        logits: &Storage,
        target: &Storage,
        weight: Option<&Storage>,
        layout: CrossEntropyLayout,
    ) -> Result<CrossEntropyForward> {
        let x = logits.as_cpu("cross_entropy")?;
        let target = target.as_cpu("cross_entropy")?;
        let weight = weight.map(|w| w.as_cpu("cross_entropy")).transpose()?;
        let CrossEntropyLayout {
            batch,
            classes,
            spatial,
            ..
        } = layout;
        let stats = max_and_exp_sum(x, batch, classes, spatial)?;
        let per_position: Vec<(f32, f32, f32)> = stats
            .par_iter()
            .zip(target.par_iter())
            .enumerate()
            .map(|(p, (&(max, sum), &t))| {
                let log_sum_exp = max + sum.ln();
                let Some(class) = target_class(t, p, layout)? else {
                    return Ok((0.0, 0.0, log_sum_exp));
                };
                let (b, s) = (p / spatial, p % spatial);
                let x_target = x[(b * classes + class) * spatial + s];
                let w = weight.map_or(1.0, |w| w[class]);
                Ok((w * (log_sum_exp - x_target), w, log_sum_exp))
            })
            .collect::<Result<_>>()?;
        let mut loss = Vec::with_capacity(per_position.len());
        let mut weights = Vec::with_capacity(per_position.len());
        let mut log_sum_exp = Vec::with_capacity(per_position.len());
        for (l, w, lse) in per_position {
            loss.push(l);
            weights.push(w);
            log_sum_exp.push(lse);
        }
        Ok(CrossEntropyForward {
            loss: Storage::cpu(loss),
            weight: Storage::cpu(weights),
            log_sum_exp: Storage::cpu(log_sum_exp),
        })
    }

    fn cross_entropy_backward(
        &self,
        logits: &Storage,
        target: &Storage,
        weight: Option<&Storage>,
        log_sum_exp: &Storage,
        grad_loss: &Storage,
        layout: CrossEntropyLayout,
    ) -> Result<Storage> {
        const OP: &str = "cross_entropy_backward";
        let (x, target) = (logits.as_cpu(OP)?, target.as_cpu(OP)?);
        let (lse, g) = (log_sum_exp.as_cpu(OP)?, grad_loss.as_cpu(OP)?);
        let weight = weight.map(|w| w.as_cpu(OP)).transpose()?;
        let (classes, spatial) = (layout.classes, layout.spatial);
        // Per position: the upstream gradient scaled by w[y], and y (0 scale where ignored;
        // the forward already validated the targets).
        let scale_and_class: Vec<(f32, usize)> = target
            .par_iter()
            .zip(g.par_iter())
            .map(|(&t, &g)| {
                if t == layout.ignore_index as f32 {
                    (0.0, usize::MAX)
                } else {
                    let class = t as usize;
                    (g * weight.map_or(1.0, |w| w[class]), class)
                }
            })
            .collect();
        let mut out = crate::backend::cpu::buffer_cache::zeroed(x.len());
        for_each_row(&mut out, classes, spatial, |row, b, out_row| {
            let c = row % classes;
            let src = &x[row * spatial..(row + 1) * spatial];
            let positions = b * spatial..(b + 1) * spatial;
            let per_position = scale_and_class[positions.clone()]
                .iter()
                .zip(&lse[positions]);
            for ((dx, &v), (&(scale, class), &lse)) in out_row.iter_mut().zip(src).zip(per_position)
            {
                let onehot = if class == c { 1.0 } else { 0.0 };
                *dx = scale * ((v - lse).exp() - onehot);
            }
        });
        Ok(Storage::cpu(out))
    }
}
