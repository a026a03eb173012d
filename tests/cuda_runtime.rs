//! The CUDA runtime foundation without a GPU: device requests and selection, finding NVRTC,
//! compiling every embedded kernel family with NVRTC, and the kernel caches.
//!
//! Tests that need NVRTC print "skipped: ..." with every place searched when it is missing and
//! pass, unless `MOESEG_REQUIRE_NVRTC=1` (set by `.ci/run`), in which case they fail.

use moeseg::backend::cuda::{
    self, select, Arch, CompileFailure, CudaError, DeviceRequest, KernelCompiler, NvrtcInfo,
    Origin, OutputFormat, Selected, KERNELS,
};
use std::path::PathBuf;

/// NVRTC, or `None` after printing why the test is skipped; panics when NVRTC is required.
fn nvrtc_or_skip(test: &str) -> Option<NvrtcInfo> {
    match cuda::nvrtc() {
        Ok(info) => Some(info),
        Err(e) => {
            if std::env::var("MOESEG_REQUIRE_NVRTC").as_deref() == Ok("1") {
                panic!("MOESEG_REQUIRE_NVRTC=1, but NVRTC is missing: {e}");
            }
            println!("skipped {test}: NVRTC not found (a skip is not a pass): {e}");
            None
        }
    }
}

/// A fresh, empty folder for a disk cache.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moeseg-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The names of the `extern "C" __global__` functions of a kernel source.
fn kernel_names(source: &str) -> Vec<String> {
    source
        .split("extern \"C\" __global__ void ")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .map(|name| name.trim().to_string())
        .collect()
}

#[test]
fn device_requests_parse() {
    assert_eq!("auto".parse(), Ok(DeviceRequest::Auto));
    assert_eq!("cpu".parse(), Ok(DeviceRequest::Cpu));
    assert_eq!("cuda".parse(), Ok(DeviceRequest::Cuda { ordinal: 0 }));
    assert_eq!("cuda:1".parse(), Ok(DeviceRequest::Cuda { ordinal: 1 }));
    let err = "gpu".parse::<DeviceRequest>().unwrap_err().to_string();
    assert!(
        err.contains("gpu") && err.contains("auto, cpu, cuda, cuda:N"),
        "{err}"
    );
    let err = "cuda:one".parse::<DeviceRequest>().unwrap_err().to_string();
    assert!(err.contains("`one` is not a device number"), "{err}");
    assert_eq!(
        select(DeviceRequest::Cpu),
        Ok(Selected::Cpu { reason: None })
    );
}

#[test]
fn auto_falls_back_to_the_cpu_with_a_reason_and_cuda_says_why() {
    let driver = cuda::cuda_driver();
    let auto = select(DeviceRequest::Auto);
    println!("select(auto) = {auto:?}");
    let cuda0 = select(DeviceRequest::Cuda { ordinal: 0 });
    match &driver {
        Err(e) => {
            // This machine (and CI): no NVIDIA driver.
            let reason = match auto {
                Ok(Selected::Cpu {
                    reason: Some(reason),
                }) => reason,
                other => panic!("select(auto) without a driver gave {other:?}"),
            };
            assert!(
                reason.contains("no CUDA driver") && reason.contains("libcuda"),
                "{reason}"
            );
            assert!(
                !reason.contains('\n'),
                "the fallback notice is one line: {reason}"
            );
            let msg = cuda0
                .expect_err("cuda without a driver must fail")
                .to_string();
            println!("select(cuda) error:\n{msg}");
            assert!(
                msg.contains("cuda:0") && msg.contains("no CUDA driver"),
                "{msg}"
            );
            assert!(
                msg.contains("looked in") && msg.contains("/usr/lib"),
                "{msg}"
            );
            assert!(e.to_string().contains("system loader"), "{e}");
        }
        Ok(info) => {
            println!("CUDA driver at {}", info.path.display());
            match auto {
                Ok(Selected::Cuda { ordinal: 0 }) => assert!(cuda0.is_ok()),
                Ok(Selected::Cpu {
                    reason: Some(reason),
                }) => {
                    assert!(cuda0.is_err(), "auto fell back ({reason}) but cuda worked")
                }
                other => panic!("select(auto) gave {other:?}"),
            }
        }
    }
    let msg = select(DeviceRequest::Cuda { ordinal: 4096 })
        .expect_err("there is no device 4096")
        .to_string();
    assert!(msg.contains("cuda:4096"), "{msg}");
}

#[test]
fn nvrtc_is_found_or_reports_where_it_looked() {
    match cuda::nvrtc() {
        Ok(info) => {
            println!("NVRTC {} at {}", info.version_string(), info.path.display());
            assert!(info.version.0 >= 12, "{info:?}");
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("libnvrtc.so.13") && msg.contains("CUDA_HOME"),
                "{msg}"
            );
            assert!(msg.contains("/usr/local/cuda/lib64"), "{msg}");
            nvrtc_or_skip("nvrtc_is_found_or_reports_where_it_looked");
        }
    }
}

#[test]
fn kernels_are_embedded_sorted() {
    let families: Vec<&str> = KERNELS.iter().map(|(family, _)| *family).collect();
    assert!(families.contains(&"patch_grid"), "{families:?}");
    assert!(families.windows(2).all(|w| w[0] < w[1]), "{families:?}");
    let source = cuda::kernel_source("patch_grid").unwrap();
    assert_eq!(
        kernel_names(source),
        [
            "patch_split",
            "patch_split_backward",
            "patch_reassemble",
            "patch_reassemble_backward"
        ]
    );
    assert!(!source.contains("#include"), "kernels include no headers");
    let err = cuda::kernel_source("nope").unwrap_err().to_string();
    assert!(err.contains("nope") && err.contains("patch_grid"), "{err}");
}

