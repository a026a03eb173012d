//! The `moeseg` binary end to end on the tiny synthetic preset (ENet + one PatchConvMoE on
//! 32×64 images, a few steps): the run folder, exact resume, evaluation, prediction, routing
//! analysis, the benchmark line, and clear errors with non-zero exits.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod common;
use common::{fails, ok, text, TINY};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary folder")
}

/// One tiny training run shared by the tests that only read it.
fn trained_run() -> &'static Path {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, run) = RUN.get_or_init(|| {
        let dir = tempdir();
        let run = dir.path().join("run");
        ok(&[
            "train",
            "--preset",
            TINY,
            "--device",
            "cpu",
            "--quiet",
            "--run-dir",
            run.to_str().unwrap(),
        ]);
        (dir, run)
    });
    run
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).expect("every metrics line is JSON"))
        .collect()
}

#[test]
fn train_writes_a_complete_run_folder() {
    let run = trained_run();
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let table: toml::Table = toml::from_str(&config).expect("config.toml is TOML");
    assert_eq!(table["model"]["name"].as_str(), Some("enet"));
    assert_eq!(table["model"]["moe"]["enabled"].as_bool(), Some(true));
    let records = metrics(run);
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"step") && kinds.contains(&"epoch") && kinds.contains(&"eval"));
    for record in records.iter().filter(|r| r["kind"] == "step") {
        for key in [
            "step",
            "epoch",
            "loss",
            "main_loss",
            "aux_loss",
            "lr",
            "images_per_s",
        ] {
            assert!(
                record[key].is_number(),
                "step record without {key}: {record}"
            );
        }
    }
    let eval = records.iter().rfind(|r| r["kind"] == "eval").unwrap();
    let miou = eval["miou"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&miou));
    assert_eq!(eval["iou"].as_array().unwrap().len(), 19);
    for name in ["last", "best"] {
        for file in ["model.safetensors", "optimizer.safetensors", "state.json"] {
            assert!(
                run.join("checkpoints").join(name).join(file).is_file(),
                "{name}/{file}"
            );
        }
    }
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoints/last/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["finished"], true);
    assert_eq!(state["step"], state["total_steps"]);
    for plot in [
        "loss.png",
        "miou.png",
        "per_class_iou.png",
        "expert_usage.png",
    ] {
        assert!(run.join("plots").join(plot).is_file(), "plots/{plot}");
    }
    let samples: Vec<_> = std::fs::read_dir(run.join("samples")).unwrap().collect();
    assert!(
        samples.len() >= 2,
        "samples with a prediction and a routing overlay"
    );
}

/// N steps straight and N/2 + resume + N/2 log the same losses and evaluations.
#[test]
fn resume_repeats_an_uninterrupted_run_exactly() {
    let dir = tempdir();
    let straight = dir.path().join("straight");
    let resumed = dir.path().join("resumed");
    let common = [
        "--preset",
        TINY,
        "--device",
        "cpu",
        "--quiet",
        "--set",
        "train.epochs=3",
    ];
    let mut args = vec!["train", "--run-dir", straight.to_str().unwrap()];
    args.extend(common);
    ok(&args);
    let mut args = vec![
        "train",
        "--run-dir",
        resumed.to_str().unwrap(),
        "--stop-at",
        "3",
    ];
    args.extend(common);
    ok(&args);
    let stopped: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(resumed.join("checkpoints/last/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(stopped["step"], 3);
    assert_eq!(stopped["finished"], false);
    ok(&["train", "--resume", resumed.to_str().unwrap(), "--quiet"]);
    let strip = |records: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        records
            .into_iter()
            .map(|mut r| {
                r.as_object_mut().unwrap().remove("images_per_s");
                r
            })
            .collect()
    };
    let (a, b) = (strip(metrics(&straight)), strip(metrics(&resumed)));
    assert_eq!(a.len(), b.len(), "same records:\n{a:#?}\n{b:#?}");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y);
    }
    let weights =
        |run: &Path| std::fs::read(run.join("checkpoints/last/model.safetensors")).unwrap();
    assert!(
        weights(&straight) == weights(&resumed),
        "the final weights are bit-identical"
    );
}

