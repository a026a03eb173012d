//! `moeseg bench ops`: every row printed with finite positive numbers on the CPU (quick shapes),
//! and a clear one-line error for `--device cuda` where no GPU is usable.

use std::process::Command;

/// Every row `moeseg bench ops` prints.
const ROWS: &[&str] = &[
    "conv3x3_fwd",
    "conv3x3_dgrad",
    "conv3x3_wgrad",
    "conv3x3_c256_fwd",
    "conv3x3_c256_dgrad",
    "conv3x3_c256_wgrad",
    "conv1x1_fwd",
    "conv1x1_dgrad",
    "conv1x1_wgrad",
    "dwconv3x3_fwd",
    "dwconv3x3_dgrad",
    "dwconv3x3_wgrad",
    "dilconv3x3_d2_fwd",
    "dilconv3x3_d2_dgrad",
    "dilconv3x3_d2_wgrad",
    "convT2x2s2_fwd",
    "convT2x2s2_dgrad",
    "convT2x2s2_wgrad",
    "bn_fwd",
    "bn_bwd",
    "bilinear_x2_fwd",
    "bilinear_x2_bwd",
    "maxpool2x2_fwd",
    "maxpool2x2_bwd",
    "copy",
];

fn moeseg(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_moeseg"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run moeseg")
}

fn positive(text: &str) -> f64 {
    let value: f64 = text
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {text}"));
    assert!(
        value.is_finite() && value > 0.0,
        "not finite positive: {text}"
    );
    value
}

#[test]
fn cpu_quick_prints_every_row_with_positive_numbers() {
    let out = moeseg(&[
        "bench",
        "ops",
        "--device",
        "cpu",
        "--quick",
        "--repeats",
        "1",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ROWS {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row {name} in\n{stdout}"));
        // … median ms, best ms, rate, unit, % copy (or "-").
        let fields: Vec<&str> = line.split_whitespace().collect();
        let n = fields.len();
        assert!(n >= 6, "short row: {line}");
        let unit = fields[n - 2];
        assert!(unit == "GFLOP/s" || unit == "GB/s", "unit in {line}");
        positive(fields[n - 3]);
        positive(fields[n - 4]);
        positive(fields[n - 5]);
        if unit == "GB/s" {
            positive(fields[n - 1]);
        } else {
            assert_eq!(fields[n - 1], "-", "{line}");
        }
    }
    let summary = stdout.lines().last().expect("a summary line");
    assert!(summary.starts_with("bench_ops device=cpu "), "{summary}");
    for key in [
        "conv3x3_fwd_gflops",
        "copy_gbps",
        "bn_fwd_gbps",
        "maxpool2x2_bwd_ms",
    ] {
        let value = summary
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {summary}"));
        positive(value);
    }
}

#[test]
fn op_filter_keeps_matching_rows_and_the_copy() {
    let out = moeseg(&[
        "bench",
        "ops",
        "--device",
        "cpu",
        "--quick",
        "--repeats",
        "1",
        "--op",
        "bn_",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let summary = stdout.lines().last().expect("a summary line");
    assert!(summary.contains("bn_fwd_gbps=") && summary.contains("copy_gbps="));
    assert!(!summary.contains("conv3x3_fwd"), "{summary}");
}

#[test]
fn cuda_without_a_gpu_fails_with_one_line() {
    let out = moeseg(&[
        "bench",
        "ops",
        "--device",
        "cuda",
        "--quick",
        "--repeats",
        "1",
    ]);
    if out.status.success() {
        // A usable GPU: nothing to check here (the CUDA rows are checked like the CPU ones).
        return;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "stderr:\n{stderr}");
    assert!(lines[0].starts_with("error:"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
