//! The gates of an ensemble and its refinement conv.
//!
//! - `image`: the input resized to `gate_size` → conv 3×3 stride 2 (`c`) → ReLU → conv 3×3
//!   stride 2 (`2c`) → ReLU → global mean → linear (`hidden`) → ReLU → linear (`K` or `K·C`).
//!   It sees only the image, so the experts it does not choose need not run (top-k).
//! - `features`: each expert's output at `feature_layer` (recorded by a [`Tap`] put there),
//!   globally mean-pooled and concatenated → the same MLP. Every expert runs.
//!
//! Both give scores `[B, K]` (per image) or `[B, K, C]` (class-wise); the softmax over `K`
//! is taken by [`crate::ensemble::Ensemble`].

use crate::error::{Error, Result};
use crate::nn::layers::{Conv2d, ConvOptions, Linear};
use crate::nn::{Module, OwnTensor};
use crate::ops::interpolate::{InterpolateMode, Resize};
use crate::tensor::Tensor;
use std::any::Any;
use std::sync::Mutex;

/// What the gate reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateKind {
    /// A conv stem on the down-sampled input image.
    Image,
    /// The experts' features at a named layer.
    Features,
}

impl std::str::FromStr for GateKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<GateKind> {
        match s {
            "image" => Ok(GateKind::Image),
            "features" => Ok(GateKind::Features),
            other => Err(Error::invalid(
                "config",
                format!("ensemble.gate = `{other}`: expected image or features"),
            )),
        }
    }
}

/// The gating network (its tensors are the only ones an ensemble trains, with the refinement).
pub struct Gate {
    /// What it reads.
    pub kind: GateKind,
    /// Experts.
    pub experts: usize,
    /// Classes per expert weight (1: per image).
    pub per_class: usize,
    size: [usize; 2],
    stem: Option<(Conv2d, Conv2d)>,
    fc1: Linear,
    fc2: Linear,
}

impl Gate {
    /// An image gate (`features = 0`) or a feature gate over `features` concatenated channels.
    pub fn new(
        kind: GateKind,
        experts: usize,
        per_class: usize,
        size: [usize; 2],
        channels: usize,
        hidden: usize,
        features: usize,
    ) -> Result<Gate> {
        if channels == 0 || hidden == 0 || size.contains(&0) {
            return Err(Error::invalid(
                "config",
                "ensemble.gate_channels, gate_hidden and gate_size must be positive",
            ));
        }
        let options = ConvOptions::new().stride(2).padding(1);
        let (stem, width) = match kind {
            GateKind::Image => (
                Some((
                    Conv2d::new(3, channels, 3, options)?,
                    Conv2d::new(channels, 2 * channels, 3, options)?,
                )),
                2 * channels,
            ),
            GateKind::Features => (None, features),
        };
        Ok(Gate {
            kind,
            experts,
            per_class: per_class.max(1),
            size,
            stem,
            fc1: Linear::new(width, hidden, true)?,
            fc2: Linear::new(hidden, experts * per_class.max(1), true)?,
        })
    }

    /// Scores from the image (`Image`) or from the pooled, concatenated features (`Features`,
    /// `[B, F]`): `[B, K]` or `[B, K, C]`.
    pub fn scores(&self, input: &Tensor) -> Result<Tensor> {
        let pooled = match &self.stem {
            Some((c1, c2)) => {
                let small = input.interpolate(
                    Resize::Size(self.size),
                    InterpolateMode::Bilinear {
                        align_corners: false,
                    },
                )?;
                let x = c2.forward(&c1.forward(&small)?.relu()?)?.relu()?;
                x.mean(&[2, 3], false)?
            }
            None => input.clone(),
        };
        let s = self.fc2.forward(&self.fc1.forward(&pooled)?.relu()?)?;
        let b = s.dims()[0] as isize;
        if self.per_class == 1 {
            s.reshape(&[b, self.experts as isize])
        } else {
            s.reshape(&[b, self.experts as isize, self.per_class as isize])
        }
    }
}

