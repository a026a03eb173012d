//! Pointwise activations and prelu.

use super::{assert_error_mentions, fixtures, randn, ToHost};
use moeseg::testing::{assert_close, gradcheck, GradcheckOptions};
use moeseg::Tensor;

/// Normal samples scaled to cover the hard activations' range, moved at least 0.05 away from
/// the kinks 0 and ±3 so no finite-difference step crosses one.
fn away_from_kinks(shape: &[usize], seed: u64) -> Tensor {
    let values = randn(shape, seed)
        .to_host()
        .into_iter()
        .map(|v| {
            let v = v * 2.5;
            let near_kink = [0.0f32, 3.0, -3.0].iter().any(|k| (v - k).abs() < 0.05);
            if near_kink {
                v + 0.1
            } else {
                v
            }
        })
        .collect();
    Tensor::from_vec(values, shape.to_vec()).unwrap()
}

#[test]
fn activations_match_pytorch_including_the_kinks() {
    let fx = fixtures();
    let (r, a) = (1e-5, 1e-6);
    fx.check_case("relu", &["input"], |t| t[0].relu(), r, a)
        .unwrap();
    fx.check_case("leaky_relu", &["input"], |t| t[0].leaky_relu(0.1), r, a)
        .unwrap();
    fx.check_case("hardswish", &["input"], |t| t[0].hardswish(), r, a)
        .unwrap();
    fx.check_case("hardsigmoid", &["input"], |t| t[0].hardsigmoid(), r, a)
        .unwrap();
    fx.check_case("sigmoid", &["input"], |t| t[0].sigmoid(), r, a)
        .unwrap();
    fx.check_case("tanh", &["input"], |t| t[0].tanh(), r, a)
        .unwrap();
}

#[test]
fn prelu_matches_pytorch_per_channel_and_single() {
    let fx = fixtures();
    let (r, a) = (1e-5, 1e-5);
    for case in ["prelu_channel", "prelu_nc", "prelu_single"] {
        fx.check_case(case, &["input", "weight"], |t| t[0].prelu(&t[1]), r, a)
            .unwrap();
    }
}

#[test]
fn activation_gradients_agree_with_finite_differences() {
    let opts = GradcheckOptions::default();
    let x = away_from_kinks(&[3, 5, 2], 11);
    gradcheck("relu", std::slice::from_ref(&x), |t| t[0].relu(), opts).unwrap();
    gradcheck(
        "leaky_relu",
        std::slice::from_ref(&x),
        |t| t[0].leaky_relu(0.2),
        opts,
    )
    .unwrap();
    gradcheck(
        "sigmoid",
        std::slice::from_ref(&x),
        |t| t[0].sigmoid(),
        opts,
    )
    .unwrap();
    gradcheck("tanh", std::slice::from_ref(&x), |t| t[0].tanh(), opts).unwrap();
    gradcheck(
        "hardswish",
        std::slice::from_ref(&x),
        |t| t[0].hardswish(),
        opts,
    )
    .unwrap();
    gradcheck("hardsigmoid", &[x], |t| t[0].hardsigmoid(), opts).unwrap();
}

#[test]
fn prelu_gradients_agree_with_finite_differences() {
    let opts = GradcheckOptions::default();
    let x = away_from_kinks(&[2, 3, 3, 5], 12);
    let weight = Tensor::from_vec(vec![0.25, -0.4, 1.3], [3]).unwrap();
    gradcheck(
        "prelu per channel",
        &[x.clone(), weight],
        |t| t[0].prelu(&t[1]),
        opts,
    )
    .unwrap();
    let single = Tensor::from_vec(vec![0.3], [1]).unwrap();
    gradcheck("prelu single", &[x, single], |t| t[0].prelu(&t[1]), opts).unwrap();
}

#[test]
fn prelu_rejects_weights_that_do_not_fit_the_channels() {
    let x = randn(&[2, 3, 4, 4], 1);
    assert_error_mentions(x.prelu(&randn(&[4], 2)), &["prelu", "[4]", "[2, 3, 4, 4]"]);
    assert_error_mentions(x.prelu(&randn(&[3, 1], 3)), &["prelu", "[3, 1]"]);
    assert_error_mentions(randn(&[3], 4).prelu(&randn(&[3], 5)), &["prelu", "[3]"]);
}

#[test]
fn prelu_chunks_that_cross_channel_boundaries_match_a_naive_loop() {
    // 2·3·70·70 = 29400 elements: parallel chunks start in the middle of channels.
    let x = randn(&[2, 3, 70, 70], 13).with_requires_grad(true);
    let weight = Tensor::from_vec(vec![0.1, -0.7, 2.0], [3])
        .unwrap()
        .with_requires_grad(true);
    let y = x.prelu(&weight).unwrap();
    y.sum_all().unwrap().backward().unwrap();
    let (xs, ys) = (x.to_host(), y.to_host());
    let mut grad_w = [0.0f64; 3];
    for (i, (&v, &out)) in xs.iter().zip(&ys).enumerate() {
        let c = (i / 4900) % 3;
        let w = weight.to_host()[c];
        assert_eq!(out, if v > 0.0 { v } else { w * v });
        if v <= 0.0 {
            grad_w[c] += v as f64;
        }
    }
    let expected = Tensor::from_vec(grad_w.iter().map(|&g| g as f32).collect(), [3]).unwrap();
    assert_close(
        "grad_weight",
        &weight.grad().unwrap(),
        &expected,
        1e-5,
        1e-3,
    )
    .unwrap();
}
