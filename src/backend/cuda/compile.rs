//! Compiling kernel sources with NVRTC for one GPU architecture, cached in memory and on disk.
//!
//! A compile is keyed by a 128-bit FNV-1a hash of (file name, source, NVRTC options, NVRTC
//! version, architecture, output format). [`KernelCompiler::compile`] returns the image from
//! its memory cache, else from the disk cache (`$MOESEG_KERNEL_CACHE`, else
//! `$XDG_CACHE_HOME/moeseg/kernels`, else `~/.cache/moeseg/kernels`), else compiles it and
//! stores it in both. Disk entries are written to a temporary file and renamed into place, so a
//! reader never sees half a file. The disk cache is best effort: when it cannot be read or
//! written the compile still succeeds and [`Compiled::cache_note`] says why.

use super::libraries::{self, NvrtcInfo};
use super::{compilable_source, CompileFailure, CudaError};
use cudarc::nvrtc::sys::{self as nvrtc_sys, nvrtcProgram, nvrtcResult};
use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// A real GPU architecture for NVRTC's `--gpu-architecture`: `sm_80` (A100), `sm_90` (H100),
/// `sm_90a`, ...
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Arch(String);

impl Arch {
    /// Parses `sm_XY` with an optional `a`/`f` suffix.
    pub fn parse(name: &str) -> Result<Arch, CudaError> {
        let digits = name.strip_prefix("sm_").unwrap_or("");
        let digits = digits.strip_suffix(['a', 'f']).unwrap_or(digits);
        if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CudaError::InvalidArch(name.to_string()));
        }
        Ok(Arch(name.to_string()))
    }

    /// The architecture of a device of compute capability `major.minor` (`(9, 0)` → `sm_90`).
    pub fn from_compute_capability(major: u32, minor: u32) -> Arch {
        Arch(format!("sm_{major}{minor}"))
    }

    /// `"sm_90"`.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What NVRTC hands back: PTX text (JIT-compiled by the driver at load) or a CUBIN for exactly
/// the architecture (no JIT at load).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    Ptx,
    Cubin,
}

impl OutputFormat {
    fn extension(self) -> &'static str {
        match self {
            OutputFormat::Ptx => "ptx",
            OutputFormat::Cubin => "cubin",
        }
    }
}

/// One compiled kernel file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelImage {
    /// The kernel file name NVRTC saw, e.g. `patch_grid.cu`.
    pub file: String,
    pub arch: Arch,
    pub format: OutputFormat,
    /// The PTX text (no trailing NUL) or the CUBIN bytes.
    pub bytes: Vec<u8>,
}

impl KernelImage {
    /// The image as cudarc takes it for `CudaContext::load_module`.
    pub fn to_module_image(&self) -> Result<cudarc::nvrtc::Ptx, CudaError> {
        match self.format {
            OutputFormat::Cubin => Ok(cudarc::nvrtc::Ptx::from_binary(self.bytes.clone())),
            OutputFormat::Ptx => String::from_utf8(self.bytes.clone())
                .map(cudarc::nvrtc::Ptx::from_src)
                .map_err(|e| CudaError::Nvrtc {
                    file: self.file.clone(),
                    call: "nvrtcGetPTX (PTX text is not UTF-8)",
                    status: e.to_string(),
                }),
        }
    }
}

/// Where [`KernelCompiler::compile`] got an image from.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    /// Compiled now by NVRTC, in `seconds`.
    Nvrtc { seconds: f64 },
    /// This compiler's memory cache.
    MemoryCache,
    /// The disk cache file `path`.
    DiskCache { path: PathBuf },
}

/// A compile result: the image (shared with the memory cache) and where it came from.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub image: Arc<KernelImage>,
    pub origin: Origin,
    /// Why the disk cache could not be read or written, when that happened.
    pub cache_note: Option<String>,
}

/// Compiles kernel sources with NVRTC and caches the results in memory and on disk.
pub struct KernelCompiler {
    disk_dir: Option<PathBuf>,
    memory: Mutex<HashMap<u128, Arc<KernelImage>>>,
    nvrtc_compiles: AtomicUsize,
}

/// The disk cache folder: `$MOESEG_KERNEL_CACHE`, else `$XDG_CACHE_HOME/moeseg/kernels`, else
/// `$HOME/.cache/moeseg/kernels`; `None` when none of them is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(dir) = var("MOESEG_KERNEL_CACHE") {
        return Some(dir.into());
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("moeseg").join("kernels"));
    }
    var("HOME").map(|home| {
        PathBuf::from(home)
            .join(".cache")
            .join("moeseg")
            .join("kernels")
    })
}

