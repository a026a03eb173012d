//! The confusion matrix of `moeseg eval` (issue 18): row-normalised shares, the most confused
//! pairs, and the files the command writes.

mod common;

use common::{ok, ok_stdout, TINY};
use moeseg::train::metrics::ConfusionMatrix;

#[test]
fn most_confused_pairs_from_a_hand_made_matrix() {
    let mut m = ConfusionMatrix::new(3);
    // target 0: 6 right, 3 as 1, 1 as 2; target 1: 8 right, 2 as 0; target 2: none.
    let target = [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
    let pred = [0u8, 0, 0, 0, 0, 0, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0];
    m.update(&pred, &target).unwrap();
    let rows = m.row_normalized();
    assert_eq!(rows[0], vec![0.6, 0.3, 0.1]);
    assert_eq!(rows[1], vec![0.2, 0.8, 0.0]);
    assert!(rows[2].iter().all(|v| v.is_nan()));
    assert_eq!(
        m.most_confused(10),
        vec![(0, 1, 0.3), (1, 0, 0.2), (0, 2, 0.1)]
    );
    assert_eq!(m.most_confused(1), vec![(0, 1, 0.3)]);
}

#[test]
fn eval_writes_the_confusion_matrix_json_and_heatmap() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_arg = run.to_str().unwrap();
    ok(&[
        "train",
        "--preset",
        TINY,
        "--device",
        "cpu",
        "--quiet",
        "--run-dir",
        run_arg,
        "--set",
        "model.moe.enabled=false",
    ]);
    let stdout = ok_stdout(&["eval", "--run", run_arg]);
    assert!(stdout.contains("most confused"), "{stdout}");
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(run.join(name)).unwrap()).unwrap()
    };
    let (confusion, eval) = (read("confusion.json"), read("eval.json"));
    let counts: Vec<Vec<u64>> = serde_json::from_value(confusion["counts"].clone()).unwrap();
    assert_eq!(counts.len(), 19);
    // 2 validation images of 32×64, every pixel labelled.
    assert_eq!(counts.iter().flatten().sum::<u64>(), 2 * 32 * 64);
    // IoU recomputed from the counts equals eval.json's.
    for (c, name) in moeseg::data::CLASS_NAMES.iter().enumerate() {
        let tp = counts[c][c] as f64;
        let row: u64 = counts[c].iter().sum();
        let col: u64 = counts.iter().map(|r| r[c]).sum();
        let union = (row + col) as f64 - tp;
        match eval["iou"][name].as_f64() {
            Some(iou) => assert!((iou - tp / union).abs() < 1e-12, "{name}"),
            None => assert_eq!(union, 0.0, "{name}"),
        }
        if row > 0 {
            let share = confusion["row_normalized"][c][c].as_f64().unwrap();
            assert!((share - tp / row as f64).abs() < 1e-12);
        }
    }
    let png = image::open(run.join("confusion.png")).unwrap();
    assert!(png.width() > 100 && png.height() > 100);
}
