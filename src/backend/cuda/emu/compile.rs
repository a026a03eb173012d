//! Compiling a kernel family for the emulated device: the host C++ compiler instead of NVRTC.
//!
//! The translation unit is `cuda_emu.h` (the CUDA built-ins on the host), then exactly what
//! NVRTC compiles ([`compilable_source`]: the prelude and `kernels/<family>.cu` under `#line`
//! directives, so reports name the kernel file and line), then two exported entry points per
//! kernel: `emu_run_<kernel>` (run one thread) and `emu_signature_<kernel>` (its parameter size
//! and buffer count). The object is built with the undefined-behaviour sanitizer's checks whose
//! handlers `cuda_emu.h` defines (no sanitizer runtime is linked), and linked into one shared
//! object per family with hidden visibility, so families loaded side by side share no symbols.
//! Shared objects are cached on disk next to the NVRTC output (`<cache>/emu/`), keyed by an
//! FNV-1a hash of the sources, the compiler's version and the flags; written by rename, so a
//! reader never sees half a file.

use crate::backend::cuda::compile::{default_cache_dir, fnv128, write_atomically};
use crate::backend::cuda::{compilable_source, CudaError};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The host-side CUDA header.
pub const EMU_HEADER: &str = include_str!("cuda_emu.h");

/// The undefined behaviour the emulated kernels check (each reported as a launch error).
const SANITIZE: &str = "-fsanitize=integer-divide-by-zero,float-cast-overflow,shift,\
                        signed-integer-overflow,bounds,vla-bound,null,return,unreachable,bool,enum";

/// Compile flags: optimised, position-independent, nothing exported but the entry points, no
/// contraction into fused multiply-adds (the CPU reference has none either).
const CXX_FLAGS: &[&str] = &[
    "-std=c++17",
    "-O2",
    "-fPIC",
    "-fvisibility=hidden",
    "-fno-strict-aliasing",
    "-ffp-contract=off",
    "-w",
    SANITIZE,
];

/// The host C++ compiler: `$MOESEG_EMU_CXX`, else `$CXX`, else the first of `c++`, `g++`,
/// `clang++` that runs; with its `--version` line (part of the cache key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCompiler {
    pub program: String,
    pub version: String,
}

/// The host compiler (looked up once per process), or an error listing what was tried.
pub fn host_compiler() -> Result<HostCompiler, CudaError> {
    static FOUND: OnceLock<Result<HostCompiler, CudaError>> = OnceLock::new();
    FOUND.get_or_init(find_host_compiler).clone()
}

fn find_host_compiler() -> Result<HostCompiler, CudaError> {
    let mut candidates = Vec::new();
    for var in ["MOESEG_EMU_CXX", "CXX"] {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            candidates.push((value.to_string_lossy().into_owned(), var));
        }
    }
    for program in ["c++", "g++", "clang++"] {
        candidates.push((program.to_string(), "PATH"));
    }
    let mut searched = Vec::new();
    for (program, origin) in candidates {
        match Command::new(&program).arg("--version").output() {
            Ok(out) if out.status.success() => {
                let version = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                return Ok(HostCompiler { program, version });
            }
            Ok(out) => searched.push(format!(
                "{program} ({origin}): --version failed ({})",
                out.status
            )),
            Err(e) => searched.push(format!("{program} ({origin}): {e}")),
        }
    }
    searched.push("install one: apt-get install g++ (Debian/Ubuntu)".to_string());
    Err(CudaError::LibraryNotFound {
        library: "a host C++ compiler for the emulated CUDA device",
        searched,
    })
}

/// The names of the `__global__` functions of a kernel source, in order.
pub fn kernel_names(source: &str) -> Vec<&str> {
    source
        .match_indices("__global__")
        .filter_map(|(at, word)| {
            let rest = source[at + word.len()..].trim_start();
            let rest = rest.strip_prefix("void")?.trim_start();
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
            (end > 0).then(|| &rest[..end])
        })
        .collect()
}

/// The whole translation unit for `source` (a family's compilable source, or a test kernel's).
pub fn translation_unit(file: &str, source: &str) -> String {
    let mut unit =
        format!("#line 1 \"cuda_emu.h\"\n{EMU_HEADER}\n{source}\n#line 1 \"{file}:emu-entries\"\n");
    for kernel in kernel_names(source) {
        unit.push_str(&format!(
            "EMU_EXPORT void emu_run_{kernel}(const EmuThread* t, const void* p, void* const* b) \
             {{ emu_run({kernel}, t, p, b); }}\n\
             EMU_EXPORT void emu_signature_{kernel}(size_t* p, size_t* b) \
             {{ emu_signature({kernel}, p, b); }}\n"
        ));
    }
    unit
}

/// A shared object built from one kernel file.
#[derive(Clone, Debug)]
pub struct EmuObject {
    /// The kernel file, e.g. `conv.cu`.
    pub file: String,
    pub path: PathBuf,
    /// The kernels it exports.
    pub kernels: Vec<String>,
    /// Compiled now (`Some(seconds)`) or found in the disk cache (`None`).
    pub compile_seconds: Option<f64>,
}

