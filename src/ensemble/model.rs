//! [`Ensemble`]: frozen experts, a gate, the combination of their outputs, top-k execution.

use super::experts::{ensemble_classes, project, Expert};
use super::gate::{identity_refinement, Gate, GateKind, Tap};
use super::EnsembleSection;
use crate::autograd::NoGradGuard;
use crate::error::{Error, Result};
use crate::models::SegNet;
use crate::nn::layers::Conv2d;
use crate::nn::{get_module, Module};
use crate::tensor::Tensor;
use std::any::Any;
use std::sync::Mutex;

/// How expert outputs are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    /// `Σ_k w_k · logits_k`.
    Logits,
    /// `log Σ_k w_k · p_k` (probabilities after the class maps).
    Probs,
}

/// Where the weights come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// The trained gate.
    Gate,
    /// The same weights for every image (one-hot: that expert alone; uniform: the mean
    /// ensemble). Experts with weight 0 do not run.
    Fixed(Vec<f32>),
    /// Per pixel and class the largest expert probability (the max ensemble).
    Max,
}

/// One forward of an ensemble.
pub struct EnsembleOutput {
    /// Combined (and refined) output `[B, C, H, W]`: logits, or log-probabilities with
    /// `combine = "probs"`.
    pub logits: Tensor,
    /// Weights `[B, K]` or `[B, K, C]` (0 for experts not chosen).
    pub weights: Tensor,
    /// The gate's per-image scores `[B, K]` (mean over classes for class-wise gates); `None`
    /// for fixed and max modes.
    pub scores: Option<Tensor>,
    /// The experts run for each image.
    pub chosen: Vec<Vec<usize>>,
    /// Each expert's output in the ensemble's space (logits or log-probabilities, `[B, C, H,
    /// W]`), when every expert ran on every image.
    pub expert_outputs: Option<Vec<Tensor>>,
}

/// A gated ensemble of frozen experts (see the module doc of [`crate::ensemble`]).
pub struct Ensemble {
    /// The frozen experts (not children: never trained, moved or switched to training mode).
    pub experts: Vec<Expert>,
    /// The ensemble's classes.
    pub classes: usize,
    /// The gate.
    pub gate: Gate,
    /// The optional 3×3 refinement of the combined output.
    pub refine: Option<Conv2d>,
    /// How outputs combine.
    pub combine: Combine,
    /// Experts run per image (K: dense).
    pub k: usize,
    /// The feature gate's layer.
    pub feature_layer: String,
    mode: Mutex<Mode>,
    usage: Mutex<(Vec<u64>, u64)>,
    last: Mutex<Vec<Vec<f32>>>,
}

impl Ensemble {
    /// Builds the gate for `experts` by `section` (the gate's weights are fresh: seed first).
    /// For the feature gate a [`Tap`] is put at `feature_layer` in every expert.
    pub fn new(mut experts: Vec<Expert>, section: &EnsembleSection) -> Result<Ensemble> {
        let k_all = experts.len();
        if k_all < 2 {
            return Err(Error::invalid(
                "ensemble",
                format!("an ensemble needs two experts at least, got {k_all}"),
            ));
        }
        let classes = ensemble_classes(&experts)?;
        let combine = match section.combine.as_str() {
            "logits" => Combine::Logits,
            "probs" => Combine::Probs,
            other => {
                return Err(Error::invalid(
                    "config",
                    format!("ensemble.combine = `{other}`: expected logits or probs"),
                ))
            }
        };
        if let (Combine::Logits, Some(e)) =
            (combine, experts.iter().find(|e| e.class_map.is_some()))
        {
            return Err(Error::invalid(
                "config",
                format!(
                    "expert `{}` has a data.class_map: its output is brought to the ensemble's \
                     classes as probabilities, set ensemble.combine=probs",
                    e.name
                ),
            ));
        }
        let per_class = match section.weights.as_str() {
            "image" => 1,
            "class" => classes,
            other => {
                return Err(Error::invalid(
                    "config",
                    format!("ensemble.weights = `{other}`: expected image or class"),
                ))
            }
        };
        let kind: GateKind = section.gate.parse()?;
        let k = match section.k {
            0 => k_all,
            k if k <= k_all => k,
            k => {
                return Err(Error::invalid(
                    "config",
                    format!("ensemble.k = {k} but there are {k_all} experts"),
                ))
            }
        };
        let features = if kind == GateKind::Features {
            if k < k_all {
                return Err(Error::invalid(
                    "config",
                    "the features gate reads every expert: top-k execution (ensemble.k < K) \
                     needs gate = \"image\"",
                ));
            }
            tap_experts(&mut experts, &section.feature_layer, section.gate_size)?
        } else {
            0
        };
        let gate = Gate::new(
            kind,
            k_all,
            per_class,
            section.gate_size,
            section.gate_channels,
            section.gate_hidden,
            features,
        )?;
        let refine = section
            .refine
            .then(|| identity_refinement(classes))
            .transpose()?;
        Ok(Ensemble {
            experts,
            classes,
            gate,
            refine,
            combine,
            k,
            feature_layer: section.feature_layer.clone(),
            mode: Mutex::new(Mode::Gate),
            usage: Mutex::new((vec![0; k_all], 0)),
            last: Mutex::new(Vec::new()),
        })
    }

