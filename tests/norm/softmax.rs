//! Softmax and log-softmax.

use super::{assert_error_mentions, fixtures, randn, ToHost};
use moeseg::testing::{assert_close, gradcheck, GradcheckOptions};
use moeseg::Tensor;

#[test]
fn softmax_matches_pytorch_on_large_logits() {
    let fx = fixtures();
    let (r, a) = (1e-4, 1e-5);
    fx.check_case("softmax_axis1", &["input"], |t| t[0].softmax(1), r, a)
        .unwrap();
    fx.check_case("softmax_last", &["input"], |t| t[0].softmax(-1), r, a)
        .unwrap();
    fx.check_case("softmax_axis0", &["input"], |t| t[0].softmax(0), r, a)
        .unwrap();
    fx.check_case(
        "log_softmax_axis1",
        &["input"],
        |t| t[0].log_softmax(1),
        r,
        a,
    )
    .unwrap();
    fx.check_case(
        "log_softmax_last",
        &["input"],
        |t| t[0].log_softmax(-1),
        r,
        a,
    )
    .unwrap();
}

#[test]
fn softmax_gradients_agree_with_finite_differences() {
    let opts = GradcheckOptions::default();
    let x = randn(&[2, 3, 4, 5], 21);
    for axis in [0, 1, -1] {
        gradcheck(
            "softmax",
            std::slice::from_ref(&x),
            |t| t[0].softmax(axis),
            opts,
        )
        .unwrap();
        gradcheck(
            "log_softmax",
            std::slice::from_ref(&x),
            |t| t[0].log_softmax(axis),
            opts,
        )
        .unwrap();
    }
}

#[test]
fn softmax_rows_sum_to_one_and_log_softmax_is_its_log() {
    let x = randn(&[3, 7, 5], 22).mul_scalar(40.0).unwrap();
    let sums = x.softmax(1).unwrap().sum(&[1], false).unwrap();
    assert_close(
        "row sums",
        &sums,
        &Tensor::ones([3, 5], &x.device()).unwrap(),
        1e-5,
        1e-6,
    )
    .unwrap();
    let log = x.log_softmax(-1).unwrap();
    assert!(log.to_host().iter().all(|v| v.is_finite() && *v <= 0.0));
}

#[test]
fn softmax_rejects_bad_axes() {
    let x = randn(&[2, 3], 1);
    assert_error_mentions(x.softmax(2), &["softmax", "axis 2", "[2, 3]"]);
    assert_error_mentions(x.log_softmax(-3), &["log_softmax", "axis -3", "[2, 3]"]);
    assert_error_mentions(Tensor::scalar(1.0).softmax(0), &["softmax", "rank-0"]);
}

/// Softmax over the middle axis of `[outer, size, inner]` data, one column at a time in f64.
fn naive_softmax(x: &[f32], outer: usize, size: usize, inner: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |s: usize| (o * size + s) * inner + i;
            let max = (0..size).map(|s| x[at(s)] as f64).fold(f64::MIN, f64::max);
            let sum: f64 = (0..size).map(|s| (x[at(s)] as f64 - max).exp()).sum();
            for s in 0..size {
                out[at(s)] = ((x[at(s)] as f64 - max).exp() / sum) as f32;
            }
        }
    }
    out
}

#[test]
fn wide_inner_axes_span_several_column_blocks() {
    // inner = 130 is two full 64-column blocks and a partial one.
    let x = randn(&[3, 5, 130], 23).mul_scalar(5.0).unwrap();
    let expected = Tensor::from_vec(naive_softmax(&x.to_host(), 3, 5, 130), [3, 5, 130]).unwrap();
    assert_close("softmax", &x.softmax(1).unwrap(), &expected, 1e-5, 1e-7).unwrap();
    let log = x.log_softmax(1).unwrap().exp().unwrap();
    assert_close("log_softmax", &log, &expected, 1e-5, 1e-7).unwrap();
}
