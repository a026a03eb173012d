//! Finding libnvrtc and libcuda without panicking.
//!
//! cudarc dlopens `libnvrtc.so.13`, `libcuda.so.1`, ... through the system loader only, and
//! panics on its first call when that fails. So before any call this module
//! 1. looks for the library by absolute path in the usual places (for NVRTC: `MOESEG_NVRTC_DIR`,
//!    `CUDA_HOME`, `CUDA_PATH`, `/usr/local/cuda/lib64`, `/usr/local/cuda/lib`, and pip's
//!    `nvidia/cu13/lib` under the `python3` on `PATH`), pre-loads it with libloading and keeps
//!    the handle for the life of the process, so cudarc's later dlopen by name finds it loaded;
//! 2. then asks cudarc's `is_culib_present()` whether its own lookup now succeeds.
//!
//! The result is computed once per process; a failure lists every place searched.

use super::CudaError;
use cudarc::nvrtc::sys as nvrtc_sys;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The NVRTC library file (CUDA 13).
pub const NVRTC_FILE: &str = "libnvrtc.so.13";
/// NVRTC's builtins, which libnvrtc dlopens by name during a compile; pre-loaded first.
pub const NVRTC_BUILTINS_FILE: &str = "libnvrtc-builtins.so.13.0";
/// The CUDA driver library file.
pub const DRIVER_FILE: &str = "libcuda.so.1";

/// The NVRTC that compiles the kernels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvrtcInfo {
    /// `(major, minor)` from `nvrtcVersion`.
    pub version: (i32, i32),
    /// The library file, or a description of where the system loader found it.
    pub path: PathBuf,
}

impl NvrtcInfo {
    /// `"13.0"`.
    pub fn version_string(&self) -> String {
        format!("{}.{}", self.version.0, self.version.1)
    }
}

/// The CUDA driver library (libcuda) that cudarc will use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverInfo {
    /// The library file, or a description of where the system loader found it.
    pub path: PathBuf,
}

/// Libraries pre-loaded by absolute path, kept loaded for the life of the process.
static PRELOADED: Mutex<Vec<libloading::Library>> = Mutex::new(Vec::new());

fn keep_loaded(library: libloading::Library) {
    PRELOADED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(library);
}

/// Finds and loads NVRTC (once per process) and reports its version and file, or an error
/// listing every place it looked. After `Ok`, calls into `cudarc::nvrtc` do not panic.
pub fn nvrtc() -> Result<NvrtcInfo, CudaError> {
    static NVRTC: OnceLock<Result<NvrtcInfo, CudaError>> = OnceLock::new();
    NVRTC.get_or_init(find_nvrtc).clone()
}

/// Finds and loads the CUDA driver library (once per process), or an error listing every place
/// it looked. After `Ok`, calls into `cudarc::driver` do not panic (they may still return
/// errors, e.g. when there is no GPU).
pub fn cuda_driver() -> Result<DriverInfo, CudaError> {
    static DRIVER: OnceLock<Result<DriverInfo, CudaError>> = OnceLock::new();
    DRIVER.get_or_init(find_cuda_driver).clone()
}

/// A folder to look in and why it is on the list.
struct Candidate {
    origin: String,
    dir: PathBuf,
}

/// The folders that may hold libnvrtc, in search order; notes on skipped sources go to
/// `searched`.
fn nvrtc_dirs(searched: &mut Vec<String>) -> Vec<Candidate> {
    let mut dirs = Vec::new();
    match std::env::var_os("MOESEG_NVRTC_DIR") {
        Some(dir) => dirs.push(Candidate {
            origin: "MOESEG_NVRTC_DIR".into(),
            dir: dir.into(),
        }),
        None => searched.push("MOESEG_NVRTC_DIR: not set".into()),
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        match std::env::var_os(var) {
            Some(root) => {
                let root = PathBuf::from(root);
                for sub in ["lib64", "lib"] {
                    dirs.push(Candidate {
                        origin: var.into(),
                        dir: root.join(sub),
                    });
                }
            }
            None => searched.push(format!("{var}: not set")),
        }
    }
    for dir in ["/usr/local/cuda/lib64", "/usr/local/cuda/lib"] {
        dirs.push(Candidate {
            origin: "default CUDA install".into(),
            dir: dir.into(),
        });
    }
    match pip_nvidia_dirs("cu13") {
        Ok(found) if found.is_empty() => searched.push(
            "pip (python3's sys.path): no nvidia/cu13/lib folder \
             (pip install nvidia-cuda-nvrtc==13.0.88 provides one)"
                .into(),
        ),
        Ok(found) => dirs.extend(found.into_iter().map(|dir| Candidate {
            origin: "pip nvidia-cuda-nvrtc".into(),
            dir,
        })),
        Err(why) => searched.push(format!("pip (python3's sys.path): {why}")),
    }
    dirs
}