/// The options every kernel is compiled with, for `arch`.
fn nvrtc_options(arch: &Arch) -> Vec<String> {
    vec![
        // A real architecture, so NVRTC also runs ptxas and PTX errors show at compile time.
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        // Source lines for compute-sanitizer and ncu; no effect on the code.
        "--generate-line-info".to_string(),
    ]
}

impl KernelCompiler {
    /// A compiler with its disk cache in `disk_dir` (`None`: memory cache only).
    pub fn new(disk_dir: Option<PathBuf>) -> Self {
        KernelCompiler {
            disk_dir,
            memory: Mutex::new(HashMap::new()),
            nvrtc_compiles: AtomicUsize::new(0),
        }
    }

    /// The process-wide compiler, with its disk cache in [`default_cache_dir`].
    pub fn global() -> &'static KernelCompiler {
        static GLOBAL: OnceLock<KernelCompiler> = OnceLock::new();
        GLOBAL.get_or_init(|| KernelCompiler::new(default_cache_dir()))
    }

    /// The disk cache folder, if any.
    pub fn disk_dir(&self) -> Option<&Path> {
        self.disk_dir.as_deref()
    }

    /// How many times this compiler has called NVRTC (cache hits do not count).
    pub fn nvrtc_compiles(&self) -> usize {
        self.nvrtc_compiles.load(Ordering::Relaxed)
    }

    /// Compiles the embedded kernel family `family` (`kernels/<family>.cu`).
    pub fn compile_family(
        &self,
        family: &str,
        arch: &Arch,
        format: OutputFormat,
    ) -> Result<Compiled, CudaError> {
        let source = compilable_source(family)?;
        self.compile(&format!("{family}.cu"), &source, arch, format)
    }

    /// Compiles `source` (NVRTC names it `file` in its messages) for `arch`, through the caches.
    pub fn compile(
        &self,
        file: &str,
        source: &str,
        arch: &Arch,
        format: OutputFormat,
    ) -> Result<Compiled, CudaError> {
        let nvrtc = libraries::nvrtc()?;
        let options = nvrtc_options(arch);
        let key = cache_key(file, source, &options, &nvrtc, arch, format);
        if let Some(image) = self.memory_lookup(key) {
            return Ok(Compiled {
                image,
                origin: Origin::MemoryCache,
                cache_note: None,
            });
        }
        let disk_path = self.disk_dir.as_ref().map(|dir| {
            let stem = file.strip_suffix(".cu").unwrap_or(file);
            dir.join(format!("{stem}-{arch}-{key:032x}.{}", format.extension()))
        });
        let mut cache_note = None;
        if let Some(path) = &disk_path {
            match std::fs::read(path) {
                Ok(bytes) if !bytes.is_empty() => {
                    let image = self.remember(key, file, arch, format, bytes);
                    return Ok(Compiled {
                        image,
                        origin: Origin::DiskCache { path: path.clone() },
                        cache_note: None,
                    });
                }
                Ok(_) => cache_note = Some(format!("{}: empty, recompiled", path.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => cache_note = Some(format!("{}: could not be read: {e}", path.display())),
            }
        }
        let start = Instant::now();
        self.nvrtc_compiles.fetch_add(1, Ordering::Relaxed);
        let bytes = nvrtc_compile(file, source, &options, arch, format, &nvrtc)?;
        let seconds = start.elapsed().as_secs_f64();
        if let Some(path) = &disk_path {
            if let Err(why) = write_atomically(path, &bytes) {
                cache_note = Some(why);
            }
        }
        let image = self.remember(key, file, arch, format, bytes);
        Ok(Compiled {
            image,
            origin: Origin::Nvrtc { seconds },
            cache_note,
        })
    }

    fn memory_lookup(&self, key: u128) -> Option<Arc<KernelImage>> {
        let memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        memory.get(&key).cloned()
    }

    fn remember(
        &self,
        key: u128,
        file: &str,
        arch: &Arch,
        format: OutputFormat,
        bytes: Vec<u8>,
    ) -> Arc<KernelImage> {
        let image = Arc::new(KernelImage {
            file: file.to_string(),
            arch: arch.clone(),
            format,
            bytes,
        });
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        memory.insert(key, image.clone());
        image
    }
}

/// The NVRTC cache key: [`fnv128`] over every input of a compile.
fn cache_key(
    file: &str,
    source: &str,
    options: &[String],
    nvrtc: &NvrtcInfo,
    arch: &Arch,
    format: OutputFormat,
) -> u128 {
    let version = nvrtc.version_string();
    let fields = [
        b"moeseg-kernel-cache-v1".as_slice(),
        file.as_bytes(),
        source.as_bytes(),
    ];
    let tail = [
        version.as_bytes(),
        arch.name().as_bytes(),
        format.extension().as_bytes(),
    ];
    fnv128(
        fields
            .into_iter()
            .chain(options.iter().map(|o| o.as_bytes()))
            .chain(tail),
    )
}

/// 128-bit FNV-1a over `fields`, each length-prefixed so fields cannot run into each other.
/// Stable across Rust versions and machines (unlike `DefaultHasher`): the disk caches' key.
pub(crate) fn fnv128<'a>(fields: impl IntoIterator<Item = &'a [u8]>) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut hash = OFFSET;
    for field in fields {
        for &byte in (field.len() as u64).to_le_bytes().iter().chain(field) {
            hash = (hash ^ u128::from(byte)).wrapping_mul(PRIME);
        }
    }
    hash
}

