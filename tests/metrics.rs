//! The confusion matrix against hand-computed values.

use moeseg::train::metrics::ConfusionMatrix;
use moeseg::Tensor;

/// 3 classes; (target, prediction) pairs:
/// target 0: predicted 0, 0, 1        → M[0] = [2, 1, 0]
/// target 1: predicted 1, 1           → M[1] = [0, 2, 0]
/// target 2: none
/// two pixels with target 255 (predicted 2 and 0): ignored.
/// Predictions of class 2 on counted pixels: none.
fn crafted() -> ConfusionMatrix {
    let mut m = ConfusionMatrix::new(3);
    let pred: [u8; 7] = [0, 0, 1, 1, 1, 2, 0];
    let target: [u8; 7] = [0, 0, 0, 1, 1, 255, 255];
    m.update(&pred, &target).unwrap();
    m
}

#[test]
fn iou_and_accuracies_by_hand() {
    let m = crafted();
    assert_eq!(m.counts(), &[2, 1, 0, 0, 2, 0, 0, 0, 0]);
    assert_eq!(m.total(), 5);
    // IoU_0 = tp / (row + col − tp) = 2 / (3 + 2 − 2) = 2/3
    // IoU_1 = 2 / (2 + 3 − 2) = 2/3
    // class 2: no ground truth, no prediction → None, left out of the mean.
    let iou = m.iou();
    assert!((iou[0].unwrap() - 2.0 / 3.0).abs() < 1e-12);
    assert!((iou[1].unwrap() - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(iou[2], None);
    assert!((m.miou() - 2.0 / 3.0).abs() < 1e-12);
    // pixel accuracy = (2 + 2) / 5 = 0.8; class accuracies 2/3 and 2/2 → mean 5/6.
    assert!((m.pixel_accuracy() - 0.8).abs() < 1e-12);
    assert!((m.mean_accuracy() - 5.0 / 6.0).abs() < 1e-12);
    // A wrong prediction of class 2 on a class-0 pixel makes class 2 count with IoU 0:
    // IoU_0 = 2 / (4 + 2 − 2) = 1/2, IoU_1 = 2/3, IoU_2 = 0 / (0 + 1 − 0) = 0,
    // mIoU = (1/2 + 2/3 + 0) / 3 = 7/18.
    let mut m2 = m.clone();
    m2.update(&[2usize], &[0]).unwrap();
    let iou = m2.iou();
    assert_eq!(iou[2], Some(0.0));
    assert!((iou[0].unwrap() - 0.5).abs() < 1e-12);
    assert!((m2.miou() - 7.0 / 18.0).abs() < 1e-12);
    let table = m2.summary_table(&["road", "sidewalk", "building"]);
    assert!(
        table.contains("sidewalk") && table.contains("66.67") && table.contains("mIoU 38.89%"),
        "{table}"
    );
    assert!(m.summary_table(&["a"]).contains("n/a"));
}

#[test]
fn update_errors_and_merge() {
    let mut m = ConfusionMatrix::new(3);
    assert!(m
        .update(&[0u8, 1], &[0])
        .unwrap_err()
        .to_string()
        .contains("2 predictions for 1 targets"));
    assert!(m.update(&[3u8], &[0]).is_err());
    assert!(m.update(&[0u8], &[7]).is_err());
    assert_eq!(m.total(), 0, "nothing added on error");
    // An out-of-range prediction on an ignored pixel is harmless.
    m.update(&[9u8], &[255]).unwrap();
    let mut a = crafted();
    a.merge(&crafted()).unwrap();
    assert_eq!(a.counts(), &[4, 2, 0, 0, 4, 0, 0, 0, 0]);
    assert!(a.merge(&ConfusionMatrix::new(4)).is_err());
    assert_eq!(ConfusionMatrix::new(3).miou(), 0.0);
}

#[test]
fn update_from_logits_argmax_with_ties_to_lower_index() {
    // B = 1, C = 3, H = 1, W = 4. Pixel logits (c0, c1, c2):
    // p0 (1, 5, 2) → 1; p1 (3, 3, 0) → tie → 0; p2 (0, 0, 9) → 2; p3 (2, 1, 1) → 0.
    let logits = Tensor::from_vec(
        vec![1., 3., 0., 2., 5., 3., 0., 1., 2., 0., 9., 1.],
        [1, 3, 1, 4],
    )
    .unwrap();
    // targets 1, 1, 2, 255 → M[1][1] += 1, M[1][0] += 1, M[2][2] += 1.
    let labels = Tensor::from_vec(vec![1., 1., 2., 255.], [1, 1, 4]).unwrap();
    let mut m = ConfusionMatrix::new(3);
    m.update_from_logits(&logits, &labels).unwrap();
    assert_eq!(m.counts(), &[0, 0, 0, 1, 1, 0, 0, 0, 1]);
    let wrong = Tensor::from_vec(vec![0.0; 4], [1, 4]).unwrap();
    assert!(m.update_from_logits(&logits, &wrong).is_err());
    let bad_label = Tensor::from_vec(vec![1.5, 1., 2., 255.], [1, 1, 4]).unwrap();
    assert!(m.update_from_logits(&logits, &bad_label).is_err());
}
