//! Pooling: PyTorch fixtures, finite differences and error cases.

use moeseg::ops::pool::{AvgPool2dParams, MaxPool2dParams, MaxUnpool2dParams};
use moeseg::testing::{assert_close, gradcheck, Fixtures, GradcheckOptions};
use moeseg::{Rng, Tensor};

const RTOL: f32 = 1e-5;
const ATOL: f32 = 1e-6;

fn fixtures() -> Fixtures {
    Fixtures::load("pool").unwrap()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape.to_vec(), 0.0, 1.0, &mut Rng::new(seed)).unwrap()
}

/// Distinct values at least 0.1 apart in a scrambled order, so no ±eps step changes a maximum.
fn spread(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| ((i * 7919) % n) as f32 * 0.1 - 1.0)
        .collect();
    Tensor::from_vec(data, shape.to_vec()).unwrap()
}

fn max_params(kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> MaxPool2dParams {
    MaxPool2dParams {
        kernel,
        stride,
        padding,
        ..MaxPool2dParams::new(1)
    }
}

fn max_cases() -> Vec<(&'static str, MaxPool2dParams)> {
    vec![
        ("max_k3s2p1", MaxPool2dParams::new(3).stride(2).padding(1)),
        ("max_ceil_7x9", MaxPool2dParams::new(2).ceil_mode(true)),
        (
            "max_ceil_k3s2_8x8",
            MaxPool2dParams::new(3).stride(2).ceil_mode(true),
        ),
        (
            "max_ceil_pad_last_window",
            MaxPool2dParams::new(2).padding(1).ceil_mode(true),
        ),
        ("max_k3s1", MaxPool2dParams::new(3).stride(1)),
        ("max_rect", max_params([3, 2], [2, 1], [1, 0])),
        (
            "max_dilation2",
            MaxPool2dParams::new(3).stride(1).padding(1).dilation(2),
        ),
        (
            "max_dilation2_s2_ceil",
            MaxPool2dParams::new(3)
                .stride(2)
                .padding(1)
                .dilation(2)
                .ceil_mode(true),
        ),
    ]
}

#[test]
fn max_pool_values_indices_and_gradients_match_pytorch() {
    let fx = fixtures();
    for (case, params) in max_cases() {
        fx.check_case(case, &["input"], |t| t[0].max_pool2d(params), RTOL, ATOL)
            .unwrap();
        let (_, indices) = fx
            .get(&format!("{case}.input"))
            .unwrap()
            .max_pool2d_with_indices(params)
            .unwrap();
        let expected = fx.get(&format!("{case}.indices")).unwrap();
        assert_close(&format!("{case}.indices"), &indices, &expected, 0.0, 0.0).unwrap();
    }
}

#[test]
fn max_unpool_matches_pytorch() {
    let fx = fixtures();
    let pool = MaxPool2dParams::new(2);
    fx.check_case(
        "unpool_roundtrip",
        &["input"],
        |t| {
            let (pooled, indices) = t[0].max_pool2d_with_indices(pool)?;
            pooled.max_unpool2d(&indices, pool.into(), None)
        },
        RTOL,
        ATOL,
    )
    .unwrap();
    fx.check_case(
        "unpool_output_size",
        &["input", "indices"],
        |t| t[0].max_unpool2d(&t[1], MaxUnpool2dParams::new(2), Some([7, 9])),
        RTOL,
        ATOL,
    )
    .unwrap();
    let k3s2p1 = MaxPool2dParams::new(3).stride(2).padding(1).into();
    fx.check_case(
        "unpool_k3s2p1",
        &["input", "indices"],
        |t| t[0].max_unpool2d(&t[1], k3s2p1, Some([9, 8])),
        RTOL,
        ATOL,
    )
    .unwrap();
}

fn avg_cases() -> Vec<(&'static str, AvgPool2dParams)> {
    let k3s2p1 = AvgPool2dParams::new(3).stride(2).padding(1);
    vec![
        ("avg_k3s2p1_include", k3s2p1),
        ("avg_k3s2p1_exclude", k3s2p1.count_include_pad(false)),
        ("avg_ceil_include", k3s2p1.ceil_mode(true)),
        (
            "avg_ceil_exclude",
            k3s2p1.ceil_mode(true).count_include_pad(false),
        ),
        ("avg_ceil_nopad", AvgPool2dParams::new(2).ceil_mode(true)),
        (
            "avg_divisor_override",
            k3s2p1.ceil_mode(true).divisor_override(5),
        ),
        (
            "avg_rect",
            AvgPool2dParams {
                kernel: [2, 3],
                stride: [1, 2],
                padding: [1, 1],
                ..AvgPool2dParams::new(1)
            },
        ),
    ]
}

#[test]
fn avg_pool_matches_pytorch() {
    let fx = fixtures();
    for (case, params) in avg_cases() {
        fx.check_case(case, &["input"], |t| t[0].avg_pool2d(params), RTOL, ATOL)
            .unwrap();
    }
}

#[test]
fn adaptive_avg_pool_matches_pytorch() {
    let fx = fixtures();
    let cases: [(&str, [usize; 2]); 7] = [
        ("adaptive_1x1_from_13x11", [1, 1]),
        ("adaptive_2x2_from_13x11", [2, 2]),
        ("adaptive_3x3_from_13x11", [3, 3]),
        ("adaptive_6x6_from_13x11", [6, 6]),
        ("adaptive_3x6_from_13x11", [3, 6]),
        ("adaptive_6x9_from_5x7", [6, 9]),
        ("adaptive_2x3_from_5x7", [2, 3]),
    ];
    for (case, size) in cases {
        fx.check_case(
            case,
            &["input"],
            |t| t[0].adaptive_avg_pool2d(size),
            RTOL,
            ATOL,
        )
        .unwrap();
    }
}

#[test]
fn finite_differences_agree_with_autograd() {
    let opts = GradcheckOptions::default();
    let x = spread(&[2, 2, 7, 9]);
    for (case, params) in max_cases() {
        gradcheck(
            case,
            std::slice::from_ref(&x),
            |t| t[0].max_pool2d(params),
            opts,
        )
        .unwrap();
    }
    let pool = MaxPool2dParams::new(2);
    let (pooled, indices) = spread(&[1, 2, 7, 9]).max_pool2d_with_indices(pool).unwrap();
    gradcheck(
        "max_unpool2d",
        &[pooled],
        |t| t[0].max_unpool2d(&indices, pool.into(), Some([7, 9])),
        opts,
    )
    .unwrap();
    let y = randn(&[2, 2, 7, 9], 3);
    for (case, params) in avg_cases() {
        gradcheck(
            case,
            std::slice::from_ref(&y),
            |t| t[0].avg_pool2d(params),
            opts,
        )
        .unwrap();
    }
    let small = randn(&[1, 2, 5, 7], 4);
    for size in [[1, 1], [2, 3], [3, 3], [6, 9]] {
        gradcheck(
            "adaptive_avg_pool2d",
            std::slice::from_ref(&small),
            |t| t[0].adaptive_avg_pool2d(size),
            opts,
        )
        .unwrap();
    }
}

/// The error message, which must name `op` and contain each of `needles`.
fn expect_error(result: moeseg::Result<Tensor>, op: &str, needles: &[&str]) {
    let message = match result {
        Ok(t) => panic!(
            "{op}: expected an error, got a tensor of shape {}",
            t.shape()
        ),
        Err(e) => e.to_string(),
    };
    assert!(message.contains(op), "{message}");
    for needle in needles {
        assert!(message.contains(needle), "{message} lacks {needle}");
    }
}

#[test]
fn bad_arguments_are_errors_naming_op_and_shapes() {
    let x = randn(&[1, 2, 5, 5], 5);
    let rank3 = randn(&[2, 5, 5], 6);
    let max = MaxPool2dParams::new(2);
    expect_error(rank3.max_pool2d(max), "max_pool2d", &["[2, 5, 5]"]);
    expect_error(
        x.max_pool2d(MaxPool2dParams::new(3).padding(2)),
        "max_pool2d",
        &["padding", "[3, 3]"],
    );
    expect_error(
        x.max_pool2d(MaxPool2dParams::new(2).stride(0)),
        "max_pool2d",
        &["stride"],
    );
    expect_error(
        x.max_pool2d(MaxPool2dParams::new(3).dilation(3)),
        "max_pool2d",
        &["[1, 2, 5, 5]", "too small"],
    );
    expect_error(
        rank3.avg_pool2d(AvgPool2dParams::new(2)),
        "avg_pool2d",
        &["[2, 5, 5]"],
    );
    expect_error(
        x.avg_pool2d(AvgPool2dParams::new(7)),
        "avg_pool2d",
        &["[1, 2, 5, 5]"],
    );
    expect_error(
        x.avg_pool2d(AvgPool2dParams::new(2).divisor_override(0)),
        "avg_pool2d",
        &["divisor_override"],
    );
    expect_error(
        x.adaptive_avg_pool2d([0, 2]),
        "adaptive_avg_pool2d",
        &["[0, 2]", "[1, 2, 5, 5]"],
    );
    expect_error(
        rank3.adaptive_avg_pool2d([2, 2]),
        "adaptive_avg_pool2d",
        &["[2, 5, 5]"],
    );

    let (pooled, indices) = x.max_pool2d_with_indices(max).unwrap();
    let unpool = MaxUnpool2dParams::new(2);
    expect_error(
        pooled.max_unpool2d(&randn(&[1, 2, 3, 2], 7), unpool, None),
        "max_unpool2d",
        &["[1, 2, 3, 2]", "[1, 2, 2, 2]"],
    );
    expect_error(
        pooled.max_unpool2d(&indices, unpool, Some([7, 5])),
        "max_unpool2d",
        &["[7, 5]", "[1, 2, 2, 2]"],
    );
    let far = Tensor::full([1, 2, 2, 2], 99.0, &x.device()).unwrap();
    expect_error(
        pooled.max_unpool2d(&far, unpool, None),
        "max_unpool2d",
        &["99", "16"],
    );
}

#[test]
fn ties_pick_the_first_maximum_and_nan_wins() {
    let x = Tensor::from_vec(
        vec![1.0, 1.0, 1.0, 1.0, 2.0, f32::NAN, 2.0, 0.0],
        [1, 2, 2, 2],
    )
    .unwrap();
    let (values, indices) = x.max_pool2d_with_indices(MaxPool2dParams::new(2)).unwrap();
    let values = values.try_to_vec().unwrap();
    assert_eq!(values[0], 1.0);
    assert!(values[1].is_nan());
    assert_eq!(indices.try_to_vec().unwrap(), vec![0.0, 1.0]);
}