#[test]
fn eval_predict_and_routing_commands_write_their_outputs() {
    let run = trained_run();
    let run_arg = run.to_str().unwrap();
    let out = tempdir();
    let json = out.path().join("eval.json");
    let output = ok(&["eval", "--run", run_arg, "--json", json.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("mIoU"));
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(
        eval["miou"].is_number() && eval["iou"]["road"].is_number()
            || eval["iou"]["road"].is_null()
    );

    // Predict on the run's own sample pictures, in every format.
    let images = out.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let picture = image::RgbImage::from_fn(64, 32, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 8) as u8, 90])
    });
    picture
        .save(images.join("aachen_000000_000019_leftImg8bit.png"))
        .unwrap();
    for (format, suffix) in [
        ("labelids", "_pred_labelIds.png"),
        ("trainids", "_pred_trainIds.png"),
        ("color", "_pred_color.png"),
        ("overlay", "_pred_overlay.png"),
    ] {
        let dest = out.path().join(format);
        ok(&[
            "predict",
            "--run",
            run_arg,
            "--input",
            images.to_str().unwrap(),
            "--output",
            dest.to_str().unwrap(),
            "--format",
            format,
            "--routing-overlay",
        ]);
        let written = dest.join(format!("aachen_000000_000019{suffix}"));
        let decoded =
            image::open(&written).unwrap_or_else(|e| panic!("{}: {e}", written.display()));
        assert_eq!((decoded.width(), decoded.height()), (64, 32));
        if format == "labelids" {
            // Cityscapes label ids of the 19 classes are 7..=33.
            assert!(decoded
                .to_luma8()
                .pixels()
                .all(|p| (7..=33).contains(&p.0[0])));
        }
        assert!(dest
            .join("aachen_000000_000019_routing_regular5_1-ext_conv2-0.png")
            .is_file());
    }

    let analysis = out.path().join("analysis");
    ok(&[
        "routing-stats",
        "--run",
        run_arg,
        "--output",
        analysis.to_str().unwrap(),
    ]);
    let stats: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(analysis.join("routing_stats.json")).unwrap(),
    )
    .unwrap();
    let layer = &stats["layers"]["regular5_1.ext_conv2.0"];
    assert_eq!(layer["usage"].as_array().unwrap().len(), 4);
    assert!(layer["nre"].is_number() && layer["tec"].is_number());
    assert!(analysis.join("plots/expert_usage.png").is_file());

    let output = ok(&[
        "eval-fixed-expert",
        "--run",
        run_arg,
        "--output",
        analysis.to_str().unwrap(),
    ]);
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        table.contains("expert 3") && table.contains("routed"),
        "{table}"
    );
    let fixed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(analysis.join("fixed_expert.json")).unwrap())
            .unwrap();
    assert_eq!(
        fixed["passes"].as_array().unwrap().len(),
        5,
        "E = 4 forced passes + routed"
    );
}

#[test]
fn bad_keys_presets_and_paths_are_clear_errors() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let run_arg = run.to_str().unwrap();
    let err = fails(&[
        "train",
        "--preset",
        TINY,
        "--run-dir",
        run_arg,
        "--set",
        "model.moe.experts=4",
    ]);
    assert!(
        err.contains("model.moe.experts") && err.contains("num_experts"),
        "{err}"
    );
    let err = fails(&[
        "train",
        "--preset",
        TINY,
        "--run-dir",
        run_arg,
        "--set",
        "optim.lr=fast",
    ]);
    assert!(err.contains("optim.lr"), "{err}");
    let err = fails(&[
        "train",
        "--preset",
        "cityscapes-nonet/default",
        "--run-dir",
        run_arg,
    ]);
    assert!(
        err.contains("unknown preset") && err.contains("cityscapes-enet/patch_conv_moe"),
        "{err}"
    );
    let missing = dir.path().join("no-such-cityscapes");
    let err = fails(&[
        "train",
        "--preset",
        "cityscapes-enet/default",
        "--run-dir",
        run_arg,
        "--set",
        &format!("data.root={}", missing.display()),
    ]);
    assert!(err.contains("no-such-cityscapes"), "{err}");
    let err = fails(&[
        "eval",
        "--run",
        dir.path().join("nothing").to_str().unwrap(),
    ]);
    assert!(err.contains("config.toml"), "{err}");
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_keeps_a_loadable_checkpoint() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let run_arg = run.to_str().unwrap();
    let err = fails(&[
        "train",
        "--preset",
        TINY,
        "--device",
        "cpu",
        "--quiet",
        "--run-dir",
        run_arg,
        "--set",
        "optim.lr=1e30",
        "--set",
        "train.epochs=4",
    ]);
    assert!(
        err.contains("at step") && err.contains("checkpoints"),
        "{err}"
    );
    ok(&["eval", "--run", run_arg, "--checkpoint", "last"]);
}

