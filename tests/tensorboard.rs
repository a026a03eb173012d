//! TensorBoard event files read back by TensorBoard's own reader (`EventAccumulator`, through
//! `scripts/read_tensorboard.py`): every tag and value written, and a tiny training run's
//! event file holding every value of its metrics.jsonl plus the sample pictures.
//!
//! Needs `python3` with `tensorboard`; CI installs it and sets `MOESEG_REQUIRE_TENSORBOARD=1`,
//! under which a missing reader is a failure, not a skip.

use moeseg::train::tensorboard::{masked_crc32c, tfrecord, EventWriter};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// Whether TensorBoard's reader is usable; a failure when it is required.
fn reader_available() -> bool {
    let ok = Command::new("python3")
        .args([
            "-c",
            "import tensorboard.backend.event_processing.event_accumulator",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("MOESEG_REQUIRE_TENSORBOARD").as_deref() != Ok("1"),
            "MOESEG_REQUIRE_TENSORBOARD=1 but `python3 -c 'import tensorboard'` fails: \
             pip install tensorboard"
        );
        eprintln!("SKIPPED: python3 with tensorboard not found (pip install tensorboard)");
    }
    ok
}

/// Everything TensorBoard's EventAccumulator reads from `dir`.
fn read_back(dir: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/read_tensorboard.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(dir)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "read_tensorboard.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the reader prints JSON")
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// `[[step, value], ...]` of a scalar tag.
fn scalar_points(read: &Value, tag: &str) -> Vec<(u64, f64)> {
    read["scalars"][tag]
        .as_array()
        .unwrap_or_else(|| panic!("tag {tag} missing; tags: {:?}", read["scalars"]))
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

#[test]
fn crc_is_castagnoli_masked_as_tfrecord_specifies() {
    // The CRC-32C check value of "123456789" is 0xE3069283 (RFC 3720, B.4); TFRecord masks a
    // CRC as ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2^32), here 0xC78AB0E5 (worked
    // out by hand in Python).
    assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
    let record = tfrecord(b"abc");
    assert_eq!(record.len(), 8 + 4 + 3 + 4);
    assert_eq!(&record[..8], &3u64.to_le_bytes());
    assert_eq!(&record[12..15], b"abc");
}

#[test]
fn tensorboard_reads_back_every_scalar_and_image_written() {
    if !reader_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut writer = EventWriter::create(dir.path()).unwrap();
    let name = writer
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    let mut expected: Vec<(String, u64, f64)> = Vec::new();
    for step in [1u64, 2, 5, 40] {
        let values = vec![
            ("train/loss".to_string(), 1.0 / step as f64),
            ("train/lr".to_string(), 0.005 * 0.9f64.powi(step as i32)),
            ("val/iou/traffic light".to_string(), -3.25 * step as f64),
        ];
        writer.scalars(step, &values).unwrap();
        expected.extend(values.into_iter().map(|(t, v)| (t, step, v)));
    }
    let picture =
        image::RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 50, 7]));
    writer.image(3, "samples/a/prediction", &picture).unwrap();
    drop(writer);

    let read = read_back(dir.path());
    let tags = read["scalars"].as_object().unwrap();
    assert_eq!(tags.len(), 3, "{tags:?}");
    for (tag, step, value) in &expected {
        let points = scalar_points(&read, tag);
        let found = points
            .iter()
            .find(|(s, _)| s == step)
            .unwrap_or_else(|| panic!("{tag} has no step {step}: {points:?}"));
        // simple_value is a float32 (compared as f32: serde_json parses floats to within an ulp).
        assert_eq!(found.1 as f32, *value as f32, "{tag} at step {step}");
    }
    let images = read["images"]["samples/a/prediction"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0][0], 3);
    assert_eq!(
        (images[0][1].as_u64(), images[0][2].as_u64()),
        (Some(7), Some(5))
    );
    let png = hex_bytes(images[0][3].as_str().unwrap());
    let decoded = image::load_from_memory(&png).unwrap().to_rgb8();
    assert_eq!(decoded, picture);
}

#[test]
fn a_training_run_logs_every_metric_and_the_samples_to_tensorboard() {
    if !reader_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let output = Command::new(env!("CARGO_BIN_EXE_moeseg"))
        .args([
            "train",
            "--preset",
            "synthetic-enet/tiny",
            "--device",
            "cpu",
            "--quiet",
        ])
        .arg("--run-dir")
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read = read_back(&run);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let names = moeseg::train::report::class_names(19);
    let mut checked = 0;
    for line in metrics.lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        let step = record["step"].as_u64().unwrap();
        let section = match record["kind"].as_str().unwrap() {
            "step" => "train",
            "eval" => "val",
            other => other,
        };
        let mut expect = |tag: String, value: f64| {
            let points = scalar_points(&read, &tag);
            assert!(
                points
                    .iter()
                    .any(|&(s, v)| s == step && v as f32 == value as f32),
                "{tag} at step {step} should be {value}: {points:?}"
            );
            checked += 1;
        };
        for (field, tag) in [
            ("loss", "loss"),
            ("main_loss", "main_loss"),
            ("aux_loss", "aux_loss"),
            ("balance_loss", "balance_loss"),
            ("lr", "lr"),
            ("images_per_s", "images_per_s"),
            ("miou", "mIoU"),
            ("pixel_accuracy", "pixel_accuracy"),
            ("val_loss", "loss"),
        ] {
            if let Some(v) = record[field].as_f64() {
                expect(format!("{section}/{tag}"), v);
            }
        }
        if let Some(iou) = record["iou"].as_array() {
            for (c, v) in iou.iter().enumerate() {
                if let Some(v) = v.as_f64() {
                    expect(format!("val/iou/{}", names[c]), v);
                }
            }
        }
        if let Some(layers) = record["routing"].as_object() {
            for (layer, figures) in layers {
                expect(
                    format!("val/moe/{layer}/NRE"),
                    figures["nre"].as_f64().unwrap(),
                );
                expect(
                    format!("val/moe/{layer}/TEC"),
                    figures["tec"].as_f64().unwrap(),
                );
            }
        }
    }
    // 4 steps × 6 + 2 epochs × 4 + 2 evaluations × (3 + IoUs + NRE/TEC).
    assert!(
        checked > 4 * 6 + 2 * 4 + 2 * 5,
        "only {checked} values checked"
    );
    assert!(read["scalars"]["val/moe/regular5_1.ext_conv2.0/NRE"].is_array());
    let images = read["images"].as_object().unwrap();
    for (tag, entries) in images {
        // The 64-pixel-wide tiny samples are scaled up (nearest) to a readable 512 pixels.
        assert_eq!(entries[0][1].as_u64(), Some(512), "{tag}");
    }
    assert!(
        images.keys().any(|t| t.ends_with("/prediction"))
            && images.keys().any(|t| t.contains("/routing/")),
        "{:?}",
        images.keys().collect::<Vec<_>>()
    );
}
