//! The CUDA backend without a GPU: device strings, `auto` falling back to the CPU with one line,
//! CUDA calls failing with clear errors (never panicking), every op family's kernel file
//! embedded, and `moeseg verify` exiting with its "no GPU" code. On a machine with a GPU the
//! no-GPU assertions are skipped with a message (tests/cuda_gpu.rs covers that case).

use moeseg::backend::cuda::{self, KERNELS};
use moeseg::{Device, Tensor};
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
            source.contains("STATUS:"),
            "{family}.cu states its verification status"
        );
        assert!(
            source.contains("static_assert(sizeof("),
            "{family}.cu checks its params' size"
        );
        let path = format!("src/ops/{family}/cuda_kernel.rs");
        assert!(std::path::Path::new(&path).exists(), "{path} is missing");
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
