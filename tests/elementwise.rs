//! Elementwise ops and reductions: PyTorch fixtures, finite differences and error cases.
#![allow(clippy::cloned_ref_to_slice_refs)] // `&[x.clone()]` reads better in gradcheck calls

use moeseg::testing::{assert_close, gradcheck, Fixtures, GradcheckOptions};
use moeseg::{Rng, Tensor};

fn fixtures() -> Fixtures {
    Fixtures::load("elementwise").unwrap()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape.to_vec(), 0.0, 1.0, &mut Rng::new(seed)).unwrap()
}

#[test]
fn binary_ops_match_pytorch_with_broadcasting() {
    let fx = fixtures();
    let (r, a) = (1e-5, 1e-6);
    fx.check_case("add_broadcast", &["a", "b"], |t| t[0].add(&t[1]), r, a)
        .unwrap();
    fx.check_case("sub_broadcast", &["a", "b"], |t| t[0].sub(&t[1]), r, a)
        .unwrap();
    fx.check_case("mul_broadcast", &["a", "b"], |t| t[0].mul(&t[1]), r, a)
        .unwrap();
    fx.check_case("div_broadcast", &["a", "b"], |t| t[0].div(&t[1]), r, a)
        .unwrap();
}

#[test]
fn unary_ops_match_pytorch() {
    let fx = fixtures();
    let (r, a) = (1e-5, 1e-6);
    fx.check_case("exp", &["input"], |t| t[0].exp(), r, a)
        .unwrap();
    fx.check_case("log", &["input"], |t| t[0].log(), r, a)
        .unwrap();
    fx.check_case("sqrt", &["input"], |t| t[0].sqrt(), r, a)
        .unwrap();
    fx.check_case("pow", &["input"], |t| t[0].pow(3.0), r, a)
        .unwrap();
    fx.check_case("clamp", &["input"], |t| t[0].clamp(-0.5, 0.7), r, a)
        .unwrap();
    fx.check_case(
        "neg_scalar_ops",
        &["input"],
        |t| t[0].neg()?.mul_scalar(2.5)?.add_scalar(1.0),
        r,
        a,
    )
    .unwrap();
}

#[test]
fn reductions_match_pytorch() {
    let fx = fixtures();
    let (r, a) = (1e-5, 1e-5);
    fx.check_case("sum_axes", &["input"], |t| t[0].sum(&[1, 3], false), r, a)
        .unwrap();
    fx.check_case("sum_keepdim", &["input"], |t| t[0].sum(&[0, 2], true), r, a)
        .unwrap();
    fx.check_case("mean_all", &["input"], |t| t[0].mean_all(), r, a)
        .unwrap();
    fx.check_case("mean_axis", &["input"], |t| t[0].mean(&[-1], false), r, a)
        .unwrap();
    fx.check_case("max_axis", &["input"], |t| Ok(t[0].max(2, false)?.0), r, a)
        .unwrap();
    let argmax = fx
        .get("argmax_axis1.input")
        .unwrap()
        .argmax(1, false)
        .unwrap();
    assert_close(
        "argmax",
        &argmax,
        &fx.get("argmax_axis1.out").unwrap(),
        0.0,
        0.0,
    )
    .unwrap();
}

