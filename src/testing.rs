//! Test support used by the crate's tests (and by later layers' tests): closeness checks,
//! finite-difference gradient checks and PyTorch fixture cases.
//!
//! These return `Err(message)` instead of panicking so callers can add context; tests `unwrap`
//! them.

use crate::autograd::no_grad;
use crate::error::Result;
use crate::io::safetensors;
use crate::tensor::{Rng, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Checks `|actual − expected| ≤ atol + rtol·|expected|` element by element (NaN never
/// passes) and equal shapes; the message names `what`, the worst element and its error.
pub fn assert_close(
    what: &str,
    actual: &Tensor,
    expected: &Tensor,
    rtol: f32,
    atol: f32,
) -> std::result::Result<(), String> {
    if actual.shape() != expected.shape() {
        return Err(format!(
            "{what}: shape {} differs from expected {}",
            actual.shape(),
            expected.shape()
        ));
    }
    let host = |t: &Tensor| t.try_to_vec().map_err(|e| format!("{what}: {e}"));
    let (a, e) = (host(actual)?, host(expected)?);
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&x, &y)) in a.iter().zip(&e).enumerate() {
        let err = (x - y).abs();
        let bad = err.is_nan() || err > atol + rtol * y.abs();
        if bad && worst.is_none_or(|(_, w)| err > w || err.is_nan()) {
            worst = Some((i, err));
        }
    }
    match worst {
        None => Ok(()),
        Some((i, err)) => Err(format!(
            "{what}: element {i} is {} but expected {} (|error| {err:e} > {atol:e} + {rtol:e}·|expected|); shape {}",
            a[i],
            e[i],
            actual.shape()
        )),
    }
}

/// Options of [`gradcheck`].
#[derive(Clone, Copy, Debug)]
pub struct GradcheckOptions {
    /// Finite-difference step.
    pub eps: f32,
    /// Relative tolerance against the numeric gradient.
    pub rtol: f32,
    /// Absolute tolerance.
    pub atol: f32,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions {
            eps: 1e-2,
            rtol: 1e-2,
            atol: 1e-3,
        }
    }
}

/// Compares autograd's gradients of `f` with central finite differences.
///
/// The scalar differentiated is `Σ f(inputs) ⊙ R` for a fixed random `R`, so every output
/// element matters with a different weight. Each input element is perturbed by ±eps; the loss
/// is summed in f64. Keep shapes small.
pub fn gradcheck(
    what: &str,
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    options: GradcheckOptions,
) -> std::result::Result<(), String> {
    let fail = |e: crate::Error| format!("{what}: {e}");
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.detach().with_requires_grad(true))
        .collect();
    let out = f(&leaves).map_err(fail)?;
    let mut rng = Rng::new(0x5eed);
    let projection =
        Tensor::rand_uniform(out.shape().clone(), -1.0, 1.0, &mut rng).map_err(fail)?;
    let loss = out
        .mul(&projection)
        .map_err(fail)?
        .sum_all()
        .map_err(fail)?;
    loss.backward().map_err(fail)?;
    let proj = projection.try_to_vec().map_err(fail)?;
    let project = |t: &Tensor| -> std::result::Result<f64, String> {
        Ok(t.try_to_vec()
            .map_err(fail)?
            .iter()
            .zip(&proj)
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum())
    };

    for (index, leaf) in leaves.iter().enumerate() {
        let analytic = match leaf.grad() {
            Some(g) => g.try_to_vec().map_err(fail)?,
            None => vec![0.0; leaf.numel()],
        };
        let base = inputs[index].try_to_vec().map_err(fail)?;
        for j in 0..base.len() {
            let eval = |delta: f32| -> std::result::Result<f64, String> {
                let mut data = base.clone();
                data[j] += delta;
                let perturbed =
                    Tensor::from_vec(data, inputs[index].shape().clone()).map_err(fail)?;
                let mut args: Vec<Tensor> = inputs.to_vec();
                args[index] = perturbed;
                let out = no_grad(|| f(&args)).map_err(fail)?;
                project(&out)
            };
            let numeric =
                ((eval(options.eps)? - eval(-options.eps)?) / (2.0 * options.eps as f64)) as f32;
            let err = (analytic[j] - numeric).abs();
            if err.is_nan() || err > options.atol + options.rtol * numeric.abs() {
                return Err(format!(
                    "{what}: d/d input{index}[{j}] is {} by autograd but {numeric} by finite differences (shape {})",
                    analytic[j],
                    inputs[index].shape()
                ));
            }
        }
    }
    Ok(())
}

/// A safetensors fixture file written by `scripts/make_fixtures.py`.
pub struct Fixtures {
    path: PathBuf,
    tensors: BTreeMap<String, Tensor>,
}

impl Fixtures {
    /// Loads `tests/fixtures/<name>.safetensors` from the crate root.
    pub fn load(name: &str) -> Result<Fixtures> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(format!("{name}.safetensors"));
        let tensors = safetensors::load(&path)?
            .into_iter()
            .map(|(k, (t, _))| (k, t))
            .collect();
        Ok(Fixtures { path, tensors })
    }

    /// The tensor `key`, or an error naming the file and key.
    pub fn get(&self, key: &str) -> std::result::Result<Tensor, String> {
        self.tensors
            .get(key)
            .cloned()
            .ok_or_else(|| format!("{}: no tensor `{key}`", self.path.display()))
    }

    /// True when the file has `key`.
    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// Names of the cases (`<case>.<tensor>` keys, prefix before the first dot).
    pub fn cases(&self) -> Vec<String> {
        let mut cases: Vec<String> = self
            .tensors
            .keys()
            .filter_map(|k| k.split_once('.').map(|(c, _)| c.to_string()))
            .collect();
        cases.dedup();
        cases
    }

    /// Runs one PyTorch case: loads `<case>.<input>` for each name in `inputs`, evaluates `f`,
    /// compares with `<case>.out`, back-propagates `<case>.grad_out` (when present) and compares
    /// each `<case>.grad_<input>` that the file has.
    pub fn check_case(
        &self,
        case: &str,
        inputs: &[&str],
        f: impl Fn(&[Tensor]) -> Result<Tensor>,
        rtol: f32,
        atol: f32,
    ) -> std::result::Result<(), String> {
        let fail = |e: crate::Error| format!("{case}: {e}");
        let leaves: Vec<Tensor> = inputs
            .iter()
            .map(|name| {
                Ok(self
                    .get(&format!("{case}.{name}"))?
                    .with_requires_grad(true))
            })
            .collect::<std::result::Result<_, String>>()?;
        let out = f(&leaves).map_err(fail)?;
        assert_close(
            &format!("{case}.out"),
            &out,
            &self.get(&format!("{case}.out"))?,
            rtol,
            atol,
        )?;
        let grad_key = format!("{case}.grad_out");
        if self.has(&grad_key) {
            let upstream = self.get(&grad_key)?;
            out.mul(&upstream)
                .and_then(|t| t.sum_all())
                .and_then(|l| l.backward())
                .map_err(fail)?;
            for (name, leaf) in inputs.iter().zip(&leaves) {
                let key = format!("{case}.grad_{name}");
                if self.has(&key) {
                    let grad = leaf
                        .grad()
                        .ok_or_else(|| format!("{key}: autograd gave no gradient"))?;
                    assert_close(&key, &grad, &self.get(&key)?, rtol, atol)?;
                }
            }
        }
        Ok(())
    }
}
