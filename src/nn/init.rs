//! Parameter initialisation as PyTorch does it, drawing from the default generator
//! (`crate::tensor::manual_seed` makes it reproducible).

use crate::error::{Error, Result};
use crate::tensor::{with_default_rng, Shape, Tensor};

/// `(fan_in, fan_out)` of a weight: `size(1)·receptive` and `size(0)·receptive`, where the
/// receptive field is the product of the dims after the first two (PyTorch's rule).
pub fn fans(shape: &Shape) -> Result<(usize, usize)> {
    let dims = shape.dims();
    if dims.len() < 2 {
        return Err(Error::shape(
            "init",
            format!("fan in/out needs a weight of rank ≥ 2, got {shape}"),
        ));
    }
    let receptive: usize = dims[2..].iter().product();
    Ok((dims[1] * receptive, dims[0] * receptive))
}

/// U(−bound, bound) samples.
pub fn uniform(shape: impl Into<Shape>, bound: f32) -> Result<Tensor> {
    let shape = shape.into();
    with_default_rng(|rng| Tensor::rand_uniform(shape, -bound, bound, rng))
}

/// `kaiming_uniform_(w, a)` with fan_in and the leaky-relu gain `√(2 / (1 + a²))`:
/// bound = gain·√(3 / fan_in). With a = √5 (the default of conv and linear layers) the bound is
/// `1/√fan_in`.
pub fn kaiming_uniform(shape: impl Into<Shape>, a: f32) -> Result<Tensor> {
    let shape = shape.into();
    let (fan_in, _) = fans(&shape)?;
    let gain = (2.0 / (1.0 + a * a)).sqrt();
    uniform(shape, gain * (3.0 / fan_in.max(1) as f32).sqrt())
}

/// Which fan `kaiming_normal` scales by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanMode {
    /// Preserve the forward variance.
    FanIn,
    /// Preserve the backward variance (what segmentation nets usually use).
    FanOut,
}

/// `kaiming_normal_(w, mode, nonlinearity='relu')`: N(0, (√2 / √fan)²).
pub fn kaiming_normal(shape: impl Into<Shape>, mode: FanMode) -> Result<Tensor> {
    let shape = shape.into();
    let (fan_in, fan_out) = fans(&shape)?;
    let fan = match mode {
        FanMode::FanIn => fan_in,
        FanMode::FanOut => fan_out,
    };
    let std = (2.0 / fan.max(1) as f32).sqrt();
    with_default_rng(|rng| Tensor::randn(shape, 0.0, std, rng))
}

/// The default bias of a conv / linear layer: U(−1/√fan_in, 1/√fan_in).
pub fn default_bias(len: usize, fan_in: usize) -> Result<Tensor> {
    uniform([len], 1.0 / (fan_in.max(1) as f32).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_spread_follow_pytorch_formulas() {
        crate::tensor::manual_seed(3);
        // Conv weight [16, 8, 3, 3]: fan_in 72, default bound 1/√72.
        let w = kaiming_uniform([16, 8, 3, 3], 5f32.sqrt())
            .unwrap()
            .try_to_vec()
            .unwrap();
        let bound = 1.0 / 72f32.sqrt();
        assert!(w.iter().all(|v| v.abs() <= bound));
        assert!(w.iter().any(|v| v.abs() > 0.9 * bound));
        let n = kaiming_normal([64, 32, 3, 3], FanMode::FanOut)
            .unwrap()
            .try_to_vec()
            .unwrap();
        let std = (n.iter().map(|v| v * v).sum::<f32>() / n.len() as f32).sqrt();
        let expected = (2.0 / (64.0 * 9.0f32)).sqrt();
        assert!(
            (std / expected - 1.0).abs() < 0.05,
            "std {std} vs {expected}"
        );
        assert_eq!(fans(&Shape::from([10, 4])).unwrap(), (4, 10));
        assert!(fans(&Shape::from([10])).is_err());
    }
}