#[test]
fn every_kernel_family_compiles_for_sm80_and_sm90() {
    let Some(nvrtc) = nvrtc_or_skip("every_kernel_family_compiles_for_sm80_and_sm90") else {
        return;
    };
    println!(
        "NVRTC {} at {}",
        nvrtc.version_string(),
        nvrtc.path.display()
    );
    // No disk cache: every compile here is a real NVRTC call.
    let compiler = KernelCompiler::new(None);
    let mut compiles = 0;
    for (family, source) in KERNELS {
        for arch in ["sm_80", "sm_90"] {
            let arch = Arch::parse(arch).unwrap();
            for format in [OutputFormat::Cubin, OutputFormat::Ptx] {
                let compiled = compiler
                    .compile_family(family, &arch, format)
                    .unwrap_or_else(|e| panic!("{e}"));
                compiles += 1;
                let Origin::Nvrtc { seconds } = compiled.origin else {
                    panic!(
                        "{family} {arch}: expected a fresh compile, got {:?}",
                        compiled.origin
                    );
                };
                let image = &compiled.image;
                println!(
                    "{family}.cu {arch} {format:?}: {:.2} s, {} bytes",
                    seconds,
                    image.bytes.len()
                );
                match format {
                    OutputFormat::Cubin => assert_eq!(&image.bytes[..4], b"\x7fELF"),
                    OutputFormat::Ptx => {
                        let ptx = String::from_utf8_lossy(&image.bytes);
                        assert!(ptx.contains(&format!(".target {arch}")), "{family} {arch}");
                        for name in kernel_names(source) {
                            assert!(ptx.contains(&format!(".entry {name}(")), "{family}: {name}");
                        }
                    }
                }
                image.to_module_image().unwrap();
            }
        }
    }
    assert_eq!(compiler.nvrtc_compiles(), compiles);
}

#[test]
fn the_disk_cache_is_hit_on_a_second_compile() {
    let Some(_) = nvrtc_or_skip("the_disk_cache_is_hit_on_a_second_compile") else {
        return;
    };
    let dir = fresh_dir("kernel-cache");
    let sm90 = Arch::parse("sm_90").unwrap();
    let first = KernelCompiler::new(Some(dir.clone()));
    let compiled = first
        .compile_family("patch_grid", &sm90, OutputFormat::Cubin)
        .unwrap();
    assert!(
        matches!(compiled.origin, Origin::Nvrtc { .. }),
        "{compiled:?}"
    );
    assert_eq!(compiled.cache_note, None);
    // The same compiler: from memory.
    let again = first
        .compile_family("patch_grid", &sm90, OutputFormat::Cubin)
        .unwrap();
    assert_eq!(again.origin, Origin::MemoryCache);
    assert_eq!(first.nvrtc_compiles(), 1);

    // A new compiler (a new process, in effect): from disk, same bytes, no NVRTC call.
    let second = KernelCompiler::new(Some(dir.clone()));
    let cached = second
        .compile_family("patch_grid", &sm90, OutputFormat::Cubin)
        .unwrap();
    let Origin::DiskCache { path } = &cached.origin else {
        panic!("expected a disk-cache hit, got {:?}", cached.origin);
    };
    println!("disk cache hit: {}", path.display());
    assert!(path.starts_with(&dir));
    assert_eq!(cached.image.bytes, compiled.image.bytes);
    assert_eq!(second.nvrtc_compiles(), 0);

    // Another architecture is another entry; nothing temporary is left behind.
    let sm80 = Arch::parse("sm_80").unwrap();
    second
        .compile_family("patch_grid", &sm80, OutputFormat::Cubin)
        .unwrap();
    assert_eq!(second.nvrtc_compiles(), 1);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].starts_with("patch_grid-sm_80-") && files[0].ends_with(".cubin"));
    assert!(files[1].starts_with("patch_grid-sm_90-") && files[1].ends_with(".cubin"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_broken_kernel_reports_the_nvrtc_log_with_its_file_name() {
    let Some(_) = nvrtc_or_skip("a_broken_kernel_reports_the_nvrtc_log_with_its_file_name") else {
        return;
    };
    let source =
        "extern \"C\" __global__ void broken(float* out) {\n    out[0] = undefined_value;\n}\n";
    let compiler = KernelCompiler::new(None);
    let sm90 = Arch::parse("sm_90").unwrap();
    let err = compiler
        .compile("broken_kernel.cu", source, &sm90, OutputFormat::Cubin)
        .expect_err("the source does not compile");
    let CudaError::Compile(failure) = &err else {
        panic!("expected a compile error, got {err:?}");
    };
    let CompileFailure {
        file, arch, log, ..
    } = failure.as_ref();
    assert_eq!(
        (file.as_str(), arch.as_str()),
        ("broken_kernel.cu", "sm_90")
    );
    assert!(
        log.contains("broken_kernel.cu") && log.contains("undefined_value"),
        "{log}"
    );
    let msg = err.to_string();
    println!("{msg}");
    assert!(
        msg.contains("broken_kernel.cu") && msg.contains(log.as_str()),
        "{msg}"
    );
    // The engine error carries it too.
    let engine = moeseg::error::Error::cuda(err.clone()).to_string();
    assert_eq!(engine, msg);
}
