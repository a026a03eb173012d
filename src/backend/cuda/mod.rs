//! The CUDA backend.
//!
//! - [`libraries`]: finding libcuda / libnvrtc without panicking (loader path, `CUDA_HOME`,
//!   `/usr/local/cuda/lib64`, pip's `nvidia/cu13/lib`), pre-loading by absolute path.
//! - [`device`]: `auto | cpu | cuda[:N]` selection; `auto` falls back to the CPU with one line.
//! - [`compile`]: NVRTC compiles of the `kernels/<family>.cu` files embedded by `build.rs`,
//!   per device architecture, cached in memory and on disk.
//! - [`memory`]: [`CudaBuffer`], an `Arc`'d device allocation returned on drop to a size-class
//!   caching allocator.
//! - [`runtime`]: [`CudaBackend`], one context and one stream per device (event tracking off),
//!   opened on first use; modules loaded per family on first use; the one generic launch helper
//!   ([`CudaBackend::launch`]: shapes by value in `#[repr(C)]` params, buffers as addresses).
//!
//! Each op family's launchers live next to its CPU kernels in `src/ops/<family>/cuda_kernel.rs`
//! and its kernels in `kernels/<family>.cu` (forward and backward side by side, no headers).
//! `moeseg verify` compares every kernel with the CPU backend on a GPU.
//! - [`emu`]: the emulated device (`cuda-emu`): the same launchers and kernel files, compiled
//!   by the host C++ compiler and run on the CPU with real block semantics and checks.
//!
//! Every method of every op family has a kernel; a method without one would return
//! `Error::Unsupported("<op> has no CUDA kernel yet")` ([`runtime::no_kernel`]). Where the
//! kernels have run (GPUs, the emulator) is recorded in `kernels/verified/`.
//!
//! cudarc loads libcuda and libnvrtc at run time (`dynamic-loading`), so this code is built on
//! every machine; it checks that a library is present before the first call into it, because
//! cudarc panics when it is not.

pub mod compile;
pub mod device;
pub mod emu;
pub mod libraries;
pub mod memory;
pub mod runtime;

pub use compile::{Arch, Compiled, KernelCompiler, KernelImage, Origin, OutputFormat};
pub use device::{select, CudaDevice, DeviceRequest, Selected};
pub use libraries::{cuda_driver, nvrtc, DriverInfo, NvrtcInfo};
pub use memory::CudaBuffer;
pub use runtime::{backend_for, CudaBackend};

/// The kernel sources embedded by `build.rs`.
mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// Every kernel family `kernels/<family>.cu` as `(family, source)`, sorted by family, and the
/// prelude (`kernels/prelude.cuh`) compiled in front of each.
pub use embedded::{KERNELS, PRELUDE};

/// What a compiler sees for kernel family `family`: the prelude, then `kernels/<family>.cu`
/// under a `#line` directive, so messages name the kernel file and its own line numbers.
pub fn compilable_source(family: &str) -> Result<String, CudaError> {
    let source = kernel_source(family)?;
    Ok(format!(
        "#line 1 \"prelude.cuh\"\n{PRELUDE}\n#line 1 \"{family}.cu\"\n{source}"
    ))
}

/// The source of kernel family `family` (`kernels/<family>.cu`), or an error naming the
/// families that exist.
pub fn kernel_source(family: &str) -> Result<&'static str, CudaError> {
    KERNELS
        .iter()
        .find(|(name, _)| *name == family)
        .map(|(_, source)| *source)
        .ok_or_else(|| CudaError::UnknownKernel {
            family: family.to_string(),
            known: KERNELS.iter().map(|(name, _)| name.to_string()).collect(),
        })
}

/// What can go wrong on the CUDA side, with what was looked for and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CudaError {
    /// A CUDA library (libnvrtc, libcuda) is not in any of the searched places.
    #[error("{library} not found; looked in:\n  - {}", searched.join("\n  - "))]
    LibraryNotFound {
        /// The library looked for, e.g. `libnvrtc.so.13`.
        library: &'static str,
        /// Every place searched, each with what was found there.
        searched: Vec<String>,
    },

    /// A device request that is not `auto`, `cpu`, `cuda` or `cuda:N`.
    #[error("device `{request}`: {msg}")]
    InvalidRequest { request: String, msg: String },

    /// The CUDA device asked for cannot be used (no driver, no device, ordinal out of range).
    #[error("device `{request}` is not available: {msg}")]
    DeviceUnavailable { request: String, msg: String },

    /// An architecture name that is not `sm_XY` (`sm_80`, `sm_90`, `sm_90a`, ...).
    #[error("GPU architecture `{0}` is not of the form sm_80, sm_90, sm_90a, ...")]
    InvalidArch(String),

    /// No kernel family of that name is embedded.
    #[error("kernel family `{family}` is not embedded (kernels/*.cu has: {})", known.join(", "))]
    UnknownKernel { family: String, known: Vec<String> },

    /// NVRTC rejected a kernel file; the log names the file and the line.
    #[error("{0}")]
    Compile(Box<CompileFailure>),

    /// A CUDA driver call failed on an opened device (allocation, copy, module load, launch).
    #[error("CUDA {call} on {device} failed: {msg}")]
    Driver {
        device: String,
        call: String,
        msg: String,
    },

    /// A launch that cannot run (a shape a GPU rejects, a signature mismatch), or an error the
    /// emulated device found while running it: `at` names the block and thread.
    #[error("{device}: kernel {kernel}{at}: {msg}")]
    Launch {
        device: String,
        /// `<family>.cu: <kernel>`.
        kernel: String,
        /// `, block (x,y,z), thread (x,y,z)`, or empty.
        at: String,
        msg: String,
    },

    /// An NVRTC call other than the compile failed.
    #[error("NVRTC: {call} failed for {file}: {status}")]
    Nvrtc {
        file: String,
        call: &'static str,
        status: String,
    },
}

/// A kernel file NVRTC rejected: what was compiled, how, and NVRTC's log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{compiler}: {file} does not compile for {arch} ({status}), options {options:?}:\n{log}")]
pub struct CompileFailure {
    /// The kernel file name NVRTC saw, e.g. `patch_grid.cu`.
    pub file: String,
    pub arch: String,
    /// The compiler and its version: `NVRTC 13.0`, or the host compiler's `--version` line.
    pub compiler: String,
    /// NVRTC's status, e.g. `NVRTC_ERROR_COMPILATION`.
    pub status: String,
    pub options: Vec<String>,
    /// NVRTC's log: `file(line): error: ...`.
    pub log: String,
}