/// Compiles kernel family `family` (through the disk cache).
pub fn compile_family(family: &str) -> Result<EmuObject, CudaError> {
    compile_source(&format!("{family}.cu"), &compilable_source(family)?)
}

/// Compiles `source`, named `file` in messages (a family's source, or a test kernel with the
/// prelude in front), through the disk cache.
pub fn compile_source(file: &str, source: &str) -> Result<EmuObject, CudaError> {
    let compiler = host_compiler()?;
    let unit = translation_unit(file, source);
    let key = fnv128(
        [
            b"moeseg-emu-cache-v1".as_slice(),
            file.as_bytes(),
            unit.as_bytes(),
            compiler.program.as_bytes(),
            compiler.version.as_bytes(),
        ]
        .into_iter()
        .chain(CXX_FLAGS.iter().map(|f| f.as_bytes())),
    );
    let dir = cache_dir();
    let stem = file.strip_suffix(".cu").unwrap_or(file);
    let path = dir.join(format!("{stem}-{key:032x}.so"));
    let kernels = kernel_names(source).into_iter().map(String::from).collect();
    if path.is_file() {
        return Ok(EmuObject {
            file: file.to_string(),
            path,
            kernels,
            compile_seconds: None,
        });
    }
    let start = std::time::Instant::now();
    build(&compiler, file, &unit, &dir, &path)?;
    Ok(EmuObject {
        file: file.to_string(),
        path,
        kernels,
        compile_seconds: Some(start.elapsed().as_secs_f64()),
    })
}

/// `<kernel cache>/emu`, or a per-process folder under the temporary directory.
fn cache_dir() -> PathBuf {
    match default_cache_dir() {
        Some(dir) => dir.join("emu"),
        None => std::env::temp_dir().join(format!("moeseg-emu-{}", std::process::id())),
    }
}

/// Compiles `unit` to an object, links it into a shared object and renames that into `path`.
fn build(
    compiler: &HostCompiler,
    file: &str,
    unit: &str,
    dir: &Path,
    path: &Path,
) -> Result<(), CudaError> {
    let failed = |step: &str, log: String| {
        CudaError::Compile(Box::new(crate::backend::cuda::CompileFailure {
            file: file.to_string(),
            arch: "cuda-emu (host)".to_string(),
            compiler: compiler.version.clone(),
            status: step.to_string(),
            options: CXX_FLAGS.iter().map(|f| f.to_string()).collect(),
            log,
        }))
    };
    let unique = format!(
        "{}.{}.{:?}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
        std::thread::current().id()
    )
    .replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "");
    let source = dir.join(format!("{file}.{unique}.cpp"));
    let object = dir.join(format!("{file}.{unique}.o"));
    let library = dir.join(format!("{file}.{unique}.so"));
    write_atomically(&source, unit.as_bytes()).map_err(|why| failed("writing the source", why))?;
    let run = |step: &str, command: &mut Command| -> Result<(), CudaError> {
        let out = command
            .output()
            .map_err(|e| failed(step, format!("{} could not be run: {e}", compiler.program)))?;
        if out.status.success() {
            return Ok(());
        }
        Err(failed(
            step,
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ),
        ))
    };
    let result = run(
        "compile",
        Command::new(&compiler.program)
            .args(CXX_FLAGS)
            .arg("-c")
            .arg(&source)
            .arg("-o")
            .arg(&object),
    )
    .and_then(|()| {
        // No sanitizer runtime: cuda_emu.h defines the handlers; -z defs fails the link on any
        // other unresolved symbol instead of the first launch.
        run(
            "link",
            Command::new(&compiler.program)
                .args(["-shared", "-Wl,-z,defs"])
                .arg(&object)
                .args(["-lm", "-o"])
                .arg(&library),
        )
    })
    .and_then(|()| {
        std::fs::rename(&library, path).map_err(|e| {
            failed(
                "install",
                format!("{} -> {}: {e}", library.display(), path.display()),
            )
        })
    });
    for leftover in [&source, &object, &library] {
        let _ = std::fs::remove_file(leftover);
    }
    result
}

/// Bytes of thread-local storage of a shared object (its `PT_TLS` segment's memory size): the
/// emulated `__shared__` arrays of every kernel in it, plus a pointer.
pub fn tls_bytes(path: &Path) -> Result<u64, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let not_elf = || format!("{}: not a 64-bit little-endian ELF file", path.display());
    if bytes.get(0..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err(not_elf());
    }
    let (phoff, phentsize, phnum) = match (u64_at(0x20), u16_at(0x36), u16_at(0x38)) {
        (Some(a), Some(b), Some(c)) => (a as usize, b as usize, c as usize),
        _ => return Err(not_elf()),
    };
    const PT_TLS: u32 = 7;
    for i in 0..phnum {
        let header = phoff + i * phentsize;
        if u32_at(header) == Some(PT_TLS) {
            return u64_at(header + 0x28).ok_or_else(not_elf);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::kernel_names;

    #[test]
    fn kernel_names_are_found() {
        let source = "extern \"C\" __global__ void a_b(P p, float* x) {}\n\
                      __device__ float helper();\n\
                      extern \"C\" __global__   void\n  second_one (P p) {}";
        assert_eq!(kernel_names(source), vec!["a_b", "second_one"]);
    }
}
