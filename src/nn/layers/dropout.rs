//! `nn.Dropout` and `nn.Dropout2d`: active in training mode only. Their probability can be
//! changed through `&self` ([`set_dropout_probability`] sets it in a whole network, e.g. to 0
//! for a deterministic training-mode check).

use crate::error::{Error, Result};
use crate::nn::{visit_modules, Module, TrainingFlag};
use crate::tensor::Tensor;
use std::any::Any;
use std::sync::atomic::{AtomicU32, Ordering};

fn check_p(layer: &'static str, p: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::invalid(
            layer,
            format!("dropout probability must be in [0, 1], got {p}"),
        ));
    }
    Ok(())
}

/// A drop probability that can be changed through `&self` (stored as f32 bits).
#[derive(Debug)]
struct Probability(AtomicU32);

impl Probability {
    fn new(layer: &'static str, p: f32) -> Result<Self> {
        check_p(layer, p)?;
        Ok(Probability(AtomicU32::new(p.to_bits())))
    }

    fn get(&self) -> f32 {
        f32::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, layer: &'static str, p: f32) -> Result<()> {
        check_p(layer, p)?;
        self.0.store(p.to_bits(), Ordering::Relaxed);
        Ok(())
    }
}

/// `nn.Dropout(p)`: zeroes elements with probability `p`, scales the rest by `1/(1−p)`.
#[derive(Debug)]
pub struct Dropout {
    p: Probability,
    training: TrainingFlag,
}

impl Dropout {
    /// A dropout layer.
    pub fn new(p: f32) -> Result<Self> {
        Ok(Dropout {
            p: Probability::new("Dropout", p)?,
            training: TrainingFlag::default(),
        })
    }

    /// Drop probability.
    pub fn p(&self) -> f32 {
        self.p.get()
    }

    /// Sets the drop probability (in `[0, 1]`).
    pub fn set_p(&self, p: f32) -> Result<()> {
        self.p.set("Dropout", p)
    }
}

impl Module for Dropout {
    fn type_name(&self) -> &'static str {
        "Dropout"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.dropout(self.p(), self.training.get())
    }

    fn set_own_training(&self, training: bool) {
        self.training.set(training);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `nn.Dropout2d(p)`: zeroes whole channels with probability `p`.
#[derive(Debug)]
pub struct Dropout2d {
    p: Probability,
    training: TrainingFlag,
}

impl Dropout2d {
    /// A channel-dropout layer.
    pub fn new(p: f32) -> Result<Self> {
        Ok(Dropout2d {
            p: Probability::new("Dropout2d", p)?,
            training: TrainingFlag::default(),
        })
    }

    /// Drop probability per channel.
    pub fn p(&self) -> f32 {
        self.p.get()
    }

    /// Sets the drop probability (in `[0, 1]`).
    pub fn set_p(&self, p: f32) -> Result<()> {
        self.p.set("Dropout2d", p)
    }
}

impl Module for Dropout2d {
    fn type_name(&self) -> &'static str {
        "Dropout2d"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.dropout2d(self.p(), self.training.get())
    }

    fn set_own_training(&self, training: bool) {
        self.training.set(training);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Sets the probability of every [`Dropout`] and [`Dropout2d`] in `root` (itself included)
/// to `p`. A `p` outside `[0, 1]` is an error and changes nothing.
pub fn set_dropout_probability(root: &dyn Module, p: f32) -> Result<()> {
    check_p("set_dropout_probability", p)?;
    let mut result = Ok(());
    visit_modules(root, &mut |_, module| {
        let any = module.as_any();
        let set = if let Some(dropout) = any.downcast_ref::<Dropout>() {
            Some(dropout.set_p(p))
        } else {
            any.downcast_ref::<Dropout2d>().map(|d| d.set_p(p))
        };
        if let (Some(Err(e)), Ok(())) = (set, &result) {
            result = Err(e);
        }
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{set_training, ActivationLayer, Sequential};
    use crate::tensor::Rng;

    fn net() -> Sequential {
        Sequential::default()
            .push(Dropout::new(0.5).unwrap())
            .push(ActivationLayer::relu())
            .push(Sequential::default().push(Dropout2d::new(0.3).unwrap()))
    }

    fn probabilities(net: &Sequential) -> Vec<f32> {
        let mut out = Vec::new();
        visit_modules(net, &mut |_, m| {
            if let Some(d) = m.as_any().downcast_ref::<Dropout>() {
                out.push(d.p());
            }
            if let Some(d) = m.as_any().downcast_ref::<Dropout2d>() {
                out.push(d.p());
            }
        });
        out
    }

    #[test]
    fn sets_every_dropout_layer() {
        let net = net();
        assert_eq!(probabilities(&net), vec![0.5, 0.3]);
        set_dropout_probability(&net, 0.0).unwrap();
        assert_eq!(probabilities(&net), vec![0.0, 0.0]);
        // Training mode with p = 0 is the identity.
        set_training(&net, true);
        let x = Tensor::rand_uniform([2, 3, 4, 5], -1.0, 1.0, &mut Rng::new(7)).unwrap();
        let y = net.forward(&x).unwrap();
        assert_eq!(
            y.try_to_vec().unwrap(),
            x.relu().unwrap().try_to_vec().unwrap()
        );
    }

    #[test]
    fn rejects_a_bad_probability_and_changes_nothing() {
        let net = net();
        assert!(set_dropout_probability(&net, 1.5).is_err());
        assert!(set_dropout_probability(&net, f32::NAN).is_err());
        assert_eq!(probabilities(&net), vec![0.5, 0.3]);
        assert!(Dropout2d::new(-0.1).is_err());
    }

    #[test]
    fn dropout_still_drops_in_training_and_not_in_eval() {
        let layer = Dropout::new(0.5).unwrap();
        let x = Tensor::ones([1000], &crate::Device::Cpu).unwrap();
        let dropped = layer.forward(&x).unwrap().try_to_vec().unwrap();
        assert!(dropped.contains(&0.0));
        assert!(dropped.iter().all(|&v| v == 0.0 || v == 2.0));
        set_training(&layer, false);
        assert_eq!(
            layer.forward(&x).unwrap().try_to_vec().unwrap(),
            x.try_to_vec().unwrap()
        );
    }
}
