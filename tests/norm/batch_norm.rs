//! Batch normalisation.

use super::{assert_error_mentions, fixtures, randn, ToHost};
use moeseg::ops::norm::BatchNormArgs;
use moeseg::testing::{assert_close, gradcheck, Fixtures, GradcheckOptions};
use moeseg::Tensor;

/// A fresh copy of a fixture tensor (running statistics are updated in place).
fn fresh(fx: &Fixtures, key: &str) -> Tensor {
    let t = fx.get(key).unwrap();
    Tensor::from_vec(t.to_host(), t.shape().clone()).unwrap()
}

/// Runs a training-mode case and checks output, gradients and the updated running statistics.
fn check_training_case(fx: &Fixtures, case: &str, momentum: f32, affine: bool) {
    let running_mean = fresh(fx, &format!("{case}.running_mean"));
    let running_var = fresh(fx, &format!("{case}.running_var"));
    let inputs: &[&str] = if affine {
        &["input", "weight", "bias"]
    } else {
        &["input"]
    };
    fx.check_case(
        case,
        inputs,
        |t| {
            t[0].batch_norm2d(BatchNormArgs {
                running_mean: Some(&running_mean),
                running_var: Some(&running_var),
                weight: t.get(1),
                bias: t.get(2),
                training: true,
                momentum,
                eps: 1e-5,
            })
        },
        1e-4,
        1e-5,
    )
    .unwrap();
    for (name, tensor) in [("mean", &running_mean), ("var", &running_var)] {
        let key = format!("{case}.running_{name}_after");
        assert_close(&key, tensor, &fx.get(&key).unwrap(), 1e-5, 1e-6).unwrap();
    }
}

#[test]
fn training_matches_pytorch_including_running_stat_updates() {
    let fx = fixtures();
    check_training_case(&fx, "bn_train", 0.1, true);
    check_training_case(&fx, "bn_train_momentum03", 0.3, false);
    check_training_case(&fx, "bn_train_nc", 0.1, true);
}

#[test]
fn evaluation_matches_pytorch_and_leaves_running_stats_alone() {
    let fx = fixtures();
    let running_mean = fresh(&fx, "bn_eval.running_mean");
    let running_var = fresh(&fx, "bn_eval.running_var");
    fx.check_case(
        "bn_eval",
        &["input", "weight", "bias"],
        |t| {
            t[0].batch_norm2d(BatchNormArgs {
                running_mean: Some(&running_mean),
                running_var: Some(&running_var),
                weight: Some(&t[1]),
                bias: Some(&t[2]),
                training: false,
                ..Default::default()
            })
        },
        1e-4,
        1e-5,
    )
    .unwrap();
    let before = fx.get("bn_eval.running_mean").unwrap();
    assert_eq!(running_mean.to_host(), before.to_host());
}

#[test]
fn batch_norm_gradients_agree_with_finite_differences() {
    let opts = GradcheckOptions::default();
    let x = randn(&[3, 2, 2, 3], 41).mul_scalar(1.5).unwrap();
    let (weight, bias) = (randn(&[2], 42), randn(&[2], 43));
    gradcheck(
        "batch_norm2d train affine",
        &[x.clone(), weight.clone(), bias.clone()],
        |t| {
            t[0].batch_norm2d(BatchNormArgs {
                weight: Some(&t[1]),
                bias: Some(&t[2]),
                ..Default::default()
            })
        },
        opts,
    )
    .unwrap();
    gradcheck(
        "batch_norm2d train plain",
        std::slice::from_ref(&x),
        |t| t[0].batch_norm2d(BatchNormArgs::default()),
        opts,
    )
    .unwrap();
    gradcheck(
        "batch_norm2d train [N, C] weight only",
        &[randn(&[5, 3], 44), randn(&[3], 45)],
        |t| {
            t[0].batch_norm2d(BatchNormArgs {
                weight: Some(&t[1]),
                ..Default::default()
            })
        },
        opts,
    )
    .unwrap();
    let running_mean = randn(&[2], 46);
    let running_var = Tensor::from_vec(vec![0.7, 1.6], [2]).unwrap();
    gradcheck(
        "batch_norm2d eval",
        &[x, weight, bias],
        |t| {
            t[0].batch_norm2d(BatchNormArgs {
                running_mean: Some(&running_mean),
                running_var: Some(&running_var),
                weight: Some(&t[1]),
                bias: Some(&t[2]),
                training: false,
                ..Default::default()
            })
        },
        opts,
    )
    .unwrap();
}

#[test]
fn batch_norm_rejects_bad_shapes_and_arguments() {
    let x = randn(&[2, 3, 4, 4], 1);
    assert_error_mentions(
        randn(&[2, 3, 4], 2).batch_norm2d(BatchNormArgs::default()),
        &["batch_norm2d", "[2, 3, 4]"],
    );
    let wrong = randn(&[4], 3);
    assert_error_mentions(
        x.batch_norm2d(BatchNormArgs {
            weight: Some(&wrong),
            ..Default::default()
        }),
        &["batch_norm2d", "weight", "[3]", "[4]", "[2, 3, 4, 4]"],
    );
    assert_error_mentions(
        randn(&[1, 3, 1, 1], 4).batch_norm2d(BatchNormArgs::default()),
        &[
            "batch_norm2d",
            "more than 1 value per channel",
            "[1, 3, 1, 1]",
        ],
    );
    assert_error_mentions(
        x.batch_norm2d(BatchNormArgs {
            training: false,
            ..Default::default()
        }),
        &["batch_norm2d", "running_mean"],
    );
    let mean = randn(&[3], 5);
    assert_error_mentions(
        x.batch_norm2d(BatchNormArgs {
            running_mean: Some(&mean),
            ..Default::default()
        }),
        &["batch_norm2d", "together"],
    );
    assert_error_mentions(
        x.batch_norm2d(BatchNormArgs {
            momentum: 1.5,
            ..Default::default()
        }),
        &["batch_norm2d", "momentum"],
    );
}
