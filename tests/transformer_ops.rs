//! Ops of the Vision Transformer and Soft-MoE (layer norm, gelu, soft routing, products with a
//! transposed rhs, L2 normalisation): PyTorch fixtures (`scripts/fixtures/transformer.py`),
//! finite differences and hand-derived values.

use moeseg::nn::{named_parameters, LayerNorm, Module};
use moeseg::testing::{assert_close, gradcheck, Fixtures, GradcheckOptions};
use moeseg::{Rng, Tensor};

fn fixtures() -> Fixtures {
    Fixtures::load("transformer").unwrap()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape.to_vec(), 0.0, 1.0, &mut Rng::new(seed)).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.try_to_vec().unwrap()
}

#[test]
fn layer_norm_matches_pytorch() {
    let fx = fixtures();
    let (r, a) = (1e-5, 2e-6);
    fx.check_case(
        "layer_norm_affine",
        &["input", "weight", "bias"],
        |t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5),
        r,
        a,
    )
    .unwrap();
    fx.check_case(
        "layer_norm_plain",
        &["input"],
        |t| t[0].layer_norm(None, None, 1e-6),
        r,
        a,
    )
    .unwrap();
    fx.check_case(
        "layer_norm_wide_f64",
        &["input", "weight", "bias"],
        |t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-6),
        // The f32 mean of values near 100 is off by up to 2^-18: x̂ carries that into the
        // weight gradient's sum over rows.
        1e-5,
        2e-5,
    )
    .unwrap();
    fx.check_case(
        "layer_norm_constant_row",
        &["input", "weight"],
        |t| t[0].layer_norm(Some(&t[1]), None, 1e-5),
        r,
        a,
    )
    .unwrap();
}

#[test]
fn layer_norm_by_hand() {
    // Row [1, 2, 3, 6]: mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5.
    let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 6.0], [1, 4]).unwrap();
    let y = x.layer_norm(None, None, 0.0).unwrap();
    let s = 3.5f32.sqrt();
    let expected = Tensor::from_vec(vec![-2.0 / s, -1.0 / s, 0.0, 3.0 / s], [1, 4]).unwrap();
    assert_close("layer_norm by hand", &y, &expected, 1e-6, 1e-6).unwrap();
}

#[test]
fn layer_norm_gradients_agree_with_finite_differences() {
    let opts = GradcheckOptions {
        eps: 1e-2,
        rtol: 2e-2,
        atol: 2e-3,
    };
    let (x, w, b) = (randn(&[2, 3, 5], 1), randn(&[5], 2), randn(&[5], 3));
    gradcheck(
        "layer_norm affine",
        &[x.clone(), w, b],
        |t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5),
        opts,
    )
    .unwrap();
    gradcheck(
        "layer_norm",
        &[x],
        |t| t[0].layer_norm(None, None, 1e-5),
        opts,
    )
    .unwrap();
    let (x, w) = (randn(&[4, 3], 4), randn(&[3], 5));
    gradcheck(
        "layer_norm weight only",
        &[x, w],
        |t| t[0].layer_norm(Some(&t[1]), None, 1e-5),
        opts,
    )
    .unwrap();
}

#[test]
fn layer_norm_rejects_bad_parameters() {
    let x = randn(&[2, 4], 6);
    let message = |r: moeseg::Result<Tensor>| r.unwrap_err().to_string();
    let wrong = message(x.layer_norm(Some(&randn(&[3], 7)), None, 1e-5));
    assert!(wrong.contains("weight") && wrong.contains("[4]"), "{wrong}");
    let wrong = message(x.layer_norm(None, Some(&randn(&[2, 4], 7)), 1e-5));
    assert!(wrong.contains("bias"), "{wrong}");
    let wrong = message(x.layer_norm(None, None, -1.0));
    assert!(wrong.contains("eps"), "{wrong}");
    let wrong = message(Tensor::scalar(1.0).layer_norm(None, None, 1e-5));
    assert!(wrong.contains("rank-0"), "{wrong}");
}

#[test]
fn the_layer_norm_layer_has_torch_names_and_init() {
    let layer = LayerNorm::new(6, 1e-6).unwrap();
    let names: Vec<String> = named_parameters(&layer)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, ["weight", "bias"]);
    assert_eq!(values(layer.weight.as_ref().unwrap()), vec![1.0; 6]);
    assert_eq!(values(layer.bias.as_ref().unwrap()), vec![0.0; 6]);
    let x = randn(&[2, 3, 6], 8);
    let by_layer = layer.forward(&x).unwrap();
    assert_close(
        "LayerNorm layer",
        &by_layer,
        &x.layer_norm(None, None, 1e-6).unwrap(),
        0.0,
        0.0,
    )
    .unwrap();
    let wrong = layer.forward(&randn(&[2, 5], 9)).unwrap_err().to_string();
    assert!(
        wrong.contains("LayerNorm") && wrong.contains('6'),
        "{wrong}"
    );
}

#[test]
fn gelu_matches_pytorch() {
    let fx = fixtures();
    // Float32 torch is off by up to ~5e-7 in the far negative tail (cancellation in 1 + erf).
    fx.check_case("gelu", &["input"], |t| t[0].gelu(), 1e-6, 1e-6)
        .unwrap();
    fx.check_case("gelu_f64", &["input"], |t| t[0].gelu(), 1e-6, 1e-8)
        .unwrap();
    fx.check_case("gelu_tanh", &["input"], |t| t[0].gelu_tanh(), 1e-6, 1e-6)
        .unwrap();
}

#[test]
fn gelu_by_hand_and_by_finite_differences() {
    // gelu(1) = Φ(1) = 0.841344746..., gelu(-1) = -(1 − Φ(1)); gelu'(0) = 1/2.
    let x = Tensor::from_vec(vec![1.0, -1.0, 0.0], [3])
        .unwrap()
        .with_requires_grad(true);
    let y = x.gelu().unwrap();
    let expected = Tensor::from_vec(vec![0.841_344_75, -0.158_655_25, 0.0], [3]).unwrap();
    assert_close("gelu by hand", &y, &expected, 1e-7, 1e-8).unwrap();
    y.sum_all().unwrap().backward().unwrap();
    // gelu'(x) = Φ(x) + x φ(x): gelu'(1) = 0.841345 + 0.241971, gelu'(−1) = 0.158655 − 0.241971.
    let grad = Tensor::from_vec(vec![1.083_315_5, -0.083_315_47, 0.5], [3]).unwrap();
    assert_close("gelu' by hand", &x.grad().unwrap(), &grad, 1e-6, 1e-7).unwrap();
    let opts = GradcheckOptions {
        eps: 1e-3,
        rtol: 1e-2,
        atol: 1e-3,
    };
    let x = randn(&[4, 7], 10).mul_scalar(3.0).unwrap();
    gradcheck("gelu", &[x.clone()], |t| t[0].gelu(), opts).unwrap();
    gradcheck("gelu_tanh", &[x], |t| t[0].gelu_tanh(), opts).unwrap();
}