    /// Sets where the weights come from.
    pub fn set_mode(&self, mode: Mode) -> Result<()> {
        if let Mode::Fixed(w) = &mode {
            if w.len() != self.experts.len() {
                return Err(Error::invalid(
                    "ensemble",
                    format!(
                        "{} fixed weights for {} experts",
                        w.len(),
                        self.experts.len()
                    ),
                ));
            }
        }
        if let Ok(mut m) = self.mode.lock() {
            *m = mode;
        }
        Ok(())
    }

    fn mode(&self) -> Mode {
        self.mode.lock().map_or(Mode::Gate, |m| m.clone())
    }

    /// Images each expert ran on, and images seen, since the last [`Ensemble::reset_usage`].
    pub fn usage(&self) -> (Vec<u64>, u64) {
        self.usage
            .lock()
            .map_or_else(|_| (Vec::new(), 0), |u| u.clone())
    }

    /// Each image's weight per expert in the last forward (mean over classes for class-wise
    /// weights; 0 for experts not run).
    pub fn last_weights(&self) -> Vec<Vec<f32>> {
        self.last.lock().map_or_else(|_| Vec::new(), |l| l.clone())
    }

    /// Clears the usage counts.
    pub fn reset_usage(&self) {
        if let Ok(mut u) = self.usage.lock() {
            *u = (vec![0; self.experts.len()], 0);
        }
    }

    /// The forward of the ensemble; with `run_all` every expert runs on every image (the
    /// oracle term needs them) while the combination keeps its top-k weights.
    pub fn forward_full(&self, input: &Tensor, run_all: bool) -> Result<EnsembleOutput> {
        input.expect_rank("ensemble", "input", 4)?;
        let (b, kk) = (input.dims()[0], self.experts.len());
        let device = input.device();
        let mode = self.mode();
        let dense_features = self.gate.kind == GateKind::Features && mode == Mode::Gate;
        // The experts' outputs when they all run first (feature gate, max mode, run_all).
        let all = matches!(mode, Mode::Max) || dense_features || run_all;
        let mut outputs: Vec<Option<Tensor>> = vec![None; kk];
        if all {
            self.run_experts(input, &vec![(0..kk).collect(); b], &mut outputs)?;
        }
        let (weights, scores, chosen) = match &mode {
            Mode::Max => {
                let w = Tensor::full([b, kk], 1.0 / kk as f32, &device)?;
                (w, None, vec![(0..kk).collect(); b])
            }
            Mode::Fixed(w) => {
                let row: Vec<usize> = (0..kk).filter(|&e| w[e] != 0.0).collect();
                let t = Tensor::from_vec_on(w.repeat(b), [b, kk], &device)?;
                (t, None, vec![row; b])
            }
            Mode::Gate => self.gate_weights(input, dense_features)?,
        };
        if !all {
            self.run_experts(input, &chosen, &mut outputs)?;
        }
        let per_image = if weights.rank() == 3 {
            weights.mean(&[2], false)?
        } else {
            weights.clone()
        };
        let flat = per_image.try_to_vec()?;
        if let Ok(mut last) = self.last.lock() {
            *last = flat.chunks(kk).map(<[f32]>::to_vec).collect();
        }
        if let Ok(mut u) = self.usage.lock() {
            for row in &chosen {
                row.iter().for_each(|&e| u.0[e] += 1);
            }
            u.1 += b as u64;
        }
        let outputs: Vec<Tensor> = outputs
            .into_iter()
            .map(|o| match o {
                Some(o) => Ok(o),
                None => Tensor::zeros([b, self.classes, input.dims()[2], input.dims()[3]], &device),
            })
            .collect::<Result<_>>()?;
        let combined = match mode {
            Mode::Max => {
                let mut m = outputs[0].softmax(1)?;
                for o in &outputs[1..] {
                    m = m.maximum(&o.softmax(1)?)?;
                }
                m.add_scalar(1e-12)?.log()?
            }
            _ => self.combine_outputs(&outputs, &weights)?,
        };
        // The refinement belongs to the learned gate, not to the reference rows.
        let logits = match (&self.refine, &mode) {
            (Some(conv), Mode::Gate) => conv.forward(&combined)?,
            _ => combined,
        };
        let every = all || chosen.iter().all(|row| row.len() == kk);
        Ok(EnsembleOutput {
            logits,
            weights,
            scores,
            chosen,
            expert_outputs: every.then_some(outputs),
        })
    }

