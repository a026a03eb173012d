//! The CUDA backend without a GPU: device strings, `auto` falling back to the CPU with one line,
//! CUDA calls failing with clear errors (never panicking), every op family's kernel file
//! embedded and covered by the verification table, the committed record of the verification
//! runs (`kernels/verified/`), and `moeseg verify` exiting with its "no GPU" code. On a machine with a GPU the
//! no-GPU assertions are skipped with a message (tests/cuda_gpu.rs covers that case).

use moeseg::backend::cuda::{self, KERNELS};
use moeseg::verify::{self, Report, Totals};
use moeseg::{Device, Tensor};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The families of src/ops, each with a `kernels/<family>.cu`.
const FAMILIES: [&str; 17] = [
    "activation",
    "conv",
    "dropout",
    "elementwise",
    "index",
    "interpolate",
    "loss",
    "matmul",
    "norm",
    "optimizer",
    "patch_grid",
    "pool",
    "reduce",
    "routed_conv",
    "shape",
    "softmax",
    "topk_gate",
];

/// True when this machine has no usable CUDA device (prints why).
fn no_gpu() -> bool {
    match Device::select("auto") {
        Ok((Device::Cpu, reason)) => {
            println!("no GPU here: {}", reason.unwrap_or_default());
            true
        }
        _ => false,
    }
}

#[test]
fn every_op_family_has_its_kernel_file_without_headers() {
    let embedded: Vec<&str> = KERNELS.iter().map(|(family, _)| *family).collect();
    assert_eq!(
        embedded, FAMILIES,
        "kernels/*.cu must match the op families"
    );
    for (family, source) in KERNELS {
        assert!(
            !source.contains("#include"),
            "{family}.cu includes a header"
        );
        assert!(
            source.contains("static_assert(sizeof("),
            "{family}.cu checks its params' size"
        );
        let path = format!("src/ops/{family}/cuda_kernel.rs");
        assert!(std::path::Path::new(&path).exists(), "{path} is missing");
    }
}

/// Every kernel family has cases in `moeseg verify`'s table, and the table has no other family.
#[test]
fn the_verification_table_covers_every_kernel_family() {
    let table: BTreeSet<&str> = verify::table().iter().map(|case| case.family).collect();
    let kernels: BTreeSet<&str> = FAMILIES.into_iter().collect();
    assert_eq!(table, kernels);
    assert_eq!(
        verify::FAMILIES.into_iter().collect::<BTreeSet<_>>(),
        kernels
    );
}

/// The `*.json` files of `kernels/verified/`, sorted.
fn verification_records() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/verified");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
}

/// The record of what has run where: one `moeseg verify --json` file per device in
/// `kernels/verified/` (at least the CPU's), each parsing, covering every op family of the table
/// with no failed row, and listed in `kernels/verified.md`. A new device's file needs no change
/// here.
#[test]
fn the_verification_record_parses_covers_every_family_and_passes() {
    let files = verification_records();
    let names: Vec<String> = files
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|name| name == "cpu.json"),
        "kernels/verified/cpu.json is missing (write it with `moeseg verify --device cpu \
         --seed 1 --json kernels/verified/cpu.json`); found {names:?}"
    );
    let notes_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/verified.md");
    let notes = std::fs::read_to_string(&notes_path)
        .unwrap_or_else(|e| panic!("{}: {e}", notes_path.display()));
    let families: BTreeSet<String> = verify::table()
        .iter()
        .map(|case| case.family.to_string())
        .collect();
    for (path, name) in files.iter().zip(&names) {
        let report = Report::read_json(path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!report.device.is_empty(), "{name}: no device");
        assert!(
            notes.contains(&format!("verified/{name}")),
            "kernels/verified.md does not list verified/{name}"
        );
        let covered: BTreeSet<String> = report.families().into_iter().map(String::from).collect();
        let missing: Vec<&String> = families.difference(&covered).collect();
        assert!(
            missing.is_empty(),
            "{name}: no rows of the families {missing:?}"
        );
        let failed: Vec<String> = report
            .rows
            .iter()
            .filter(|row| !row.pass || row.error.is_some())
            .map(|row| format!("{} {} {:?}: {:?}", row.op, row.shape, row.output, row.error))
            .collect();
        assert!(
            failed.is_empty(),
            "{name}: failed rows:\n{}",
            failed.join("\n")
        );
        assert!(
            report.rows.iter().all(|row| row.device == report.device),
            "{name}: rows of another device"
        );
        assert_eq!(
            report.totals,
            Totals::from_rows(&report.rows),
            "{name}: totals"
        );
        assert_eq!(report.totals.failed, 0, "{name}");
    }
}

/// The names of the `extern "C" __global__` kernels of a source.
fn kernel_names(source: &str) -> Vec<String> {
    source
        .split("extern \"C\" __global__ void ")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .map(|name| name.trim().to_string())
        .collect()
}