#[test]
fn bench_train_prints_the_summary_line() {
    let output = ok(&[
        "bench", "train", "--model", "enet", "--moe", "default", "--batch", "1", "--size", "32x64",
        "--steps", "2", "--warmup", "1", "--device", "cpu",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let fields: Vec<&str> = last.split(' ').collect();
    assert_eq!(fields.len(), 2, "{last}");
    assert!(
        fields[0].starts_with("train_step_ms=") && fields[1].starts_with("images_per_s="),
        "{last}"
    );
    assert!(
        fields[0]["train_step_ms=".len()..].parse::<f64>().is_ok(),
        "{last}"
    );
}

/// Ctrl-C (SIGINT) saves a resumable `last` checkpoint and exits cleanly; --resume continues.
#[test]
fn ctrl_c_saves_a_resumable_checkpoint() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let run_arg = run.to_str().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_moeseg"))
        .args([
            "train",
            "--preset",
            TINY,
            "--device",
            "cpu",
            "--quiet",
            "--run-dir",
            run_arg,
            "--set",
            "train.epochs=500",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the moeseg binary starts");
    // Wait until a few steps are logged, then interrupt.
    let started = std::time::Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl")).map_or(true, |m| m.lines().count() < 3)
    {
        assert!(started.elapsed().as_secs() < 120, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let output = child.wait_with_output().expect("moeseg exits");
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--resume"),
        "{}",
        text(&output)
    );
    let state = |run: &Path| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(run.join("checkpoints/last/state.json")).unwrap(),
        )
        .unwrap()
    };
    let stopped = state(&run);
    assert_eq!(stopped["finished"], false);
    let step = stopped["step"].as_u64().unwrap();
    assert!((1..1000).contains(&step), "{stopped}");
    let target = (step + 2).to_string();
    ok(&[
        "train",
        "--resume",
        run_arg,
        "--quiet",
        "--stop-at",
        &target,
    ]);
    assert_eq!(state(&run)["step"].as_u64(), Some(step + 2));
}

/// The real-dataset presets read the on-disk formats: tiny Cityscapes and BDD100K folders
/// written from synthetic scenes, trained for two steps each with ENet class weights, then
/// evaluated with sliding windows.
#[test]
fn real_dataset_presets_train_on_the_on_disk_formats() {
    use moeseg::data::{write_bdd100k, write_cityscapes, Split, Synthetic, SyntheticConfig};
    let dir = tempdir();
    let scenes = |seed| {
        Synthetic::new(SyntheticConfig {
            len: 4,
            height: 32,
            width: 64,
            seed,
        })
    };
    let cityscapes = dir.path().join("cityscapes");
    let bdd = dir.path().join("bdd100k");
    for (split, seed) in [(Split::Train, 1), (Split::Val, 2)] {
        write_cityscapes(&scenes(seed), &cityscapes, split, "aachen").unwrap();
        write_bdd100k(&scenes(seed), &bdd, split).unwrap();
    }
    for (preset, root) in [
        ("cityscapes-enet/patch_conv_moe", &cityscapes),
        ("bdd100k-erfnet/patch_conv_moe", &bdd),
    ] {
        let run = dir.path().join(preset.replace('/', "-"));
        let run_arg = run.to_str().unwrap();
        let root_set = format!("data.root={}", root.display());
        ok(&[
            "train",
            "--preset",
            preset,
            "--device",
            "cpu",
            "--quiet",
            "--run-dir",
            run_arg,
            "--set",
            &root_set,
            "--set",
            "data.crop=[32, 64]",
            "--set",
            "data.scale=[1, 1]",
            "--set",
            "data.batch_size=2",
            "--set",
            "train.epochs=1",
            "--set",
            "train.class_weights=enet",
            "--set",
            "data.workers=1",
            "--set",
            "model.moe.num_experts=2",
            "--set",
            "model.moe.k=1",
        ]);
        let json = run.join("sliding.json");
        ok(&[
            "eval",
            "--run",
            run_arg,
            "--set",
            "train.eval_mode=sliding",
            "--set",
            "train.eval_crop=[32, 32]",
            "--set",
            "train.eval_stride=[32, 16]",
            "--json",
            json.to_str().unwrap(),
        ]);
        let eval: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(eval["images"], 4);
        assert!(
            eval["inference"].as_str().unwrap().contains("sliding"),
            "{eval}"
        );
        // The same weights through --preset and --weights.
        let weights = run.join("checkpoints/last/model.safetensors");
        ok(&[
            "eval",
            "--preset",
            preset,
            "--weights",
            weights.to_str().unwrap(),
            "--set",
            &root_set,
            "--set",
            "model.moe.num_experts=2",
            "--set",
            "model.moe.k=1",
            "--json",
            run.join("weights.json").to_str().unwrap(),
        ]);
    }
}

/// Every command explains its options.
#[test]
fn every_command_has_help() {
    for command in [
        &["train"][..],
        &["eval"],
        &["predict"],
        &["eval-fixed-expert"],
        &["routing-stats"],
        &["presets"],
        &["bench", "train"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let output = ok(&args);
        let help = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(help.contains("Usage: moeseg"), "{command:?}: {help}");
    }
    let output = ok(&["presets"]);
    let listed = String::from_utf8_lossy(&output.stdout).into_owned();
    for net in [
        "enet",
        "erfnet",
        "unet",
        "lraspp",
        "deeplabv3plus",
        "pspnet",
    ] {
        for dataset in ["cityscapes", "bdd100k"] {
            for variant in ["default", "patch_conv_moe"] {
                assert!(
                    listed.contains(&format!("{dataset}-{net}/{variant}")),
                    "{listed}"
                );
            }
        }
    }
    // Every built-in preset is valid under the schema.
    for preset in listed.lines() {
        ok(&["train", "--preset", preset, "--print-config"]);
    }
}