/// The `nvidia/<sub>/lib` folders under every `sys.path` entry of the `python3` on `PATH`.
fn pip_nvidia_dirs(sub: &str) -> Result<Vec<PathBuf>, String> {
    let script = format!(
        "import os, sys\n\
         for p in sys.path:\n    \
             d = os.path.join(p or '.', 'nvidia', '{sub}', 'lib')\n    \
             if os.path.isdir(d): print(os.path.abspath(d))\n"
    );
    let output = Command::new("python3")
        .args(["-c", &script])
        .output()
        .map_err(|e| format!("python3 could not be run ({e})"))?;
    if !output.status.success() {
        return Err(format!(
            "python3 failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let dir = PathBuf::from(line.trim());
        if !line.trim().is_empty() && !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    Ok(dirs)
}

/// Loads `path` and keeps it loaded; `Err` says why not.
fn preload(path: &Path) -> Result<(), String> {
    // SAFETY: loading a CUDA library runs its initialisers, which have no preconditions.
    match unsafe { libloading::Library::new(path) } {
        Ok(library) => {
            keep_loaded(library);
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Whether cudarc's own lookup of libnvrtc succeeds now.
fn cudarc_finds_nvrtc() -> bool {
    // SAFETY: only tries to dlopen the library under its usual names.
    unsafe { nvrtc_sys::is_culib_present() }
}

/// Whether cudarc's own lookup of libcuda succeeds now.
fn cudarc_finds_driver() -> bool {
    // SAFETY: only tries to dlopen the library under its usual names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// NVRTC's version; only after cudarc found the library.
fn nvrtc_version() -> Result<(i32, i32), String> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked by the caller), the pointers are valid.
    let status = unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
    match status {
        nvrtc_sys::nvrtcResult::NVRTC_SUCCESS => Ok((major, minor)),
        other => Err(format!("nvrtcVersion returned {other:?}")),
    }
}

/// The file of a loaded library whose name starts with `prefix`, from `/proc/self/maps`.
fn loaded_path(prefix: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(PathBuf::from)
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(prefix))
        })
}

fn find_nvrtc() -> Result<NvrtcInfo, CudaError> {
    let mut searched = Vec::new();
    let found = |path: PathBuf, searched: &mut Vec<String>| match nvrtc_version() {
        Ok(version) => Some(NvrtcInfo { version, path }),
        Err(why) => {
            searched.push(why);
            None
        }
    };
    for Candidate { origin, dir } in nvrtc_dirs(&mut searched) {
        let library = dir.join(NVRTC_FILE);
        if !library.is_file() {
            searched.push(format!("{} ({origin}): not there", library.display()));
            continue;
        }
        // The builtins first: libnvrtc dlopens them by name when it compiles.
        let builtins = dir.join(NVRTC_BUILTINS_FILE);
        if let Err(why) = preload(&builtins) {
            searched.push(format!(
                "{} ({origin}): could not be loaded: {why}",
                builtins.display()
            ));
            continue;
        }
        if let Err(why) = preload(&library) {
            searched.push(format!(
                "{} ({origin}): could not be loaded: {why}",
                library.display()
            ));
            continue;
        }
        if !cudarc_finds_nvrtc() {
            searched.push(format!(
                "{} ({origin}): loaded, but cudarc still does not find libnvrtc by name",
                library.display()
            ));
            continue;
        }
        if let Some(info) = found(library, &mut searched) {
            return Ok(info);
        }
    }
    if cudarc_finds_nvrtc() {
        let path = loaded_path("libnvrtc.so")
            .unwrap_or_else(|| PathBuf::from("(found by the system loader)"));
        if let Some(info) = found(path, &mut searched) {
            return Ok(info);
        }
    }
    searched.push(
        "the system loader (LD_LIBRARY_PATH, ldconfig cache) under cudarc's names \
         libnvrtc.so, libnvrtc.so.13, libnvrtc.so.12, ...: not found"
            .into(),
    );
    Err(CudaError::LibraryNotFound {
        library: NVRTC_FILE,
        searched,
    })
}

fn find_cuda_driver() -> Result<DriverInfo, CudaError> {
    // The driver normally sits on the loader path (/usr/lib/x86_64-linux-gnu).
    if cudarc_finds_driver() {
        let path = loaded_path("libcuda.so")
            .unwrap_or_else(|| PathBuf::from("(found by the system loader)"));
        return Ok(DriverInfo { path });
    }
    let mut searched = vec![
        "the system loader (LD_LIBRARY_PATH, ldconfig cache) under cudarc's names \
         libcuda.so, libcuda.so.1, libcuda.so.13, ...: not found"
            .to_string(),
    ];
    let mut dirs = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        match std::env::var_os(var) {
            Some(root) => {
                let root = PathBuf::from(root);
                dirs.push((var.to_string(), root.join("compat")));
                dirs.push((var.to_string(), root.join("lib64")));
            }
            None => searched.push(format!("{var}: not set")),
        }
    }
    for dir in [
        "/usr/local/cuda/compat",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib/wsl/lib",
    ] {
        dirs.push(("driver folder".to_string(), PathBuf::from(dir)));
    }
    for (origin, dir) in dirs {
        let library = dir.join(DRIVER_FILE);
        if !library.is_file() {
            searched.push(format!("{} ({origin}): not there", library.display()));
            continue;
        }
        if let Err(why) = preload(&library) {
            searched.push(format!(
                "{} ({origin}): could not be loaded: {why}",
                library.display()
            ));
            continue;
        }
        if cudarc_finds_driver() {
            return Ok(DriverInfo { path: library });
        }
        searched.push(format!(
            "{} ({origin}): loaded, but cudarc still does not find libcuda by name",
            library.display()
        ));
    }
    Err(CudaError::LibraryNotFound {
        library: "libcuda.so.1 (the NVIDIA driver)",
        searched,
    })
}
