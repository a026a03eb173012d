//! Dropout and dropout2d: determinism, rate, scale, gradient and channel structure.

use super::{assert_error_mentions, randn, ToHost};
use moeseg::tensor::manual_seed;
use moeseg::Rng;

#[test]
fn same_seed_gives_the_same_mask_and_the_default_generator_follows_manual_seed() {
    let x = randn(&[64, 33], 51);
    let a = x.dropout_with_rng(0.4, true, &mut Rng::new(9)).unwrap();
    let b = x.dropout_with_rng(0.4, true, &mut Rng::new(9)).unwrap();
    let c = x.dropout_with_rng(0.4, true, &mut Rng::new(10)).unwrap();
    assert_eq!(a.to_host(), b.to_host());
    assert_ne!(a.to_host(), c.to_host());
    // The process-wide generator is only touched by this test in this binary.
    let image = x.reshape(&[2, 32, 3, 11]).unwrap();
    let draw_both = || {
        let elementwise = x.dropout(0.4, true).unwrap().to_host();
        let channels = image.dropout2d(0.5, true).unwrap().to_host();
        (elementwise, channels)
    };
    manual_seed(123);
    let first = draw_both();
    manual_seed(123);
    assert_eq!(draw_both(), first);
    manual_seed(124);
    assert_ne!(draw_both().0, first.0);
}

#[test]
fn drop_rate_is_close_to_p_and_kept_values_are_scaled_exactly() {
    let x = randn(&[200, 500], 52);
    for p in [0.1f32, 0.5, 0.8] {
        let y = x.dropout_with_rng(p, true, &mut Rng::new(3)).unwrap();
        let scale = 1.0 / (1.0 - p);
        let (xs, ys) = (x.to_host(), y.to_host());
        let dropped = ys.iter().filter(|&&v| v == 0.0).count() as f32 / ys.len() as f32;
        assert!((dropped - p).abs() < 0.01, "p {p}: dropped {dropped}");
        for (&x, &y) in xs.iter().zip(&ys) {
            assert!(y == 0.0 || y == x * scale, "p {p}: {x} became {y}");
        }
    }
}

#[test]
fn gradient_is_mask_times_scale() {
    let x = randn(&[7, 9, 5], 53).with_requires_grad(true);
    let p = 0.3f32;
    let y = x.dropout_with_rng(p, true, &mut Rng::new(4)).unwrap();
    let upstream = randn(&[7, 9, 5], 54);
    y.mul(&upstream)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grad = x.grad().unwrap().to_host();
    let scale = 1.0 / (1.0 - p);
    for ((&g, &y), &u) in grad.iter().zip(&y.to_host()).zip(&upstream.to_host()) {
        let expected = if y == 0.0 { 0.0 } else { u * scale };
        assert_eq!(g, expected);
    }
}

#[test]
fn dropout2d_zeroes_whole_channels() {
    let x = randn(&[6, 10, 4, 3], 55)
        .abs()
        .unwrap()
        .add_scalar(0.5)
        .unwrap();
    let p = 0.5f32;
    let y = x.dropout2d_with_rng(p, true, &mut Rng::new(5)).unwrap();
    let (xs, ys) = (x.to_host(), y.to_host());
    let mut dropped = 0;
    for (plane_x, plane_y) in xs.chunks(12).zip(ys.chunks(12)) {
        if plane_y.iter().all(|&v| v == 0.0) {
            dropped += 1;
        } else {
            for (&x, &y) in plane_x.iter().zip(plane_y) {
                assert_eq!(y, x * 2.0);
            }
        }
    }
    assert!(
        (10..=50).contains(&dropped),
        "{dropped} of 60 planes dropped"
    );
}

#[test]
fn edge_probabilities_and_evaluation() {
    let x = randn(&[4, 5], 56);
    let mut rng = Rng::new(6);
    assert_eq!(
        x.dropout_with_rng(0.0, true, &mut rng).unwrap().to_host(),
        x.to_host()
    );
    assert!(x
        .dropout_with_rng(1.0, true, &mut rng)
        .unwrap()
        .to_host()
        .iter()
        .all(|&v| v == 0.0));
    assert_eq!(
        x.dropout_with_rng(0.7, false, &mut rng).unwrap().to_host(),
        x.to_host()
    );
    let image = randn(&[2, 3, 2, 2], 57);
    assert_eq!(
        image
            .dropout2d_with_rng(0.7, false, &mut rng)
            .unwrap()
            .to_host(),
        image.to_host()
    );
}

#[test]
fn dropout_rejects_bad_arguments() {
    let x = randn(&[4, 5], 58);
    let mut rng = Rng::new(7);
    assert_error_mentions(
        x.dropout_with_rng(1.5, true, &mut rng),
        &["dropout", "1.5", "[4, 5]"],
    );
    assert_error_mentions(
        x.dropout_with_rng(-0.1, true, &mut rng),
        &["dropout", "-0.1"],
    );
    assert_error_mentions(
        x.dropout2d_with_rng(0.5, true, &mut rng),
        &["dropout2d", "[4, 5]"],
    );
}
