//! Comparing a target's output with the reference: per-element tolerances, a relative-norm
//! bound, and bitwise equality between repeated runs.

use serde::{Deserialize, Serialize};

/// Per-op tolerance: `|got − want| ≤ atol + rtol·|want|` per element and a relative-norm bound.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    pub atol: f32,
    pub rtol: f32,
    /// Bound on `‖got − want‖₂ / ‖want‖₂`.
    pub norm: f32,
}

impl Tolerance {
    /// Elementwise maps: about 1e-5 relative.
    pub const ELEMENTWISE: Tolerance = Tolerance {
        atol: 1e-6,
        rtol: 1e-5,
        norm: 1e-5,
    };
    /// Transcendental maps (exp, tanh, softmax): the GPU's fast-math-free expf still differs in
    /// the last ulps.
    pub const TRANSCENDENTAL: Tolerance = Tolerance {
        atol: 1e-5,
        rtol: 1e-4,
        norm: 1e-5,
    };
    /// Reductions and GEMM-like ops: sums in another order.
    pub const REDUCTION: Tolerance = Tolerance {
        atol: 1e-4,
        rtol: 1e-3,
        norm: 1e-4,
    };
    /// Bit-exact (copies, index ops, dropout masks).
    pub const EXACT: Tolerance = Tolerance {
        atol: 0.0,
        rtol: 0.0,
        norm: 0.0,
    };
}

/// How one output compared.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub max_abs: f32,
    pub max_rel: f32,
    pub rel_norm: f32,
    /// Elements outside the tolerance (NaN included).
    pub bad: usize,
    pub pass: bool,
}

/// Compares `got` with the reference `want` under `tol`. A NaN passes only against a NaN.
pub fn compare(want: &[f32], got: &[f32], tol: Tolerance) -> Comparison {
    if want.len() != got.len() {
        return Comparison {
            max_abs: f32::INFINITY,
            max_rel: f32::INFINITY,
            rel_norm: f32::INFINITY,
            bad: want.len().max(got.len()),
            pass: false,
        };
    }
    let (mut max_abs, mut max_rel, mut bad) = (0.0f32, 0.0f32, 0usize);
    let (mut diff_sq, mut want_sq) = (0.0f64, 0.0f64);
    for (&w, &g) in want.iter().zip(got) {
        let same_nan = w.is_nan() && g.is_nan();
        let err = (g - w).abs();
        // A NaN error (either side NaN) is never within the tolerance.
        let within = err <= tol.atol + tol.rtol * w.abs();
        if !(same_nan || within) {
            bad += 1;
        }
        if same_nan || w == g {
            continue;
        }
        let err = if err.is_nan() { f32::INFINITY } else { err };
        max_abs = max_abs.max(err);
        max_rel = max_rel.max(err / w.abs().max(f32::MIN_POSITIVE));
        diff_sq += f64::from(err) * f64::from(err);
        want_sq += f64::from(w) * f64::from(w);
    }
    let rel_norm = if diff_sq == 0.0 {
        0.0
    } else {
        (diff_sq.sqrt() / want_sq.sqrt().max(f64::MIN_POSITIVE)) as f32
    };
    let norm_ok = tol.norm == 0.0 && diff_sq == 0.0 || rel_norm <= tol.norm || bad == 0;
    Comparison {
        max_abs,
        max_rel,
        rel_norm,
        bad,
        pass: bad == 0 && norm_ok,
    }
}

/// How many elements of `a` and `b` differ bitwise (`f32::to_bits`, so a NaN equals only the
/// same NaN, and `0.0` differs from `-0.0`); a length difference counts every element of the
/// longer one.
pub fn bitwise_differences(a: &[f32], b: &[f32]) -> usize {
    if a.len() != b.len() {
        return a.len().max(b.len());
    }
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_catches_nan_and_tolerance() {
        let tol = Tolerance::ELEMENTWISE;
        assert!(compare(&[1.0, 2.0], &[1.0, 2.0], tol).pass);
        assert!(!compare(&[1.0, 2.0], &[1.0, f32::NAN], tol).pass);
        assert!(!compare(&[1.0], &[1.01], tol).pass);
        assert!(compare(&[1.0], &[1.000_005], tol).pass);
        assert!(!compare(&[1.0], &[1.0, 2.0], tol).pass);
        assert!(!compare(&[0.0], &[1e-7], Tolerance::EXACT).pass);
    }

    #[test]
    fn bitwise_differences_compare_bits() {
        assert_eq!(bitwise_differences(&[1.0, f32::NAN], &[1.0, f32::NAN]), 0);
        assert_eq!(bitwise_differences(&[0.0, 1.0], &[-0.0, 1.0]), 1);
        assert_eq!(bitwise_differences(&[1.0], &[1.0, 2.0]), 2);
        assert_eq!(
            bitwise_differences(&[f32::NAN], &[f32::from_bits(0x7fc0_0001)]),
            1
        );
    }
}
