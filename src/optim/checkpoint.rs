//! Optimizer and scheduler state as named tensors, for a safetensors checkpoint beside the
//! model.
//!
//! Scalars (hyper-parameters, step counts) are f64 in the optimizer; a file holds f32, so each
//! scalar is stored as three f32 `[hi, mid, lo]` with `hi + (mid + lo) == x` exactly (hi alone
//! is the value to f32 precision). That keeps a resumed run bit-identical to one that never
//! stopped. Exact for 0 and for magnitudes between about 1e-20 and 1e38.

use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};
use std::collections::{BTreeMap, BTreeSet};

/// Encodes `x` as the three-f32 tensor described in the module docs.
pub fn encode_scalar(x: f64) -> Tensor {
    let hi = x as f32;
    let rest = x - hi as f64;
    let mid = rest as f32;
    let lo = (rest - mid as f64) as f32;
    Tensor::from_vec(vec![hi, mid, lo], [3]).expect("three values always have shape [3]")
}

/// Decodes a scalar tensor: three f32 as written by [`encode_scalar`], or any one-element
/// tensor (a value written by hand). `key` names it in errors.
pub fn decode_scalar(key: &str, t: &Tensor) -> Result<f64> {
    let v = t.try_to_vec()?;
    match v.as_slice() {
        [x] => Ok(*x as f64),
        [hi, mid, lo] if t.rank() == 1 => Ok(*hi as f64 + (*mid as f64 + *lo as f64)),
        _ => Err(Error::invalid(
            "load_state",
            format!(
                "`{key}` should be a scalar (shape [3] or one element), got shape {}",
                t.shape()
            ),
        )),
    }
}

/// Reads named tensors out of a checkpoint, remembering which it used so that leftovers under
/// a prefix (state of a parameter the optimizer does not have, an extra group) are reported.
pub(crate) struct StateReader<'a> {
    tensors: &'a BTreeMap<String, Tensor>,
    used: BTreeSet<String>,
}

impl<'a> StateReader<'a> {
    pub(crate) fn new(tensors: &'a BTreeMap<String, Tensor>) -> Self {
        StateReader {
            tensors,
            used: BTreeSet::new(),
        }
    }

    /// The tensor `key`, or an error naming the missing key.
    pub(crate) fn tensor(&mut self, key: &str) -> Result<Tensor> {
        let t = self.tensors.get(key).ok_or_else(|| {
            Error::invalid("load_state", format!("the checkpoint has no `{key}`"))
        })?;
        self.used.insert(key.to_string());
        Ok(t.clone())
    }

    /// The tensor `key`, which must have `shape` (that of the parameter it belongs to).
    pub(crate) fn buffer(&mut self, key: &str, shape: &Shape) -> Result<Tensor> {
        let t = self.tensor(key)?;
        if t.shape() != shape {
            return Err(Error::shape(
                "load_state",
                format!(
                    "`{key}` has shape {} but its parameter has shape {shape}",
                    t.shape()
                ),
            ));
        }
        // A private copy: the optimizer's state must not alias the caller's tensors.
        Ok(t.detach())
    }

    /// The scalar `key`.
    pub(crate) fn scalar(&mut self, key: &str) -> Result<f64> {
        let t = self.tensor(key)?;
        decode_scalar(key, &t)
    }

    /// The non-negative integer `key` (a step count).
    pub(crate) fn count(&mut self, key: &str) -> Result<u64> {
        let x = self.scalar(key)?;
        if !(x >= 0.0 && x.fract() == 0.0 && x < 2f64.powi(53)) {
            return Err(Error::invalid(
                "load_state",
                format!("`{key}` should be a non-negative integer, got {x}"),
            ));
        }
        Ok(x as u64)
    }

    /// Fails on any key starting with `prefix` that was not read.
    pub(crate) fn finish(self, prefix: &str) -> Result<()> {
        let unused = self
            .tensors
            .keys()
            .find(|k| k.starts_with(prefix) && !self.used.contains(*k));
        match unused {
            Some(key) => Err(Error::invalid(
                "load_state",
                format!("unexpected `{key}`: no such parameter, group or state in this optimizer"),
            )),
            None => Ok(()),
        }
    }
}

/// Reads a 0 / 1 flag.
pub(crate) fn read_flag(
    read: &mut dyn FnMut(&'static str) -> Result<f64>,
    name: &'static str,
) -> Result<bool> {
    match read(name)? {
        0.0 => Ok(false),
        1.0 => Ok(true),
        other => Err(Error::invalid(
            "load_state",
            format!("flag `{name}` should be 0 or 1, got {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Rng;

    #[test]
    fn scalars_round_trip_exactly() {
        let mut rng = Rng::new(7);
        let mut values = vec![0.0, 0.1, 1e-3, 0.9, 0.999, 1e-8, 3e-4, 123456789.0, -0.25];
        values.extend((0..2000).map(|_| {
            let mantissa = rng.uniform(-1.0, 1.0) as f64 + rng.uniform(-1.0, 1.0) as f64 * 1e-9;
            mantissa * 10f64.powi((rng.uniform(-19.0, 37.0)) as i32) + 1e-13 * mantissa
        }));
        for x in values {
            let t = encode_scalar(x);
            assert_eq!(
                decode_scalar("x", &t).unwrap().to_bits(),
                x.to_bits(),
                "{x:e}"
            );
        }
        assert_eq!(decode_scalar("x", &Tensor::scalar(2.5)).unwrap(), 2.5);
        let err = decode_scalar("optim.x", &Tensor::zeros([2], &Default::default()).unwrap());
        assert!(err.unwrap_err().to_string().contains("optim.x"));
    }
}