    /// Gate weights (softmax over the chosen experts), per-image scores and the choice.
    fn gate_weights(
        &self,
        input: &Tensor,
        features: bool,
    ) -> Result<(Tensor, Option<Tensor>, Vec<Vec<usize>>)> {
        let (b, kk) = (input.dims()[0], self.experts.len());
        let raw = if features {
            self.gate.scores(&self.pooled_features()?)?
        } else {
            self.gate.scores(input)?
        };
        let per_image = if raw.rank() == 3 {
            raw.mean(&[2], false)?
        } else {
            raw.clone()
        };
        let (_, idx) = per_image.topk(self.k, 1, true)?;
        let idx = idx.try_to_vec()?;
        let mut chosen = Vec::with_capacity(b);
        let mut mask = vec![-1e9f32; b * kk];
        for i in 0..b {
            let mut row: Vec<usize> = idx[i * self.k..(i + 1) * self.k]
                .iter()
                .map(|&v| v as usize)
                .collect();
            row.sort_unstable();
            row.iter().for_each(|&e| mask[i * kk + e] = 0.0);
            chosen.push(row);
        }
        let weights = if self.k == kk {
            raw.softmax(1)?
        } else {
            let shape: Vec<usize> = if raw.rank() == 3 {
                vec![b, kk, 1]
            } else {
                vec![b, kk]
            };
            let mask = Tensor::from_vec_on(mask, shape, &input.device())?;
            raw.add(&mask)?.softmax(1)?
        };
        Ok((weights, Some(per_image), chosen))
    }

    /// The feature gate's input: each expert's tapped features mean-pooled, concatenated.
    fn pooled_features(&self) -> Result<Tensor> {
        let pooled = self
            .experts
            .iter()
            .map(|e| {
                let tap = tap_of(e, &self.feature_layer)?;
                let f = tap.take().ok_or_else(|| {
                    Error::invalid(
                        "ensemble",
                        format!("expert `{}` did not run `{}`", e.name, self.feature_layer),
                    )
                })?;
                f.mean(&[2, 3], false)
            })
            .collect::<Result<Vec<Tensor>>>()?;
        Tensor::cat(&pooled.iter().collect::<Vec<_>>(), 1)
    }

    /// Runs expert `e` on the images that chose it (each expert once per batch) and stores
    /// its output in the ensemble's space, scattered back to `[B, C, H, W]` (zeros elsewhere).
    fn run_experts(
        &self,
        input: &Tensor,
        chosen: &[Vec<usize>],
        outputs: &mut [Option<Tensor>],
    ) -> Result<()> {
        let _frozen = NoGradGuard::new();
        let b = input.dims()[0];
        let device = input.device();
        // Full experts first: their mean probability is the class-mapped experts' reference.
        let mut order: Vec<usize> = (0..self.experts.len()).collect();
        order.sort_by_key(|&e| self.experts[e].class_map.is_some());
        let mut reference: Option<Tensor> = None;
        let mut full_count = 0usize;
        for e in order {
            let images: Vec<usize> = (0..b).filter(|&i| chosen[i].contains(&e)).collect();
            if images.is_empty() {
                continue;
            }
            let dense = images.len() == b;
            let sub = if dense {
                input.clone()
            } else {
                let idx: Vec<f32> = images.iter().map(|&i| i as f32).collect();
                let n = idx.len();
                input.index_select(0, &Tensor::from_vec_on(idx, [n], &device)?)?
            };
            let expert = &self.experts[e];
            let logits = expert.model.forward(&sub)?;
            let out = match (&expert.class_map, self.combine) {
                (None, Combine::Logits) => logits,
                (None, Combine::Probs) => {
                    let p = logits.softmax(1)?;
                    if dense {
                        full_count += 1;
                        reference = Some(match reference {
                            Some(r) => r.add(&p)?,
                            None => p.clone(),
                        });
                    }
                    p.add_scalar(1e-12)?.log()?
                }
                (Some(map), _) => {
                    let r = match (&reference, dense) {
                        (Some(r), true) => Some(r.mul_scalar(1.0 / full_count as f32)?),
                        _ => None,
                    };
                    project(map, &logits.softmax(1)?, r.as_ref(), self.classes)?
                        .add_scalar(1e-12)?
                        .log()?
                }
            };
            if out.dims()[1] != self.classes {
                return Err(Error::invalid(
                    "ensemble",
                    format!(
                        "expert `{}` gives {} classes, the ensemble has {}",
                        expert.name,
                        out.dims()[1],
                        self.classes
                    ),
                ));
            }
            outputs[e] = Some(if dense {
                out
            } else {
                scatter_rows(&out, &images, b)?
            });
        }
        Ok(())
    }

