//! Convolutions: PyTorch fixtures, finite differences and error cases.

use moeseg::ops::conv::{Conv2dParams, ConvTranspose2dParams};
use moeseg::testing::{gradcheck, Fixtures, GradcheckOptions};
use moeseg::{Rng, Tensor};

const RTOL: f32 = 1e-4;
const ATOL: f32 = 1e-5;

fn fixtures() -> Fixtures {
    Fixtures::load("conv").unwrap()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape.to_vec(), 0.0, 1.0, &mut Rng::new(seed)).unwrap()
}

/// Checks `case` of the fixture file with `conv(input, weight, bias)`; the bias input is
/// used when the case has one.
fn check(
    fx: &Fixtures,
    case: &str,
    conv: impl Fn(&Tensor, &Tensor, Option<&Tensor>) -> moeseg::Result<Tensor>,
) {
    let with_bias = fx.has(&format!("{case}.bias"));
    let inputs: &[&str] = if with_bias {
        &["input", "weight", "bias"]
    } else {
        &["input", "weight"]
    };
    fx.check_case(case, inputs, |t| conv(&t[0], &t[1], t.get(2)), RTOL, ATOL)
        .unwrap();
}

#[test]
fn conv2d_matches_pytorch() {
    let fx = fixtures();
    let conv = |params: Conv2dParams| {
        move |x: &Tensor, w: &Tensor, b: Option<&Tensor>| x.conv2d(w, b, params)
    };
    check(&fx, "conv_stride2", conv(Conv2dParams::new(2, 1, 1, 1)));
    let asymmetric = Conv2dParams {
        padding: [0, 2, 1, 3],
        ..Conv2dParams::default()
    };
    check(&fx, "conv_asymmetric_padding", conv(asymmetric));
    check(&fx, "conv_dilation2", conv(Conv2dParams::new(1, 2, 2, 1)));
    check(&fx, "conv_groups2", conv(Conv2dParams::new(1, 1, 1, 2)));
    check(&fx, "conv_depthwise", conv(Conv2dParams::new(1, 1, 1, 3)));
    check(
        &fx,
        "conv_depthwise_stride2_dilation2",
        conv(Conv2dParams::new(2, 2, 2, 3)),
    );
    check(&fx, "conv_1x1", conv(Conv2dParams::default()));
    check(&fx, "conv_1x1_nobias", conv(Conv2dParams::default()));
    let rect = Conv2dParams {
        stride: [2, 1],
        padding: [2, 2, 1, 1],
        ..Conv2dParams::default()
    };
    check(&fx, "conv_rect_kernel", conv(rect));
}

#[test]
fn conv_transpose2d_matches_pytorch() {
    let fx = fixtures();
    let convt = |params: ConvTranspose2dParams, size: Option<[usize; 2]>| {
        move |x: &Tensor, w: &Tensor, b: Option<&Tensor>| x.conv_transpose2d(w, b, params, size)
    };
    check(
        &fx,
        "convt_stride2_output_padding",
        convt(ConvTranspose2dParams::new(2, 1, 1, 1, 1), None),
    );
    check(
        &fx,
        "convt_dilation2",
        convt(ConvTranspose2dParams::new(1, 1, 0, 2, 1), None),
    );
    check(
        &fx,
        "convt_output_padding_dilation",
        convt(ConvTranspose2dParams::new(1, 0, 1, 2, 1), None),
    );
    check(
        &fx,
        "convt_groups2",
        convt(ConvTranspose2dParams::new(2, 0, 0, 1, 2), None),
    );
    check(
        &fx,
        "convt_depthwise",
        convt(ConvTranspose2dParams::new(2, 1, 0, 1, 3), None),
    );
    check(
        &fx,
        "convt_output_size",
        convt(ConvTranspose2dParams::new(3, 1, 0, 1, 1), Some([11, 14])),
    );
}

/// Conv is linear in each argument, so central differences are exact up to rounding.
fn opts() -> GradcheckOptions {
    GradcheckOptions {
        eps: 1e-2,
        rtol: 1e-3,
        atol: 1e-3,
    }
}

