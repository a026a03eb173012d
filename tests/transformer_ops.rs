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
        &[x.clone(), w.clone()],
        |t| t[0].layer_norm(Some(&t[1]), None, 1e-5),
        opts,
    )
    .unwrap();
    gradcheck(
        "layer_norm bias only",
        &[x, w],
        |t| t[0].layer_norm(None, Some(&t[1]), 1e-5),
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
    let expected = Tensor::from_vec(vec![0.841_344_7, -0.158_655_26, 0.0], [3]).unwrap();
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
    gradcheck("gelu", std::slice::from_ref(&x), |t| t[0].gelu(), opts).unwrap();
    gradcheck("gelu_tanh", &[x], |t| t[0].gelu_tanh(), opts).unwrap();
}

/// `[dispatch; combine]` stacked on a new axis 0, the layout of the fixture's `out`.
fn stacked_routes(logits: &Tensor) -> moeseg::Result<Tensor> {
    let (dispatch, combine) = logits.soft_route()?;
    Tensor::cat(&[&dispatch.unsqueeze(0)?, &combine.unsqueeze(0)?], 0)
}

#[test]
fn soft_route_matches_pytorch() {
    let fx = fixtures();
    for case in ["soft_route", "soft_route_large"] {
        fx.check_case(case, &["input"], |t| stacked_routes(&t[0]), 1e-5, 1e-6)
            .unwrap();
    }
}

#[test]
fn soft_route_is_the_two_softmaxes() {
    let x = randn(&[3, 11, 7], 11).mul_scalar(4.0).unwrap();
    let (dispatch, combine) = x.soft_route().unwrap();
    assert_eq!(dispatch.dims(), [3, 11, 7]);
    assert_eq!(combine.dims(), [3, 11, 7]);
    assert_close("dispatch", &dispatch, &x.softmax(1).unwrap(), 1e-6, 1e-7).unwrap();
    assert_close("combine", &combine, &x.softmax(2).unwrap(), 1e-6, 1e-7).unwrap();
    let wrong = randn(&[4, 5], 12).soft_route().unwrap_err().to_string();
    assert!(
        wrong.contains("[batch, tokens, slots]") && wrong.contains("[4, 5]"),
        "{wrong}"
    );
}

#[test]
fn soft_route_gradients_agree_with_finite_differences() {
    let opts = GradcheckOptions {
        eps: 1e-2,
        rtol: 1e-2,
        atol: 1e-3,
    };
    let x = randn(&[2, 5, 4], 13).mul_scalar(2.0).unwrap();
    gradcheck(
        "soft_route both",
        std::slice::from_ref(&x),
        |t| stacked_routes(&t[0]),
        opts,
    )
    .unwrap();
    // Only one output in the loss: the other half of the gradient is zero.
    gradcheck(
        "soft_route dispatch",
        std::slice::from_ref(&x),
        |t| Ok(t[0].soft_route()?.0),
        opts,
    )
    .unwrap();
    gradcheck(
        "soft_route combine",
        std::slice::from_ref(&x),
        |t| Ok(t[0].soft_route()?.1),
        opts,
    )
    .unwrap();
    // Both outputs used downstream (as Soft-MoE does): the gradients add.
    gradcheck(
        "soft_route product",
        &[x],
        |t| {
            let (dispatch, combine) = t[0].soft_route()?;
            dispatch.mul(&combine)
        },
        opts,
    )
    .unwrap();
}

#[test]
fn matmul_t_matches_pytorch_and_finite_differences() {
    let fx = fixtures();
    for case in ["matmul_t_batched", "matmul_t_2d"] {
        fx.check_case(
            case,
            &["input", "rhs"],
            |t| t[0].matmul_t(&t[1]),
            1e-5,
            1e-6,
        )
        .unwrap();
    }
    let opts = GradcheckOptions::default();
    let (a, b) = (randn(&[2, 3, 4], 14), randn(&[2, 5, 4], 15));
    gradcheck(
        "matmul_t batched",
        &[a.clone(), b],
        |t| t[0].matmul_t(&t[1]),
        opts,
    )
    .unwrap();
    let shared = randn(&[5, 4], 16);
    gradcheck(
        "matmul_t shared",
        &[a.clone(), shared.clone()],
        |t| t[0].matmul_t(&t[1]),
        opts,
    )
    .unwrap();
    // The shared rhs equals matmul with its explicit transpose.
    let by_transpose = a.matmul(&shared.transpose(0, 1).unwrap()).unwrap();
    assert_close(
        "matmul_t shared",
        &a.matmul_t(&shared).unwrap(),
        &by_transpose,
        1e-6,
        1e-6,
    )
    .unwrap();
    let wrong = a.matmul_t(&randn(&[3, 5, 4], 17)).unwrap_err().to_string();
    assert!(
        wrong.contains("[2, 3, 4]") && wrong.contains("[3, 5, 4]"),
        "{wrong}"
    );
    let wrong = a.matmul_t(&randn(&[5, 3], 17)).unwrap_err().to_string();
    assert!(wrong.contains("matmul_t"), "{wrong}");
}