    /// `Σ_e w_e · out_e` (`log Σ w_e · exp(out_e)` for probabilities).
    fn combine_outputs(&self, outputs: &[Tensor], weights: &Tensor) -> Result<Tensor> {
        let b = weights.dims()[0] as isize;
        let mut sum: Option<Tensor> = None;
        for (e, out) in outputs.iter().enumerate() {
            let w = weights.narrow(1, e, 1)?;
            let w = if w.rank() == 3 {
                w.reshape(&[b, self.classes as isize, 1, 1])?
            } else {
                w.reshape(&[b, 1, 1, 1])?
            };
            let term = match self.combine {
                Combine::Logits => out.mul(&w)?,
                Combine::Probs => out.exp()?.mul(&w)?,
            };
            sum = Some(match sum {
                Some(s) => s.add(&term)?,
                None => term,
            });
        }
        let sum = sum.ok_or_else(|| Error::invalid("ensemble", "no expert"))?;
        match self.combine {
            Combine::Logits => Ok(sum),
            Combine::Probs => sum.add_scalar(1e-12)?.log(),
        }
    }
}

/// `rows` `[n, C, H, W]` placed at batch positions `images` of a zero `[b, C, H, W]`.
fn scatter_rows(rows: &Tensor, images: &[usize], b: usize) -> Result<Tensor> {
    let d = rows.dims().to_vec();
    let per = d[1] * d[2] * d[3];
    let index: Vec<f32> = images
        .iter()
        .flat_map(|&i| std::iter::repeat_n(i as f32, per))
        .collect();
    let device = rows.device();
    let index = Tensor::from_vec_on(index, d.clone(), &device)?;
    Tensor::zeros([b, d[1], d[2], d[3]], &device)?.scatter_add(0, &index, rows)
}

/// Puts a [`Tap`] at `layer` in every expert; returns the concatenated channel count (found
/// by running each expert once on a zero image of `size`).
fn tap_experts(experts: &mut [Expert], layer: &str, size: [usize; 2]) -> Result<usize> {
    if layer.is_empty() {
        return Err(Error::invalid(
            "config",
            "ensemble.gate = \"features\" needs ensemble.feature_layer (a layer path of every \
             expert, see `moeseg inspect`)",
        ));
    }
    let mut channels = 0;
    for e in experts.iter_mut() {
        let root = &mut *e.model as &mut dyn Module;
        let old = crate::nn::replace_module(root, layer, Box::new(Tap::new(Box::new(Noop))))
            .map_err(|err| Error::invalid("ensemble", format!("expert `{}`: {err}", e.name)))?;
        crate::nn::replace_module(root, layer, Box::new(Tap::new(old)))?;
        let device = crate::nn::module_device(&*e.model);
        let probe = Tensor::zeros([1, 3, size[0].max(32), size[1].max(32)], &device)?;
        let _g = NoGradGuard::new();
        e.model.forward(&probe)?;
        let f = tap_of(e, layer)?.take().ok_or_else(|| {
            Error::invalid(
                "ensemble",
                format!("expert `{}`: layer `{layer}` did not run", e.name),
            )
        })?;
        if f.rank() != 4 {
            return Err(Error::invalid(
                "ensemble",
                format!(
                    "expert `{}`: `{layer}` gives {:?}, not [B, C, H, W] features",
                    e.name,
                    f.dims()
                ),
            ));
        }
        channels += f.dims()[1];
    }
    Ok(channels)
}

/// The [`Tap`] at `layer` of expert `e`.
fn tap_of<'a>(e: &'a Expert, layer: &str) -> Result<&'a Tap> {
    get_module(&*e.model, layer)?
        .as_any()
        .downcast_ref::<Tap>()
        .ok_or_else(|| Error::invalid("ensemble", format!("no tap at `{layer}` of `{}`", e.name)))
}

/// A placeholder while a layer is being wrapped.
struct Noop;

impl Module for Noop {
    fn type_name(&self) -> &'static str {
        "Noop"
    }
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        Ok(input.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Module for Ensemble {
    fn type_name(&self) -> &'static str {
        "Ensemble"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        Ok(self.forward_full(input, false)?.logits)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut out: Vec<(String, &dyn Module)> = vec![("gate".into(), &self.gate)];
        if let Some(r) = &self.refine {
            out.push(("refine".into(), r));
        }
        out
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl SegNet for Ensemble {}