#[test]
fn conv2d_gradients_agree_with_finite_differences() {
    let cases: [(&str, [usize; 4], [usize; 4], Conv2dParams); 7] = [
        (
            "3x3 pad 1",
            [2, 2, 5, 4],
            [3, 2, 3, 3],
            Conv2dParams::new(1, 1, 1, 1),
        ),
        (
            "stride 2",
            [1, 2, 5, 6],
            [2, 2, 3, 3],
            Conv2dParams::new(2, 1, 1, 1),
        ),
        (
            "asymmetric padding",
            [1, 2, 4, 5],
            [2, 2, 2, 3],
            Conv2dParams {
                padding: [0, 2, 1, 3],
                ..Conv2dParams::default()
            },
        ),
        (
            "dilation 2",
            [1, 2, 5, 5],
            [2, 2, 3, 3],
            Conv2dParams::new(1, 2, 2, 1),
        ),
        (
            "groups 2",
            [1, 4, 4, 5],
            [4, 2, 3, 3],
            Conv2dParams::new(1, 1, 1, 2),
        ),
        (
            "depthwise",
            [2, 3, 5, 4],
            [3, 1, 3, 3],
            Conv2dParams::new(2, 1, 1, 3),
        ),
        ("1x1", [2, 3, 3, 5], [2, 3, 1, 1], Conv2dParams::default()),
    ];
    for (i, (name, x_shape, w_shape, params)) in cases.into_iter().enumerate() {
        let seed = 10 * i as u64;
        let inputs = [
            randn(&x_shape, seed),
            randn(&w_shape, seed + 1),
            randn(&[w_shape[0]], seed + 2),
        ];
        gradcheck(
            name,
            &inputs,
            |t| t[0].conv2d(&t[1], Some(&t[2]), params),
            opts(),
        )
        .unwrap();
    }
}

/// Name, input shape, weight shape, parameters, explicit output size.
type TransposeCase = (
    &'static str,
    [usize; 4],
    [usize; 4],
    ConvTranspose2dParams,
    Option<[usize; 2]>,
);

#[test]
fn conv_transpose2d_gradients_agree_with_finite_differences() {
    let cases: [TransposeCase; 5] = [
        (
            "stride 2 output_padding 1",
            [1, 2, 3, 4],
            [2, 2, 3, 3],
            ConvTranspose2dParams::new(2, 1, 1, 1, 1),
            None,
        ),
        (
            "dilation 2 output_padding 1",
            [1, 2, 3, 3],
            [2, 1, 3, 3],
            ConvTranspose2dParams::new(1, 0, 1, 2, 1),
            None,
        ),
        (
            "groups 2",
            [2, 4, 3, 3],
            [4, 1, 2, 3],
            ConvTranspose2dParams::new(2, 0, 0, 1, 2),
            None,
        ),
        (
            "depthwise",
            [1, 3, 3, 4],
            [3, 1, 3, 3],
            ConvTranspose2dParams::new(2, 1, 0, 1, 3),
            None,
        ),
        (
            "output_size",
            [1, 2, 3, 3],
            [2, 2, 3, 3],
            ConvTranspose2dParams::new(3, 1, 0, 1, 1),
            Some([9, 8]),
        ),
    ];
    for (i, (name, x_shape, w_shape, params, size)) in cases.into_iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let inputs = [
            randn(&x_shape, seed),
            randn(&w_shape, seed + 1),
            randn(&[w_shape[1] * params.groups], seed + 2),
        ];
        gradcheck(
            name,
            &inputs,
            |t| t[0].conv_transpose2d(&t[1], Some(&t[2]), params, size),
            opts(),
        )
        .unwrap();
    }
}

/// The error of `result`, checked to name the op and contain each of `needles`.
fn expect_error(result: moeseg::Result<Tensor>, op: &str, needles: &[&str]) {
    let message = result.expect_err("expected an error").to_string();
    assert!(message.starts_with(op), "{message}");
    for needle in needles {
        assert!(
            message.contains(needle),
            "`{needle}` missing from: {message}"
        );
    }
}