#[test]
fn l2_normalize_matches_pytorch() {
    let fx = fixtures();
    // `l2_normalize_last` has an all-zero vector: divided by eps, gradient g / eps (1e12·g).
    fx.check_case(
        "l2_normalize_last",
        &["input"],
        |t| t[0].l2_normalize(-1, 1e-12),
        1e-5,
        1e-6,
    )
    .unwrap();
    fx.check_case(
        "l2_normalize_axis1",
        &["input"],
        |t| t[0].l2_normalize(1, 1e-12),
        1e-5,
        1e-6,
    )
    .unwrap();
    // Below eps the divisor is eps: [3e-3, 4e-3] has norm 5e-3 < 1e-2.
    let small = Tensor::from_vec(vec![3e-3, 4e-3], [1, 2]).unwrap();
    let expected = Tensor::from_vec(vec![0.3, 0.4], [1, 2]).unwrap();
    assert_close(
        "below eps",
        &small.l2_normalize(1, 1e-2).unwrap(),
        &expected,
        1e-6,
        1e-7,
    )
    .unwrap();
    let opts = GradcheckOptions {
        eps: 1e-3,
        rtol: 1e-2,
        atol: 1e-3,
    };
    gradcheck(
        "l2_normalize",
        &[randn(&[3, 4], 18)],
        |t| t[0].l2_normalize(-1, 1e-12),
        opts,
    )
    .unwrap();
}

/// The emulated CUDA device (the real kernels and launchers run on the CPU), or `None` after
/// printing why the test is skipped (no host C++ compiler; `MOESEG_REQUIRE_EMU` makes that a
/// failure, as in tests/cuda_emu.rs).
fn emulated_device_or_skip(test: &str) -> Option<moeseg::Device> {
    match moeseg::Device::select("cuda-emu:0") {
        Ok((device, _)) => Some(device),
        Err(e) => {
            assert!(
                std::env::var_os("MOESEG_REQUIRE_EMU").is_none(),
                "{test}: MOESEG_REQUIRE_EMU is set but the emulated device cannot run: {e}"
            );
            println!("skipped: {test}: no emulated CUDA device ({e})");
            None
        }
    }
}

/// A transformer-and-Soft-MoE-shaped chain of the new ops, to a scalar loss.
fn chain(x: &Tensor, w: &Tensor, b: &Tensor, keys: &Tensor) -> moeseg::Result<Tensor> {
    let h = x.layer_norm(Some(w), Some(b), 1e-6)?.gelu()?;
    let logits = h.l2_normalize(-1, 1e-12)?.matmul_t(keys)?;
    let (dispatch, combine) = logits.soft_route()?;
    let mixed = dispatch.mul(&combine.gelu_tanh()?)?;
    mixed.mul(&logits)?.sum_all()
}

#[test]
fn the_ops_on_the_emulated_cuda_device_match_the_cpu() {
    let Some(device) = emulated_device_or_skip("the_ops_on_the_emulated_cuda_device_match_the_cpu")
    else {
        return;
    };
    let inputs = [
        randn(&[2, 300, 20], 20),
        randn(&[20], 21),
        randn(&[20], 22),
        randn(&[2, 9, 20], 23),
    ];
    let run = |on: &moeseg::Device| -> (Vec<f32>, Vec<Vec<f32>>) {
        let leaves: Vec<Tensor> = inputs
            .iter()
            .map(|t| t.to_device(on).unwrap().with_requires_grad(true))
            .collect();
        let loss = chain(&leaves[0], &leaves[1], &leaves[2], &leaves[3]).unwrap();
        loss.backward().unwrap();
        let grads = leaves.iter().map(|t| values(&t.grad().unwrap())).collect();
        (values(&loss), grads)
    };
    let (cpu_loss, cpu_grads) = run(&moeseg::Device::Cpu);
    let (emu_loss, emu_grads) = run(&device);
    let close = |what: &str, a: &[f32], e: &[f32]| {
        let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), [v.len()]).unwrap();
        assert_close(what, &t(a), &t(e), 1e-4, 1e-5).unwrap();
    };
    close("loss", &emu_loss, &cpu_loss);
    for (name, (emu, cpu)) in ["x", "weight", "bias", "keys"]
        .iter()
        .zip(emu_grads.iter().zip(&cpu_grads))
    {
        close(&format!("grad {name}"), emu, cpu);
    }
}