impl Module for Gate {
    fn type_name(&self) -> &'static str {
        "EnsembleGate"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        self.scores(input)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut out: Vec<(String, &dyn Module)> = Vec::new();
        if let Some((c1, c2)) = &self.stem {
            out.push(("conv1".into(), c1));
            out.push(("conv2".into(), c2));
        }
        out.push(("fc1".into(), &self.fc1));
        out.push(("fc2".into(), &self.fc2));
        out
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A 3×3 conv on the combined `[B, C, H, W]` output, initialised to the identity (centre tap
/// 1 on its own channel, bias 0), so training starts from the plain combination.
pub fn identity_refinement(classes: usize) -> Result<Conv2d> {
    let conv = Conv2d::new(classes, classes, 3, ConvOptions::new().padding(1))?;
    let mut w = vec![0f32; classes * classes * 9];
    for c in 0..classes {
        w[(c * classes + c) * 9 + 4] = 1.0;
    }
    conv.weight
        .replace_data(&Tensor::from_vec(w, [classes, classes, 3, 3])?)?;
    if let Some(bias) = &conv.bias {
        bias.replace_data(&Tensor::zeros([classes], &bias.device())?)?;
    }
    Ok(conv)
}

/// A module put in place of an expert's layer to record its last output for the feature
/// gate; it is transparent to names (its children and tensors are the wrapped module's).
pub struct Tap {
    inner: Box<dyn Module>,
    last: Mutex<Option<Tensor>>,
}

impl Tap {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn Module>) -> Tap {
        Tap {
            inner,
            last: Mutex::new(None),
        }
    }

    /// The output of the last forward, taken out.
    pub fn take(&self) -> Option<Tensor> {
        self.last.lock().ok().and_then(|mut l| l.take())
    }
}

impl Module for Tap {
    fn type_name(&self) -> &'static str {
        self.inner.type_name()
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let out = self.inner.forward(input)?;
        if let Ok(mut last) = self.last.lock() {
            *last = Some(out.clone());
        }
        Ok(out)
    }

    fn own_tensors(&self) -> Vec<OwnTensor> {
        self.inner.own_tensors()
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.inner.children()
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        self.inner.child_mut(name)
    }

    fn set_own_training(&self, training: bool) {
        self.inner.set_own_training(training)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The per-image picture of `moeseg predict` on an ensemble: the image, framed in the colour
/// of the expert with the largest weight, over a strip of one bar per expert (its colour, the
/// bar's length its weight), with the names and weights written when a font is available.
pub fn choice_picture(
    image: &image::RgbImage,
    weights: &[f32],
    names: &[String],
) -> image::RgbImage {
    use crate::data::pictures::{expert_color, upscale_nearest};
    let image = upscale_nearest(image, 512);
    let (w, h) = (image.width(), image.height());
    let k = weights.len().max(1);
    let bar = 18u32;
    let frame = 6u32;
    let best = (0..weights.len())
        .max_by(|&a, &b| weights[a].total_cmp(&weights[b]))
        .unwrap_or(0);
    let mut out = image::RgbImage::from_pixel(
        w + 2 * frame,
        h + 2 * frame + bar * k as u32,
        image::Rgb([255, 255, 255]),
    );
    let best_color = image::Rgb(expert_color(best, k));
    for y in 0..h + 2 * frame {
        for x in 0..w + 2 * frame {
            out.put_pixel(x, y, best_color);
        }
    }
    image::imageops::replace(&mut out, &image, frame as i64, frame as i64);
    for (e, &weight) in weights.iter().enumerate() {
        let y0 = h + 2 * frame + bar * e as u32;
        let len = ((w + 2 * frame) as f32 * weight.clamp(0.0, 1.0)) as u32;
        let color = image::Rgb(expert_color(e, k));
        for y in y0 + 2..y0 + bar - 2 {
            for x in 0..len {
                out.put_pixel(x, y, color);
            }
        }
        let name = names.get(e).map_or("", String::as_str);
        crate::train::plots::draw_text_on(
            &mut out,
            &format!("{name}: {weight:.3}"),
            (4, y0 as usize + 2),
            13,
        );
    }
    out
}
