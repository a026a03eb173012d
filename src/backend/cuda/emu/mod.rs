//! The emulated CUDA device (`cuda-emu[:N]`): the real kernel sources and the real launchers,
//! executed on the CPU, to check the kernels where no GPU is (as Triton's interpreter, Pallas'
//! `interpret=True` and Numba's CUDA simulator do).
//!
//! It replaces only the layer below [`super::CudaBackend::launch`]:
//! - compile: the host C++ compiler builds each `kernels/<family>.cu` (with the prelude and
//!   `cuda_emu.h`) into a shared object, cached on disk ([`compile`]);
//! - memory: host mappings with guard regions, through the same caching allocator
//!   ([`memory`]);
//! - copies: `memcpy`; launch: every block on one of the host's cores, every thread of a block
//!   a fiber with real barriers, warp exchanges and per-block `__shared__` ([`block`]);
//!   synchronize: nothing (every launch and copy completes before it returns).
//!
//! What it checks that a GPU hides, each reported with the kernel, block and thread: accesses
//! outside every allocation, barrier divergence, undefined behaviour (sanitizer checks), launch
//! shapes a GPU rejects; and, run under two schedules by `moeseg verify`, data races.
//! What it does not show: speed, and the GPU's exact float results (fused multiply-adds,
//! libdevice math): the tolerances of the verify table apply, not bitwise equality with a GPU.

pub mod block;
pub mod compile;
pub mod memory;

pub use block::{current_schedule, schedule_for_run, set_schedule, with_schedule, Dim3, Schedule};
pub use memory::HostAllocation;

use super::CudaError;
use block::{BlockLaunch, RunFn};
use cudarc::driver::LaunchConfig;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A kernel of a loaded family.
#[derive(Clone, Copy)]
struct Kernel {
    run: RunFn,
    params_size: usize,
    buffers: usize,
}

/// One kernel file compiled for the host and loaded (never unloaded: its code may be on a
/// fiber stack and its thread-locals live with the OS threads).
pub struct EmuModule {
    pub object: compile::EmuObject,
    kernels: HashMap<String, Kernel>,
    /// Its `__shared__` arrays (none when the file has no thread-locals beyond one pointer).
    shared: Option<block::SharedMemory>,
    _library: libloading::Library,
}

impl EmuModule {
    /// Compiles (or finds in the disk cache) and loads kernel source `source`, named `file` in
    /// messages; the source must start with the prelude (see [`super::compilable_source`]).
    pub fn load(file: &str, source: &str) -> Result<EmuModule, CudaError> {
        Self::open(compile::compile_source(file, source)?)
    }

    /// Compiles (or finds in the disk cache) and loads kernel family `family`.
    pub fn load_family(family: &str) -> Result<EmuModule, CudaError> {
        Self::open(compile::compile_family(family)?)
    }

    fn open(object: compile::EmuObject) -> Result<EmuModule, CudaError> {
        let failed = |msg: String| CudaError::Launch {
            device: "cuda-emu".to_string(),
            kernel: object.file.clone(),
            at: String::new(),
            msg,
        };
        let shared = compile::tls_bytes(&object.path).map_err(&failed)?;
        // The static `__shared__` arrays of all kernels of the file, plus one pointer.
        if shared > 48 * 1024 + 64 {
            return Err(failed(format!(
                "its __shared__ arrays take {shared} bytes in all; a GPU rejects a kernel with \
                 over 48 KiB of static shared memory (the emulator counts the whole file)"
            )));
        }
        // SAFETY: loading runs no initialisers of ours beyond static zero-initialisation; the
        // object was built from our sources by `compile`. RTLD_LOCAL keeps its symbols out of
        // the global namespace, so families never clash; RTLD_NOW resolves everything now.
        let unix = unsafe {
            libloading::os::unix::Library::open(
                Some(&object.path),
                libc::RTLD_NOW | libc::RTLD_LOCAL,
            )
        }
        .map_err(|e| failed(format!("loading {}: {e}", object.path.display())))?;
        let handle = unix.into_raw();
        // SAFETY: the handle just came from `into_raw` and is wrapped again once.
        let library =
            libloading::Library::from(unsafe { libloading::os::unix::Library::from_raw(handle) });
        type InitFn = unsafe extern "C" fn(*const block::EmuHost);
        type SignatureFn = unsafe extern "C" fn(*mut usize, *mut usize);
        // SAFETY: `emu_init` and the per-kernel entries are defined by `cuda_emu.h` and the
        // generated entry points with exactly these signatures.
        unsafe {
            let init = library
                .get::<InitFn>(b"emu_init\0")
                .map_err(|e| failed(format!("emu_init: {e}")))?;
            init(&block::HOST);
        }
        type TouchFn = unsafe extern "C" fn();
        // SAFETY: defined by `cuda_emu.h` with this signature.
        let touch = unsafe { library.get::<TouchFn>(b"emu_touch_shared\0") }
            .map(|f| *f)
            .map_err(|e| failed(format!("emu_touch_shared: {e}")))?;
        let shared = (shared > 8).then_some(block::SharedMemory {
            handle: handle as usize,
            bytes: shared as usize,
            touch,
        });
        let mut kernels = HashMap::new();
        for name in &object.kernels {
            // SAFETY: as above.
            let kernel = unsafe {
                let run = *library
                    .get::<RunFn>(format!("emu_run_{name}\0").as_bytes())
                    .map_err(|e| failed(format!("emu_run_{name}: {e}")))?;
                let signature = library
                    .get::<SignatureFn>(format!("emu_signature_{name}\0").as_bytes())
                    .map_err(|e| failed(format!("emu_signature_{name}: {e}")))?;
                let (mut params_size, mut buffers) = (0usize, 0usize);
                signature(&mut params_size, &mut buffers);
                Kernel {
                    run,
                    params_size,
                    buffers,
                }
            };
            kernels.insert(name.clone(), kernel);
        }
        Ok(EmuModule {
            object,
            kernels,
            shared,
            _library: library,
        })
    }