#[test]
fn conv2d_rejects_bad_arguments() {
    let x = randn(&[2, 4, 5, 5], 1);
    let w = randn(&[6, 4, 3, 3], 2);
    let p = Conv2dParams::default();
    let op = "conv2d";
    expect_error(
        randn(&[4, 5, 5], 3).conv2d(&w, None, p),
        op,
        &["rank 4", "[4, 5, 5]"],
    );
    expect_error(
        x.conv2d(&randn(&[6, 4, 3], 3), None, p),
        op,
        &["weight", "[6, 4, 3]"],
    );
    expect_error(
        x.conv2d(&randn(&[6, 3, 3, 3], 3), None, p),
        op,
        &["[6, 3, 3, 3]", "[2, 4, 5, 5]"],
    );
    expect_error(
        x.conv2d(&w, None, Conv2dParams::new(1, 0, 1, 3)),
        op,
        &["[2, 4, 5, 5]", "groups 3"],
    );
    expect_error(
        x.conv2d(
            &randn(&[5, 2, 3, 3], 3),
            None,
            Conv2dParams::new(1, 0, 1, 2),
        ),
        op,
        &["[5, 2, 3, 3]", "groups 2"],
    );
    expect_error(
        x.conv2d(&randn(&[6, 4, 7, 3], 3), None, p),
        op,
        &["[6, 4, 7, 3]", "[2, 4, 5, 5]", "smaller than"],
    );
    expect_error(
        x.conv2d(&w, None, Conv2dParams::new(1, 1, 4, 1)),
        op,
        &["dilated kernel"],
    );
    expect_error(
        x.conv2d(&w, None, Conv2dParams::new(0, 0, 1, 1)),
        op,
        &["stride"],
    );
    expect_error(
        x.conv2d(&w, Some(&randn(&[4], 3)), p),
        op,
        &["bias", "[6]", "[4]"],
    );
}

#[test]
fn conv_transpose2d_rejects_bad_arguments() {
    let x = randn(&[1, 4, 5, 5], 1);
    let w = randn(&[4, 3, 3, 3], 2);
    let p = ConvTranspose2dParams::new(2, 1, 1, 1, 1);
    let op = "conv_transpose2d";
    expect_error(
        randn(&[1, 4, 5], 3).conv_transpose2d(&w, None, p, None),
        op,
        &["rank 4"],
    );
    expect_error(
        x.conv_transpose2d(&randn(&[3, 3, 3, 3], 3), None, p, None),
        op,
        &["[3, 3, 3, 3]", "[1, 4, 5, 5]"],
    );
    expect_error(
        x.conv_transpose2d(&w, None, ConvTranspose2dParams::new(1, 0, 0, 1, 3), None),
        op,
        &["groups 3"],
    );
    expect_error(
        x.conv_transpose2d(&w, None, ConvTranspose2dParams::new(2, 1, 2, 1, 1), None),
        op,
        &["output_padding", "stride", "dilation"],
    );
    expect_error(
        x.conv_transpose2d(&w, None, ConvTranspose2dParams::new(1, 4, 0, 1, 1), None),
        op,
        &["empty output", "[1, 4, 5, 5]"],
    );
    // Sizes reachable with stride 2: 9 and 10.
    expect_error(
        x.conv_transpose2d(&w, None, p, Some([11, 9])),
        op,
        &["output_size", "9..=10"],
    );
    expect_error(
        x.conv_transpose2d(&w, Some(&randn(&[4], 3)), p, None),
        op,
        &["bias", "[3]"],
    );
    let out = x.conv_transpose2d(&w, None, p, Some([10, 9])).unwrap();
    assert_eq!(out.dims(), &[1, 3, 10, 9]);
}

#[test]
fn empty_batches_and_images_are_handled() {
    let w = randn(&[3, 2, 3, 3], 1).with_requires_grad(true);
    let x = randn(&[0, 2, 5, 5], 2).with_requires_grad(true);
    let out = x.conv2d(&w, None, Conv2dParams::new(1, 1, 1, 1)).unwrap();
    assert_eq!(out.dims(), &[0, 3, 5, 5]);
    out.sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().dims(), &[0, 2, 5, 5]);
    assert!(w
        .grad()
        .unwrap()
        .try_to_vec()
        .unwrap()
        .iter()
        .all(|&v| v == 0.0));
    // An image with no rows, padded to 2 rows: only the bias remains.
    let bias = Tensor::from_vec(vec![0.5, -1.0, 2.0], [3]).unwrap();
    let empty = randn(&[1, 2, 0, 4], 3);
    let out = empty
        .conv2d(
            &randn(&[3, 2, 1, 3], 4),
            Some(&bias),
            Conv2dParams::new(1, 1, 1, 1),
        )
        .unwrap();
    assert_eq!(out.dims(), &[1, 3, 2, 4]);
    let expected: Vec<f32> = [0.5f32, -1.0, 2.0].iter().flat_map(|&b| [b; 8]).collect();
    assert_eq!(out.try_to_vec().unwrap(), expected);
}
