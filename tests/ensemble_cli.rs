//! `moeseg ensemble train | eval | flops` and `eval` / `predict` on an ensemble run folder.

mod common;

use common::{fails, ok, ok_stdout, TINY};
use std::path::Path;

fn expert(dir: &Path, name: &str, scene: &str, seed: &str) -> String {
    let run = dir.join(name);
    ok(&[
        "train",
        "--preset",
        TINY,
        "--device",
        "cpu",
        "--quiet",
        "--run-dir",
        run.to_str().unwrap(),
        "--set",
        "model.moe.enabled=false",
        "--set",
        &format!("data.scene={scene}"),
        "--set",
        &format!("train.seed={seed}"),
    ]);
    run.display().to_string()
}

const SMALL: [&str; 12] = [
    "--set",
    "train.log_interval=1",
    "--set",
    "data.synthetic.height=32",
    "--set",
    "data.synthetic.width=64",
    "--set",
    "data.synthetic.train_len=8",
    "--set",
    "data.synthetic.val_len=4",
    "--set",
    "ensemble.gate_size=[16, 32]",
];

#[test]
fn ensemble_run_folder_trains_resumes_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        expert(dir.path(), "urban", "urban", "1"),
        expert(dir.path(), "highway", "highway", "2"),
    );
    let run = dir.path().join("ens");
    let run_s = run.to_str().unwrap();
    let mut args = vec![
        "ensemble",
        "train",
        "--expert",
        &a,
        "--expert",
        &b,
        "--run-dir",
        run_s,
        "--device",
        "cpu",
        "--quiet",
        "--stop-at",
        "1",
        "--set",
        "ensemble.k=1",
    ];
    args.extend(SMALL);
    ok(&args);
    ok(&["ensemble", "train", "--resume", run_s, "--quiet"]);
    // The same run without the stop: the same final gate, bit for bit.
    let straight = dir.path().join("straight");
    let mut args = vec![
        "ensemble",
        "train",
        "--expert",
        &a,
        "--expert",
        &b,
        "--run-dir",
        straight.to_str().unwrap(),
        "--device",
        "cpu",
        "--quiet",
        "--set",
        "ensemble.k=1",
    ];
    args.extend(SMALL);
    ok(&args);
    let last = |r: &Path| std::fs::read(r.join("checkpoints/last/model.safetensors")).unwrap();
    assert!(last(&run) == last(&straight), "resumed = straight");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let hash =
        moeseg::ensemble::weights_hash(&Path::new(&a).join("checkpoints/best/model.safetensors"))
            .unwrap();
    assert!(config.contains(&a) && config.contains(&hash), "{config}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let steps = metrics
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\""))
        .count();
    assert_eq!(steps, 4, "8 images / batch 8 × 4 epochs:\n{metrics}");
    assert!(metrics.contains("\"kind\":\"eval\""));
    assert!(run.join("plots/loss.png").is_file() && run.join("plots/miou.png").is_file());
    // The gate's checkpoint holds only the gate.
    let weights =
        moeseg::io::safetensors::load(run.join("checkpoints/last/model.safetensors")).unwrap();
    assert!(
        weights.keys().all(|k| k.starts_with("gate.")),
        "{:?}",
        weights.keys()
    );

    let table = ok_stdout(&["ensemble", "eval", "--run", run_s, "--device", "cpu"]);
    for row in [
        "expert urban",
        "expert highway",
        "mean ensemble",
        "max ensemble",
        "gate image per-image k=1/2",
    ] {
        assert!(table.contains(row), "{row}:\n{table}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("ensemble_eval.json")).unwrap())
            .unwrap();
    let rows = json["rows"].as_array().unwrap();
    let macs = |i: usize| rows[i]["macs_per_image"].as_f64().unwrap();
    // Top-1 runs one expert per image: below the mean ensemble's two.
    assert!(
        (macs(2) - macs(0) - macs(1)).abs() < 1.0,
        "mean = both experts"
    );
    assert!(
        macs(4) < 0.75 * macs(2),
        "top-1 {} vs dense {}",
        macs(4),
        macs(2)
    );
    let flops = ok_stdout(&["ensemble", "flops", "--run", run_s, "--device", "cpu"]);
    assert!(
        flops.contains("top-1") && flops.contains("dense"),
        "{flops}"
    );

    // `moeseg flops --run` on an ensemble run is `ensemble flops`.
    assert_eq!(ok_stdout(&["flops", "--run", run_s]), flops);

    // Experts given relative to the working directory are recorded as absolute paths, so the
    // ensemble run works from anywhere.
    let mut relative = vec![
        "ensemble",
        "train",
        "--expert",
        "urban",
        "--expert",
        "highway",
        "--run-dir",
        "relative",
        "--device",
        "cpu",
        "--quiet",
        "--stop-at",
        "1",
    ];
    relative.extend(SMALL);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_moeseg"))
        .args(&relative)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::text(&output));
    let rel_run = dir.path().join("relative");
    let config = std::fs::read_to_string(rel_run.join("config.toml")).unwrap();
    assert!(config.contains(&format!("\"{a}\"")), "{a} in\n{config}");
    let rel_flops = ok_stdout(&["flops", "--run", rel_run.to_str().unwrap()]);
    assert!(rel_flops.contains("expert urban"), "{rel_flops}");

    let eval = ok_stdout(&["eval", "--run", run_s, "--device", "cpu"]);
    assert!(eval.contains("mIoU"), "{eval}");
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    image::RgbImage::from_fn(64, 32, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 8) as u8, 90])
    })
    .save(images.join("a.png"))
    .unwrap();
    let out = dir.path().join("pred");
    ok(&[
        "predict",
        "--run",
        run_s,
        "--input",
        images.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(out.join("a_experts.png").is_file());

    let err = fails(&[
        "ensemble",
        "train",
        "--expert",
        &a,
        "--run-dir",
        dir.path().join("one").to_str().unwrap(),
    ]);
    assert!(err.contains("two experts"), "{err}");
    let err = fails(&["ensemble", "eval", "--run", &a]);
    assert!(err.contains("not an ensemble run"), "{err}");
}
