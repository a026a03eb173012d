//! Activations, softmax, cross-entropy, batch norm and dropout: PyTorch fixtures
//! (`scripts/fixtures/norm.py`), finite differences and error cases, one module per family.

#[path = "norm/activation.rs"]
mod activation;
#[path = "norm/batch_norm.rs"]
mod batch_norm;
#[path = "norm/dropout.rs"]
mod dropout;
#[path = "norm/loss.rs"]
mod loss;
#[path = "norm/softmax.rs"]
mod softmax;

use moeseg::testing::Fixtures;
use moeseg::{Rng, Tensor};

/// The elements on the host; a failed copy fails the test.
pub trait ToHost {
    fn to_host(&self) -> Vec<f32>;
}

impl ToHost for Tensor {
    fn to_host(&self) -> Vec<f32> {
        self.try_to_vec().unwrap()
    }
}

/// The fixture file of these families.
pub fn fixtures() -> Fixtures {
    Fixtures::load("norm").unwrap()
}

/// Standard normal samples.
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape.to_vec(), 0.0, 1.0, &mut Rng::new(seed)).unwrap()
}

/// Asserts that `result` is an error whose message contains every one of `needles`.
pub fn assert_error_mentions(result: moeseg::Result<Tensor>, needles: &[&str]) {
    let message = match result {
        Ok(t) => panic!("expected an error mentioning {needles:?}, got {t:?}"),
        Err(e) => e.to_string(),
    };
    for needle in needles {
        assert!(message.contains(needle), "`{message}` lacks `{needle}`");
    }
}