/// Writes `bytes` to a temporary file next to `path` and renames it into place.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "kernel cache folder {}: could not be created: {e}",
            dir.display()
        )
    })?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let temp = path.with_extension(format!("tmp.{}.{nanos}", std::process::id()));
    std::fs::write(&temp, bytes)
        .map_err(|e| format!("{}: could not be written: {e}", temp.display()))?;
    std::fs::rename(&temp, path).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        format!(
            "{}: could not be renamed to {}: {e}",
            temp.display(),
            path.display()
        )
    })
}

/// An NVRTC program, destroyed on drop.
struct Program(nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from nvrtcCreateProgram and is destroyed once.
        let _ = unsafe { nvrtc_sys::nvrtcDestroyProgram(&mut self.0) };
    }
}

/// Reads a size-then-bytes NVRTC output (`get_size`, then `get` into a buffer of that size).
fn read_output(
    file: &str,
    call: &'static str,
    get_size: impl FnOnce(*mut usize) -> nvrtcResult,
    get: impl FnOnce(*mut c_char) -> nvrtcResult,
) -> Result<Vec<u8>, CudaError> {
    let failed = |status: nvrtcResult| CudaError::Nvrtc {
        file: file.to_string(),
        call,
        status: format!("{status:?}"),
    };
    let mut size = 0usize;
    let status = get_size(&mut size);
    if status != nvrtcResult::NVRTC_SUCCESS {
        return Err(failed(status));
    }
    let mut buffer = vec![0u8; size];
    if size > 0 {
        let status = get(buffer.as_mut_ptr().cast());
        if status != nvrtcResult::NVRTC_SUCCESS {
            return Err(failed(status));
        }
    }
    Ok(buffer)
}

