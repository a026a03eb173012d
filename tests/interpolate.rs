//! Resizing (`F.interpolate`): PyTorch fixtures, finite differences and error cases.

use moeseg::ops::interpolate::{InterpolateMode, Resize};
use moeseg::testing::{gradcheck, Fixtures, GradcheckOptions};
use moeseg::{Rng, Tensor};

const RTOL: f32 = 1e-5;
const ATOL: f32 = 1e-6;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape.to_vec(), 0.0, 1.0, &mut Rng::new(seed)).unwrap()
}

/// Every resize the fixtures cover, by case-name suffix (shared by both align_corners modes).
fn bilinear_resizes() -> Vec<(&'static str, Resize)> {
    vec![
        ("up2", Resize::Size([10, 14])),
        ("down", Resize::Size([4, 5])),
        ("odd", Resize::Size([11, 13])),
        ("to_1", Resize::Size([1, 5])),
        ("to_1x1", Resize::Size([1, 1])),
        ("scale2", Resize::Scale([2.0; 2])),
        ("scale0_5", Resize::Scale([0.5; 2])),
        ("scale1_7", Resize::Scale([1.7; 2])),
        ("scale1_1", Resize::Scale([1.1; 2])),
        ("scale1_7x0_5", Resize::Scale([1.7, 0.5])),
    ]
}

fn nearest_resizes() -> Vec<(&'static str, Resize)> {
    vec![
        ("nearest_size", Resize::Size([11, 4])),
        ("nearest_double", Resize::Size([10, 14])),
        ("nearest_down", Resize::Size([3, 3])),
        ("nearest_scale2", Resize::Scale([2.0; 2])),
        ("nearest_scale0_5", Resize::Scale([0.5; 2])),
        ("nearest_scale1_7", Resize::Scale([1.7; 2])),
        ("nearest_scale1_1", Resize::Scale([1.1; 2])),
    ]
}

#[test]
fn bilinear_matches_pytorch() {
    let fx = Fixtures::load("interpolate").unwrap();
    for align_corners in [false, true] {
        let tag = if align_corners { "ac" } else { "noac" };
        let mode = InterpolateMode::Bilinear { align_corners };
        for (suffix, resize) in bilinear_resizes() {
            fx.check_case(
                &format!("bilinear_{tag}_{suffix}"),
                &["input"],
                |t| t[0].interpolate(resize, mode),
                RTOL,
                ATOL,
            )
            .unwrap();
        }
    }
}

#[test]
fn nearest_matches_pytorch() {
    let fx = Fixtures::load("interpolate").unwrap();
    for (case, resize) in nearest_resizes() {
        fx.check_case(
            case,
            &["input"],
            |t| t[0].interpolate(resize, InterpolateMode::Nearest),
            RTOL,
            ATOL,
        )
        .unwrap();
    }
}

#[test]
fn finite_differences_agree_with_autograd() {
    let opts = GradcheckOptions::default();
    let x = randn(&[2, 1, 5, 7], 1);
    for align_corners in [false, true] {
        let mode = InterpolateMode::Bilinear { align_corners };
        for (suffix, resize) in bilinear_resizes() {
            gradcheck(
                suffix,
                std::slice::from_ref(&x),
                |t| t[0].interpolate(resize, mode),
                opts,
            )
            .unwrap();
        }
    }
    for (case, resize) in nearest_resizes() {
        gradcheck(
            case,
            std::slice::from_ref(&x),
            |t| t[0].interpolate(resize, InterpolateMode::Nearest),
            opts,
        )
        .unwrap();
    }
}

#[test]
fn bad_arguments_are_errors_naming_op_and_shapes() {
    let x = randn(&[1, 2, 5, 7], 2);
    let bilinear = InterpolateMode::Bilinear {
        align_corners: false,
    };
    let cases = [
        (
            randn(&[2, 5, 7], 3).interpolate(Resize::Size([4, 4]), bilinear),
            vec!["[2, 5, 7]"],
        ),
        (
            x.interpolate(Resize::Size([0, 4]), bilinear),
            vec!["[0, 4]", "[1, 2, 5, 7]"],
        ),
        (
            x.interpolate(Resize::Scale([-1.0, 2.0]), InterpolateMode::Nearest),
            vec!["-1"],
        ),
        (
            x.interpolate(Resize::Scale([0.1, 2.0]), InterpolateMode::Nearest),
            vec!["0.1", "[1, 2, 5, 7]"],
        ),
        (
            x.interpolate(Resize::Scale([f64::NAN, 2.0]), bilinear),
            vec!["NaN"],
        ),
    ];
    for (result, needles) in cases {
        let message = result.unwrap_err().to_string();
        assert!(message.starts_with("interpolate"), "{message}");
        for needle in needles {
            assert!(message.contains(needle), "{message} lacks {needle}");
        }
    }
}
