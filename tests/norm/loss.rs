//! Fused cross-entropy.

use super::{assert_error_mentions, fixtures, randn, ToHost};
use moeseg::ops::loss::{CrossEntropyOptions, Reduction};
use moeseg::testing::{gradcheck, GradcheckOptions};
use moeseg::Tensor;

const REDUCTIONS: [(&str, Reduction); 3] = [
    ("mean", Reduction::Mean),
    ("sum", Reduction::Sum),
    ("none", Reduction::None),
];

#[test]
fn cross_entropy_matches_pytorch_for_every_reduction_with_and_without_weights() {
    let fx = fixtures();
    let (r, a) = (1e-4, 1e-5);
    for layout in ["2d", "4d", "4d_large"] {
        for (name, reduction) in REDUCTIONS {
            let plain = CrossEntropyOptions {
                reduction,
                ..Default::default()
            };
            fx.check_case(
                &format!("ce_{layout}_{name}"),
                &["input", "target"],
                |t| t[0].cross_entropy(&t[1], plain),
                r,
                a,
            )
            .unwrap();
            fx.check_case(
                &format!("ce_{layout}_weighted_{name}"),
                &["input", "target", "weight"],
                |t| {
                    let options = CrossEntropyOptions {
                        weight: Some(&t[2]),
                        reduction,
                        ..Default::default()
                    };
                    t[0].cross_entropy(&t[1], options)
                },
                r,
                a,
            )
            .unwrap();
        }
    }
    let pytorch_default = CrossEntropyOptions {
        ignore_index: -100,
        ..Default::default()
    };
    fx.check_case(
        "ce_4d_ignore_minus100",
        &["input", "target"],
        |t| t[0].cross_entropy(&t[1], pytorch_default),
        r,
        a,
    )
    .unwrap();
}

#[test]
fn cross_entropy_gradients_agree_with_finite_differences() {
    let opts = GradcheckOptions::default();
    let logits = randn(&[2, 4, 2, 3], 31);
    let target = Tensor::from_vec(
        vec![0., 3., 255., 1., 2., 2., 1., 255., 0., 3., 3., 1.],
        [2, 2, 3],
    )
    .unwrap();
    let weight = Tensor::from_vec(vec![0.5, 1.5, 1.0, 2.0], [4]).unwrap();
    for (name, reduction) in REDUCTIONS {
        for weight in [None, Some(&weight)] {
            let options = CrossEntropyOptions {
                weight,
                reduction,
                ..Default::default()
            };
            gradcheck(
                &format!("cross_entropy {name} weighted={}", weight.is_some()),
                std::slice::from_ref(&logits),
                |t| t[0].cross_entropy(&target, options),
                opts,
            )
            .unwrap();
        }
    }
    let logits2 = randn(&[5, 3], 32);
    let target2 = Tensor::from_vec(vec![2., 0., 1., 1., 255.], [5]).unwrap();
    gradcheck(
        "cross_entropy 2d",
        &[logits2],
        |t| t[0].cross_entropy(&target2, CrossEntropyOptions::default()),
        opts,
    )
    .unwrap();
}

#[test]
fn all_ignored_targets_give_nan_mean_and_zero_sum() {
    let logits = randn(&[2, 3, 2, 2], 33).with_requires_grad(true);
    let target = Tensor::full([2, 2, 2], 255.0, &logits.device()).unwrap();
    let mean = logits
        .cross_entropy(&target, CrossEntropyOptions::default())
        .unwrap();
    assert!(mean.item().unwrap().is_nan());
    let sum = logits
        .cross_entropy(
            &target,
            CrossEntropyOptions {
                reduction: Reduction::Sum,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(sum.item().unwrap(), 0.0);
    sum.backward().unwrap();
    assert!(logits.grad().unwrap().to_host().iter().all(|&g| g == 0.0));
}

#[test]
fn cross_entropy_rejects_bad_targets_and_shapes() {
    let logits = randn(&[2, 3, 2, 2], 34);
    let mut labels = vec![0.0; 8];
    labels[5] = 7.0;
    let out_of_range = Tensor::from_vec(labels.clone(), [2, 2, 2]).unwrap();
    let options = CrossEntropyOptions::default();
    assert_error_mentions(
        logits.cross_entropy(&out_of_range, options),
        &["cross_entropy", "target value 7", "[0, 3)", "255"],
    );
    labels[5] = 1.5;
    let fractional = Tensor::from_vec(labels, [2, 2, 2]).unwrap();
    assert_error_mentions(
        logits.cross_entropy(&fractional, options),
        &["cross_entropy", "1.5"],
    );
    let negative = Tensor::full([2, 2, 2], -1.0, &logits.device()).unwrap();
    assert_error_mentions(logits.cross_entropy(&negative, options), &["-1"]);
    assert_error_mentions(
        logits.cross_entropy(&randn(&[2, 2], 1), options),
        &["cross_entropy", "[2, 2, 2]", "[2, 3, 2, 2]", "[2, 2]"],
    );
    let target = Tensor::zeros([2, 2, 2], &logits.device()).unwrap();
    let bad_weight = randn(&[4], 2);
    assert_error_mentions(
        logits.cross_entropy(
            &target,
            CrossEntropyOptions {
                weight: Some(&bad_weight),
                ..options
            },
        ),
        &["cross_entropy", "[3]", "[4]"],
    );
    assert_error_mentions(
        randn(&[5], 3).cross_entropy(&target, options),
        &["cross_entropy", "[5]"],
    );
}

#[test]
fn wide_images_match_log_softmax_picked_at_the_target() {
    // 9·11 = 99 positions per image: more than one 64-column block.
    let logits = randn(&[2, 4, 9, 11], 35).mul_scalar(4.0).unwrap();
    let labels: Vec<f32> = (0..2 * 99)
        .map(|i| if i % 17 == 0 { 255.0 } else { (i % 4) as f32 })
        .collect();
    let target = Tensor::from_vec(labels.clone(), [2, 9, 11]).unwrap();
    let options = CrossEntropyOptions {
        reduction: Reduction::None,
        ..Default::default()
    };
    let losses = logits.cross_entropy(&target, options).unwrap().to_host();
    let log_probs = logits.log_softmax(1).unwrap().to_host();
    for (p, (&loss, &label)) in losses.iter().zip(&labels).enumerate() {
        let expected = if label == 255.0 {
            0.0
        } else {
            let (b, s) = (p / 99, p % 99);
            -log_probs[(b * 4 + label as usize) * 99 + s]
        };
        assert!(
            (loss - expected).abs() <= 1e-5 + 1e-5 * expected.abs(),
            "{p}: {loss} vs {expected}"
        );
    }
}
