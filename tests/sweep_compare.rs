//! `moeseg train --sweep` and `moeseg compare` end to end on the tiny synthetic preset: the
//! Cartesian product in one sweep folder with `sweep.toml`, `--dry-run`, resume (interrupted
//! runs continue, finished ones are skipped), errors before any run, a failing run recorded
//! while the sweep goes on, and the comparison table and plots.

use std::path::Path;

mod common;
use common::{moeseg, ok_stdout as ok, text, TINY};

fn sweep_toml(dir: &Path) -> toml::Table {
    let text = std::fs::read_to_string(dir.join("sweep.toml")).expect("sweep.toml");
    toml::from_str(&text).expect("sweep.toml is TOML")
}

/// `(name, status)` of every run in `sweep.toml`.
fn statuses(dir: &Path) -> Vec<(String, String)> {
    sweep_toml(dir)["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_sweep_runs_every_combination_resumes_and_compares() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sweep");
    let d = dir.to_str().unwrap();
    let sweep_args = [
        "train",
        "--preset",
        TINY,
        "--device",
        "cpu",
        "--quiet",
        "--run-dir",
        d,
        "--sweep",
        "model.moe.num_experts=2,4",
        "--sweep",
        "model.moe.k=1",
    ];
    // --dry-run lists the runs and starts none.
    let listed = ok(&[&sweep_args[..], &["--dry-run"]].concat());
    assert!(
        listed.contains("000-num_experts=2-k=1") && listed.contains("001-num_experts=4-k=1"),
        "{listed}"
    );
    assert!(!dir.exists(), "--dry-run created {d}");

    // Every run stops at step 2 with a checkpoint: recorded as interrupted.
    ok(&[&sweep_args[..], &["--stop-at", "2"]].concat());
    let names: Vec<String> = statuses(&dir).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["000-num_experts=2-k=1", "001-num_experts=4-k=1"]);
    assert!(statuses(&dir).iter().all(|(_, s)| s == "interrupted"));
    let table = sweep_toml(&dir);
    assert_eq!(
        table["runs"][1]["overrides"].as_array().unwrap(),
        &vec![
            toml::Value::from("model.moe.num_experts=4"),
            toml::Value::from("model.moe.k=1")
        ]
    );
    let config = std::fs::read_to_string(dir.join(&names[1]).join("config.toml")).unwrap();
    assert!(config.contains("num_experts = 4"), "{config}");

    // The same command resumes both runs to the end (4 steps, from step 2).
    ok(&sweep_args);
    assert!(statuses(&dir).iter().all(|(_, s)| s == "finished"));
    for name in &names {
        let steps: Vec<u64> = metrics(&dir.join(name))
            .iter()
            .filter(|r| r["kind"] == "step")
            .map(|r| r["step"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, [1, 2, 3, 4], "{name}");
    }
    // Once more: every run is finished, nothing is trained again.
    let before = std::fs::read(dir.join(&names[0]).join("metrics.jsonl")).unwrap();
    let again = moeseg(&sweep_args[..sweep_args.len()]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        std::fs::read(dir.join(&names[0]).join("metrics.jsonl")).unwrap(),
        before
    );
    // --resume SWEEP_DIR --dry-run shows the stored statuses.
    let listed = ok(&["train", "--resume", d, "--dry-run"]);
    assert_eq!(listed.matches("finished").count(), 2, "{listed}");

    // compare: one row per run, the differing key as a column, figures from metrics.jsonl.
    let out = tmp.path().join("cmp");
    let printed = ok(&["compare", d, "--out", out.to_str().unwrap()]);
    assert!(printed.contains("model.moe.num_experts"), "{printed}");
    let csv = std::fs::read_to_string(out.join("compare.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "{csv}");
    let col = |name: &str| {
        rows[0]
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no column {name} in {:?}", rows[0]))
    };
    assert_eq!(rows[1][col("model.moe.num_experts")], "2");
    assert_eq!(rows[2][col("model.moe.num_experts")], "4");
    for (i, name) in names.iter().enumerate() {
        let evals: Vec<f64> = metrics(&dir.join(name))
            .iter()
            .filter(|r| r["kind"] == "eval")
            .map(|r| r["miou"].as_f64().unwrap())
            .collect();
        let best = evals.iter().copied().fold(f64::MIN, f64::max);
        assert_eq!(rows[i + 1][col("best mIoU")], format!("{best:.4}"));
        assert_eq!(
            rows[i + 1][col("final mIoU")],
            format!("{:.4}", evals.last().unwrap())
        );
        assert_eq!(rows[i + 1][col("status")], "finished");
    }
    // k = 1 of E = 2 or 4 experts: one expert's parameters are total - active at E = 2; two
    // more experts add two of them to the total; what else grows (the gate's two extra
    // outputs) grows the active count as much.
    let params = |r: usize, c: &str| rows[r][col(c)].parse::<u64>().unwrap();
    let expert = params(1, "params") - params(1, "active params");
    let total_grown = params(2, "params") - params(1, "params");
    let active_grown = params(2, "active params") - params(1, "active params");
    assert!(
        expert > 0 && active_grown < expert,
        "{expert} {active_grown}"
    );
    assert_eq!(total_grown - active_grown, 2 * expert);
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.starts_with("| run |") && md.lines().count() == 4, "{md}");
    for png in ["compare_loss.png", "compare_miou.png", "compare_iou.png"] {
        let img = image::open(out.join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(img.width() >= 600, "{png}");
    }
}

#[test]
fn sweep_errors_stop_before_any_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sweep");
    let d = dir.to_str().unwrap();
    for (axis, expect) in [
        ("model.moe.num_expertz=2,4", "num_expertz"),
        ("model.moe.k=1,two", "model.moe.k"),
        ("model.moe.k", "KEY=V1,V2"),
    ] {
        let output = moeseg(&[
            "train",
            "--preset",
            TINY,
            "--device",
            "cpu",
            "--quiet",
            "--run-dir",
            d,
            "--sweep",
            axis,
        ]);
        assert!(!output.status.success(), "{axis}: {}", text(&output));
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(err.contains(expect), "{axis}: {err}");
        assert!(!dir.exists(), "{axis}: a run started");
    }
}

#[test]
fn a_failing_run_is_recorded_and_the_sweep_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sweep");
    let d = dir.to_str().unwrap();
    // k = 9 of 4 experts passes the schema (an integer) and fails when the network is built.
    let output = moeseg(&[
        "train",
        "--preset",
        TINY,
        "--device",
        "cpu",
        "--quiet",
        "--run-dir",
        d,
        "--stop-at",
        "1",
        "--sweep",
        "model.moe.k=9,1",
    ]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 of the runs failed"));
    let runs = statuses(&dir);
    assert_eq!(runs[0].1, "failed", "{runs:?}");
    assert_eq!(runs[1].1, "interrupted", "{runs:?}");
    let error = sweep_toml(&dir)["runs"][0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.contains('9') || error.contains('k'), "{error}");
}

/// The `--sweep` arguments of the "Run with" command in a preset's header comment.
fn documented_sweeps(text: &str) -> Vec<String> {
    let command: String = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .skip_while(|l| !l.contains("moeseg train"))
        .take_while(|l| !l.contains("moeseg compare"))
        .map(|l| l.trim_start_matches('#').trim().trim_end_matches('\\'))
        .collect::<Vec<_>>()
        .join(" ");
    command
        .split("--sweep ")
        .skip(1)
        .map(|arg| {
            let arg = arg.trim();
            match arg.strip_prefix('\'') {
                Some(quoted) => quoted.split('\'').next().unwrap().to_string(),
                None => arg.split_whitespace().next().unwrap().to_string(),
            }
        })
        .collect()
}

#[test]
fn every_ablation_preset_documents_a_valid_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/synthetic-enet");
    for (name, runs) in [
        ("gate", 4),
        ("grid", 4),
        ("experts", 3),
        ("k", 3),
        ("loss", 4),
        ("placement", 3),
    ] {
        let text = std::fs::read_to_string(models.join(format!("ablation-{name}.toml"))).unwrap();
        let sweeps = documented_sweeps(&text);
        assert_eq!(sweeps.len(), 1, "ablation-{name}: {sweeps:?}");
        let preset = format!("synthetic-enet/ablation-{name}");
        let dir = tmp.path().join(name);
        let listed = ok(&[
            "train",
            "--preset",
            &preset,
            "--run-dir",
            dir.to_str().unwrap(),
            "--sweep",
            &sweeps[0],
            "--dry-run",
        ]);
        assert_eq!(
            listed.matches("  pending ").count(),
            runs,
            "ablation-{name}:\n{listed}"
        );
    }
}