/// One NVRTC compile of `source` (`libraries::nvrtc()` has succeeded, so calls do not panic).
fn nvrtc_compile(
    file: &str,
    source: &str,
    options: &[String],
    arch: &Arch,
    format: OutputFormat,
    nvrtc: &NvrtcInfo,
) -> Result<Vec<u8>, CudaError> {
    let nvrtc_failed = |call: &'static str, status: String| CudaError::Nvrtc {
        file: file.to_string(),
        call,
        status,
    };
    let source_c = CString::new(source).map_err(|_| {
        nvrtc_failed(
            "nvrtcCreateProgram",
            "the source contains a NUL byte".into(),
        )
    })?;
    let file_c = CString::new(file).map_err(|_| {
        nvrtc_failed(
            "nvrtcCreateProgram",
            "the file name contains a NUL byte".into(),
        )
    })?;
    let options_c = options
        .iter()
        .map(|option| CString::new(option.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            nvrtc_failed(
                "nvrtcCompileProgram",
                "an option contains a NUL byte".into(),
            )
        })?;
    let option_ptrs: Vec<*const c_char> = options_c.iter().map(|o| o.as_ptr()).collect();

    let mut raw: nvrtcProgram = std::ptr::null_mut();
    // SAFETY: valid NUL-terminated strings; no headers.
    let status = unsafe {
        nvrtc_sys::nvrtcCreateProgram(
            &mut raw,
            source_c.as_ptr(),
            file_c.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if status != nvrtcResult::NVRTC_SUCCESS {
        return Err(nvrtc_failed("nvrtcCreateProgram", format!("{status:?}")));
    }
    let program = Program(raw);
    // SAFETY: `program` is live; `option_ptrs` point into `options_c`, alive for the call.
    let status = unsafe {
        nvrtc_sys::nvrtcCompileProgram(program.0, option_ptrs.len() as i32, option_ptrs.as_ptr())
    };
    if status != nvrtcResult::NVRTC_SUCCESS {
        let log = read_output(
            file,
            "nvrtcGetProgramLog",
            // SAFETY: `program` is live and the pointers are valid for the sizes NVRTC reports.
            |size| unsafe { nvrtc_sys::nvrtcGetProgramLogSize(program.0, size) },
            |buffer| unsafe { nvrtc_sys::nvrtcGetProgramLog(program.0, buffer) },
        )
        .map(|bytes| trim_nul(&bytes))
        .unwrap_or_else(|e| format!("(no log: {e})"));
        return Err(CudaError::Compile(Box::new(CompileFailure {
            file: file.to_string(),
            arch: arch.to_string(),
            compiler: format!("NVRTC {}", nvrtc.version_string()),
            status: format!("{status:?}"),
            options: options.to_vec(),
            log,
        })));
    }
    let bytes = match format {
        OutputFormat::Ptx => read_output(
            file,
            "nvrtcGetPTX",
            // SAFETY: as above.
            |size| unsafe { nvrtc_sys::nvrtcGetPTXSize(program.0, size) },
            |buffer| unsafe { nvrtc_sys::nvrtcGetPTX(program.0, buffer) },
        )
        .map(|bytes| trim_nul(&bytes).into_bytes())?,
        OutputFormat::Cubin => read_output(
            file,
            "nvrtcGetCUBIN",
            // SAFETY: as above.
            |size| unsafe { nvrtc_sys::nvrtcGetCUBINSize(program.0, size) },
            |buffer| unsafe { nvrtc_sys::nvrtcGetCUBIN(program.0, buffer) },
        )?,
    };
    if bytes.is_empty() {
        return Err(nvrtc_failed(
            "nvrtcGetPTX/nvrtcGetCUBIN",
            format!("empty {} output", format.extension()),
        ));
    }
    Ok(bytes)
}

/// NVRTC text (log, PTX) without its trailing NUL.
fn trim_nul(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names() {
        for good in ["sm_80", "sm_90", "sm_90a", "sm_100f"] {
            assert_eq!(
                Arch::parse(good).map(|a| a.to_string()),
                Ok(good.to_string())
            );
        }
        for bad in ["sm80", "compute_90", "sm_", "sm_9", "sm_x0", "90"] {
            assert!(Arch::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Arch::from_compute_capability(9, 0).name(), "sm_90");
    }

    #[test]
    fn cache_key_depends_on_every_input() {
        let nvrtc = NvrtcInfo {
            version: (13, 0),
            path: PathBuf::from("x"),
        };
        let sm90 = Arch::parse("sm_90").unwrap();
        let options = nvrtc_options(&sm90);
        let base = cache_key("a.cu", "src", &options, &nvrtc, &sm90, OutputFormat::Cubin);
        assert_eq!(
            base,
            cache_key("a.cu", "src", &options, &nvrtc, &sm90, OutputFormat::Cubin)
        );
        let other_version = NvrtcInfo {
            version: (13, 1),
            ..nvrtc.clone()
        };
        let sm80 = Arch::parse("sm_80").unwrap();
        for other in [
            cache_key("b.cu", "src", &options, &nvrtc, &sm90, OutputFormat::Cubin),
            cache_key("a.cu", "src2", &options, &nvrtc, &sm90, OutputFormat::Cubin),
            cache_key(
                "a.cu",
                "src",
                &options[1..],
                &nvrtc,
                &sm90,
                OutputFormat::Cubin,
            ),
            cache_key(
                "a.cu",
                "src",
                &options,
                &other_version,
                &sm90,
                OutputFormat::Cubin,
            ),
            cache_key("a.cu", "src", &options, &nvrtc, &sm80, OutputFormat::Cubin),
            cache_key("a.cu", "src", &options, &nvrtc, &sm90, OutputFormat::Ptx),
        ] {
            assert_ne!(base, other);
        }
    }
}