#[test]
fn finite_differences_agree_with_autograd() {
    let opts = GradcheckOptions::default();
    let a = randn(&[2, 3, 4], 1);
    let b = randn(&[3, 1], 2);
    gradcheck("add", &[a.clone(), b.clone()], |t| t[0].add(&t[1]), opts).unwrap();
    gradcheck("sub", &[a.clone(), b.clone()], |t| t[0].sub(&t[1]), opts).unwrap();
    gradcheck("mul", &[a.clone(), b.clone()], |t| t[0].mul(&t[1]), opts).unwrap();
    let positive = randn(&[3, 1], 3).abs().unwrap().add_scalar(0.5).unwrap();
    gradcheck(
        "div",
        &[a.clone(), positive.clone()],
        |t| t[0].div(&t[1]),
        opts,
    )
    .unwrap();
    gradcheck("log", &[positive.clone()], |t| t[0].log(), opts).unwrap();
    gradcheck("sqrt", &[positive.clone()], |t| t[0].sqrt(), opts).unwrap();
    gradcheck("exp", &[a.clone()], |t| t[0].exp(), opts).unwrap();
    gradcheck("pow", &[positive.clone()], |t| t[0].pow(2.5), opts).unwrap();
    gradcheck("sum", &[a.clone()], |t| t[0].sum(&[0, 2], false), opts).unwrap();
    gradcheck("mean", &[a.clone()], |t| t[0].mean(&[1], true), opts).unwrap();
    gradcheck("max", &[a.clone()], |t| Ok(t[0].max(-1, false)?.0), opts).unwrap();
    // Values at least 0.02 apart so no ±eps step crosses a tie.
    let spread =
        Tensor::from_vec((0..24).map(|i| i as f32 * 0.1 - 1.15).collect(), [2, 3, 4]).unwrap();
    let levels = Tensor::from_vec(vec![0.03, 0.51, -0.47], [3, 1]).unwrap();
    gradcheck(
        "maximum",
        &[spread.clone(), levels.clone()],
        |t| t[0].maximum(&t[1]),
        opts,
    )
    .unwrap();
    gradcheck("minimum", &[spread, levels], |t| t[0].minimum(&t[1]), opts).unwrap();
    gradcheck(
        "broadcast_to",
        &[b.clone()],
        |t| t[0].broadcast_to([2, 3, 5]),
        opts,
    )
    .unwrap();
    gradcheck(
        "reshape",
        &[a.clone()],
        |t| t[0].reshape(&[4, -1])?.exp(),
        opts,
    )
    .unwrap();
}

#[test]
fn autograd_accumulates_reused_tensors_and_frees_the_graph() {
    // y = x·x + x  ⇒  dy/dx = 2x + 1 (x used three times).
    let x = Tensor::from_vec(vec![1.0, -2.0, 3.0], [3])
        .unwrap()
        .with_requires_grad(true);
    let y = x.mul(&x).unwrap().add(&x).unwrap().sum_all().unwrap();
    y.backward().unwrap();
    assert_eq!(
        x.grad().unwrap().try_to_vec().unwrap(),
        vec![3.0, -3.0, 7.0]
    );
    // Saved values are freed: a second backward through the same graph is an error.
    let err = y.backward().unwrap_err().to_string();
    assert!(err.contains("second time"), "{err}");
    // A fresh graph accumulates into the existing gradient, as in PyTorch.
    x.mul_scalar(2.0)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(
        x.grad().unwrap().try_to_vec().unwrap(),
        vec![5.0, -1.0, 9.0]
    );
    x.clear_grad();
    assert!(x.grad().is_none());
}

#[test]
fn no_grad_and_detach_stop_recording() {
    let x = randn(&[4], 5).with_requires_grad(true);
    let y = moeseg::no_grad(|| x.exp().unwrap());
    assert!(!y.requires_grad());
    assert!(x
        .detach()
        .exp()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .is_err());
    let z = x.exp().unwrap();
    assert!(z.requires_grad() && !z.is_leaf());
    // Non-scalar roots are rejected with the shape in the message.
    let err = z.backward().unwrap_err().to_string();
    assert!(err.contains("[4]"), "{err}");
}

#[test]
fn deep_chains_do_not_overflow_the_stack() {
    let x = randn(&[2], 6).with_requires_grad(true);
    let mut y = x.clone();
    for _ in 0..20000 {
        y = y.add_scalar(1e-4).unwrap();
    }
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().try_to_vec().unwrap(), vec![1.0, 1.0]);
}

#[test]
fn bad_shapes_are_typed_errors_naming_op_and_shapes() {
    let a = randn(&[2, 3], 1);
    let b = randn(&[4], 2);
    let err = a.add(&b).unwrap_err().to_string();
    assert!(
        err.contains("add") && err.contains("[2, 3]") && err.contains("[4]"),
        "{err}"
    );
    let err = a.sum(&[2], false).unwrap_err().to_string();
    assert!(err.contains("sum") && err.contains("axis 2"), "{err}");
    let err = a.reshape(&[5, -1]).unwrap_err().to_string();
    assert!(err.contains("reshape"), "{err}");
    assert!(Tensor::from_vec(vec![1.0; 5], [2, 3]).is_err());
}