    /// Runs `kernel` over the grid of `config` with `params` (the bytes of its parameter
    /// struct) and the buffers at `addresses`, under the calling thread's [`Schedule`]. Blocks
    /// run in parallel on the host's cores; the first error stops the launch.
    pub fn launch(
        &self,
        device: &str,
        kernel: &str,
        config: &LaunchConfig,
        params: &[u8],
        addresses: &[u64],
    ) -> Result<(), CudaError> {
        let name = format!("{}: {kernel}", self.object.file);
        let failed = |at: String, msg: String| CudaError::Launch {
            device: device.to_string(),
            kernel: name.clone(),
            at,
            msg,
        };
        let found = self.kernels.get(kernel).ok_or_else(|| {
            let mut known: Vec<&str> = self.kernels.keys().map(String::as_str).collect();
            known.sort_unstable();
            failed(
                String::new(),
                format!("no such kernel (the file has: {})", known.join(", ")),
            )
        })?;
        if found.params_size != params.len() || found.buffers != addresses.len() {
            return Err(failed(
                String::new(),
                format!(
                    "the launcher passes {} parameter bytes and {} buffers; the kernel takes a \
                     {}-byte parameter struct and {} buffers",
                    params.len(),
                    addresses.len(),
                    found.params_size,
                    found.buffers
                ),
            ));
        }
        super::runtime::check_launch(config).map_err(|msg| failed(String::new(), msg))?;
        let schedule = current_schedule().map_err(|msg| failed(String::new(), msg))?;
        block::ensure_fault_handler();
        let buffers: Vec<usize> = addresses.iter().map(|&a| a as usize).collect();
        let launch = BlockLaunch {
            run: found.run,
            grid: Dim3::new(config.grid_dim),
            block: Dim3::new(config.block_dim),
            params,
            buffers: &buffers,
            schedule,
            shared: self.shared,
        };
        let first_error: Mutex<Option<(u64, block::BlockError)>> = Mutex::new(None);
        (0..launch.grid.volume()).into_par_iter().for_each(|index| {
            if crate::autograd::lock(&first_error).is_some() {
                return;
            }
            if let Err(e) = block::run_block(&launch, launch.grid.point(index)) {
                let mut slot = crate::autograd::lock(&first_error);
                if slot.as_ref().is_none_or(|(at, _)| index < *at) {
                    *slot = Some((index, e));
                }
            }
        });
        let error = first_error
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match error {
            None => Ok(()),
            Some((index, e)) => {
                let thread = e
                    .thread
                    .map(|t| format!(", thread {t}"))
                    .unwrap_or_default();
                Err(failed(
                    format!(", block {}{thread}", launch.grid.point(index)),
                    e.what,
                ))
            }
        }
    }
}

/// The state of an opened emulated device: its loaded families.
pub struct EmuState {
    modules: Mutex<HashMap<&'static str, Arc<EmuModule>>>,
    /// `c++ (Debian 12.2.0-14) 12.2.0`, for [`EmuState::describe`].
    compiler: String,
}

impl EmuState {
    /// Opens an emulated device: needs a host C++ compiler.
    pub fn open() -> Result<EmuState, CudaError> {
        let compiler = compile::host_compiler()?;
        block::ensure_fault_handler();
        Ok(EmuState {
            modules: Mutex::new(HashMap::new()),
            compiler: compiler.version,
        })
    }

    /// `emulated CUDA device, kernels built by <compiler>`.
    pub fn describe(&self) -> String {
        format!("emulated CUDA device, kernels built by {}", self.compiler)
    }

    /// Runs `module` for family `family` from now on.
    pub fn replace(&self, family: &'static str, module: EmuModule) {
        crate::autograd::lock(&self.modules).insert(family, Arc::new(module));
    }

    /// The loaded module of `kernels/<family>.cu`.
    pub fn module(&self, family: &'static str) -> Result<Arc<EmuModule>, CudaError> {
        if let Some(module) = crate::autograd::lock(&self.modules).get(family) {
            return Ok(module.clone());
        }
        let module = Arc::new(EmuModule::load_family(family)?);
        crate::autograd::lock(&self.modules).insert(family, module.clone());
        Ok(module)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse() {
        assert_eq!("forward".parse(), Ok(Schedule::Forward));
        assert_eq!("reverse".parse(), Ok(Schedule::Reverse));
        assert_eq!("random:7".parse(), Ok(Schedule::Random(7)));
        assert!("random:".parse::<Schedule>().is_err());
        assert!("backward".parse::<Schedule>().is_err());
    }
}