#[test]
fn every_kernel_is_launched_by_its_family() {
    for (family, source) in KERNELS {
        let path = format!("src/ops/{family}/cuda_kernel.rs");
        let launcher = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let names = kernel_names(source);
        assert!(!names.is_empty(), "{family}.cu has no kernel");
        for name in names {
            assert!(
                launcher.contains(&format!("\"{name}\"")),
                "kernel {name} of {family}.cu is never named in {path}"
            );
        }
    }
}

#[test]
fn device_strings_parse_and_display() {
    assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
    assert_eq!(Device::Cpu.to_string(), "cpu");
    assert_eq!(Device::select("cpu").unwrap(), (Device::Cpu, None));
    for bad in ["gpu", "cuda:x", "cuda:-1", ""] {
        let err = Device::select(bad).unwrap_err().to_string();
        assert!(
            err.contains("auto, cpu, cuda") || err.contains("device number"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn auto_picks_the_cpu_with_one_line_and_cuda_says_where_it_looked() {
    if !no_gpu() {
        println!("skipped: a GPU is present (tests/cuda_gpu.rs covers it)");
        return;
    }
    let (device, reason) = Device::select("auto").unwrap();
    let reason = reason.expect("auto explains the fallback");
    assert_eq!(device, Device::Cpu);
    assert!(!reason.contains('\n'), "one line: {reason}");
    assert!(reason.contains("using the CPU"), "{reason}");
    let err = Device::select("cuda:0").unwrap_err().to_string();
    assert!(err.contains("cuda:0"), "{err}");
}

#[test]
fn cuda_calls_without_a_gpu_are_errors_not_panics() {
    if !no_gpu() {
        println!("skipped: a GPU is present");
        return;
    }
    let gpu = Device::Cuda(0);
    let err = Tensor::zeros([2, 3], &gpu).unwrap_err().to_string();
    assert!(
        err.contains("cuda:0") && err.contains("not available"),
        "{err}"
    );
    let x = Tensor::from_vec(vec![1.0, 2.0], [2]).unwrap();
    let err = x.to_device(&gpu).unwrap_err().to_string();
    assert!(err.contains("cuda:0"), "{err}");
    // The same device twice: the tensor itself.
    assert_eq!(x.to_device(&Device::Cpu).unwrap().id(), x.id());
    let err = Tensor::from_vec_on(vec![1.0], [1], &Device::Cuda(7))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cuda:7"), "{err}");
}

#[test]
fn verify_without_a_gpu_exits_with_its_own_code() {
    if !no_gpu() {
        println!("skipped: a GPU is present (moeseg verify runs for real there)");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_moeseg"))
        .args(["verify", "--seed", "1"])
        .output()
        .expect("run moeseg");
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("no GPU"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `--device cpu` runs the table CPU against CPU without a GPU; `--json` writes the run.
#[test]
fn verify_on_the_cpu_writes_its_json_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record/cpu.json");
    let out = Command::new(env!("CARGO_BIN_EXE_moeseg"))
        .args([
            "verify", "--device", "cpu", "--op", "softmax", "--seed", "5",
        ])
        .args(["--runs", "2", "--json"])
        .arg(&path)
        .output()
        .expect("run moeseg");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert!(stdout.contains("all 16 cases pass"), "{stdout}");
    let report = Report::read_json(&path).unwrap();
    assert_eq!(
        (report.device.as_str(), report.seed, report.runs),
        ("cpu", 5, 2)
    );
    assert_eq!(report.filter.as_deref(), Some("softmax"));
    assert_eq!(report.moeseg_version, env!("CARGO_PKG_VERSION"));
    assert!(report.date.ends_with('Z'), "{}", report.date);
    assert!(report.command.as_deref().unwrap().contains("--device cpu"));
    assert_eq!(report.totals.cases, 16);
    assert_eq!(report.totals.passed, 16);
    assert_eq!(
        report.families().into_iter().collect::<Vec<_>>(),
        ["softmax"]
    );
    // An op no case has is an error, not an empty success.
    let out = Command::new(env!("CARGO_BIN_EXE_moeseg"))
        .args([
            "verify",
            "--device",
            "cpu",
            "--op",
            "no-such-op",
            "--seed",
            "5",
        ])
        .output()
        .expect("run moeseg");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn verify_compile_only_compiles_every_family() {
    if let Err(e) = cuda::nvrtc() {
        if std::env::var("MOESEG_REQUIRE_NVRTC").as_deref() == Ok("1") {
            panic!("MOESEG_REQUIRE_NVRTC=1, but NVRTC is missing: {e}");
        }
        println!("skipped verify_compile_only_compiles_every_family: NVRTC not found: {e}");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_moeseg"))
        .args(["verify", "--compile-only", "--arch", "sm_90"])
        .output()
        .expect("run moeseg");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert_eq!(stdout.matches(": ok,").count(), FAMILIES.len(), "{stdout}");
}
