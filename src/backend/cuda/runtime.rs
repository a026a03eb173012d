//! [`CudaBackend`]: one context and one stream per CUDA device, created on first use; kernel
//! modules compiled per family on first use for the device's architecture; buffers from a
//! caching allocator; and the one generic [`CudaBackend::launch`] helper every launcher uses.
//!
//! Nothing here panics: a missing driver, a missing device or a kernel that does not load is an
//! [`Error::Cuda`] naming what failed. STATUS: compile-checked under NVRTC only — this code has
//! not run on a GPU yet (it was written on a machine without one).

use super::compile::{Arch, KernelCompiler, OutputFormat};
use super::memory::{size_class, CachingAllocator, CudaBuffer};
use super::{libraries, CudaError};
use crate::error::{Error, Result};
use crate::tensor::Storage;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr, DriverError, LaunchConfig,
    PushKernelArg,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Threads per block of the one-thread-per-element kernels.
pub const BLOCK: u32 = 256;

/// Upper bound on blocks of a grid-stride launch (kernels loop over the rest).
const MAX_BLOCKS: u64 = 1 << 20;

/// The backend of CUDA device `ordinal`. Created without touching the driver; the device is
/// opened on the first call that needs it.
pub struct CudaBackend {
    ordinal: usize,
    state: OnceLock<std::result::Result<DeviceState, CudaError>>,
    allocator: &'static CachingAllocator,
}

/// What an opened device holds.
struct DeviceState {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: Arch,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
}

/// The process-wide backend of CUDA device `ordinal` (created once, never freed: tensors hold
/// `'static` references to its allocator).
pub fn backend_for(ordinal: usize) -> &'static CudaBackend {
    static REGISTRY: OnceLock<Mutex<HashMap<usize, &'static CudaBackend>>> = OnceLock::new();
    let registry = REGISTRY.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = crate::autograd::lock(registry);
    map.entry(ordinal).or_insert_with(|| {
        Box::leak(Box::new(CudaBackend {
            ordinal,
            state: OnceLock::new(),
            allocator: Box::leak(Box::default()),
        }))
    })
}

/// A driver error as an [`Error::Cuda`] naming the call and the device.
fn driver_error(ordinal: usize, call: &str, e: DriverError) -> Error {
    Error::cuda(CudaError::Driver {
        ordinal,
        call: call.to_string(),
        msg: e.to_string(),
    })
}

/// A grid-stride launch over `n` elements: [`BLOCK`] threads a block.
pub fn grid_for(n: usize) -> LaunchConfig {
    let blocks = (n as u64).div_ceil(u64::from(BLOCK)).clamp(1, MAX_BLOCKS);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of `threads` threads per row, `rows` rows (rows beyond 65535·65535 are not needed
/// by any network; kernels take the row from `blockIdx.x + blockIdx.y * gridDim.x`).
pub fn grid_per_row(rows: usize, threads: u32) -> LaunchConfig {
    let rows = rows.max(1) as u64;
    let x = rows.min(65_535);
    let y = rows.div_ceil(x);
    LaunchConfig {
        grid_dim: (x as u32, y as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `usize → u32` for a kernel parameter, or an error naming the op (tensors over 2^32 elements
/// in one dimension are not supported).
pub fn dim32(op: &'static str, value: usize) -> Result<u32> {
    u32::try_from(value).map_err(|_| {
        Error::Unsupported(format!(
            "{op}: size {value} does not fit the CUDA kernels' 32-bit dimensions"
        ))
    })
}

impl CudaBackend {
    /// The CUDA device number.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The opened device, or why it cannot be used.
    fn state(&self) -> Result<&DeviceState> {
        self.state
            .get_or_init(|| open_device(self.ordinal))
            .as_ref()
            .map_err(|e| Error::cuda(e.clone()))
    }

    /// The device's name and architecture, e.g. `("NVIDIA H100 80GB HBM3", sm_90)`.
    pub fn describe(&self) -> Result<(String, Arch)> {
        let state = self.state()?;
        let name = state
            .ctx
            .name()
            .map_err(|e| driver_error(self.ordinal, "cuDeviceGetName", e))?;
        Ok((name, state.arch.clone()))
    }

    /// Waits for every queued kernel and copy.
    pub fn synchronize(&self) -> Result<()> {
        let state = self.state()?;
        state
            .stream
            .synchronize()
            .map_err(|e| driver_error(self.ordinal, "cuStreamSynchronize", e))
    }

    /// Bytes held by the caching allocator's free lists.
    pub fn cached_bytes(&self) -> usize {
        self.allocator.cached_bytes()
    }

    /// An uninitialised buffer of `len` floats (kernels write every element).
    pub fn alloc(&self, len: usize) -> Result<CudaBuffer> {
        let state = self.state()?;
        let slice = match self.allocator.take(len) {
            Some(slice) => slice,
            None => {
                let class = size_class(len);
                // SAFETY: the memory is uninitialised; every launcher writes all `len` elements
                // before anything reads them, and the padding up to the class is never read.
                match unsafe { state.stream.alloc::<f32>(class) } {
                    Ok(slice) => slice,
                    Err(_) => {
                        // Out of memory, most likely: give the cached buffers back and retry.
                        self.allocator.release_all();
                        unsafe { state.stream.alloc::<f32>(class) }
                            .map_err(|e| driver_error(self.ordinal, "cuMemAlloc", e))?
                    }
                }
            }
        };
        Ok(CudaBuffer::new(slice, len, self.ordinal, self.allocator))
    }

    /// Copies host data into a new device buffer (waits for the copy).
    pub fn upload_slice(&self, data: &[f32]) -> Result<CudaBuffer> {
        let state = self.state()?;
        let buffer = self.alloc(data.len())?;
        if data.is_empty() {
            return Ok(buffer);
        }
        let dst = buffer.device_address(&state.stream);
        bind(state, self.ordinal)?;
        // SAFETY: `dst` points at ≥ data.len() floats of this device; the copy finishes before
        // `data` can go away (synchronised below).
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, data, state.stream.cu_stream()) }
            .map_err(|e| driver_error(self.ordinal, "cuMemcpyHtoDAsync", e))?;
        self.synchronize()?;
        Ok(buffer)
    }

    /// Copies a device buffer to a host vector (waits for every queued kernel first).
    pub fn download(&self, buffer: &CudaBuffer) -> Result<Vec<f32>> {
        let state = self.state()?;
        self.synchronize()?;
        let mut host = vec![0.0f32; buffer.len()];
        if host.is_empty() {
            return Ok(host);
        }
        let src = buffer.device_address(&state.stream);
        bind(state, self.ordinal)?;
        // SAFETY: `src` holds ≥ host.len() floats; the stream is synchronised after the copy.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(&mut host, src, state.stream.cu_stream())
        }
        .map_err(|e| driver_error(self.ordinal, "cuMemcpyDtoHAsync", e))?;
        self.synchronize()?;
        Ok(host)
    }

    /// A new device buffer holding a copy of `buffer` (one device-to-device memcpy, queued on
    /// the stream, not waited for): the bandwidth reference of `moeseg bench ops`.
    pub fn copy_buffer(&self, buffer: &CudaBuffer) -> Result<CudaBuffer> {
        let state = self.state()?;
        let copy = self.alloc(buffer.len())?;
        if buffer.is_empty() {
            return Ok(copy);
        }
        let src = buffer.device_address(&state.stream);
        let dst = copy.device_address(&state.stream);
        bind(state, self.ordinal)?;
        // SAFETY: both addresses hold ≥ buffer.len() floats of this device; the stream orders
        // the copy after the writes of `buffer` and before any later use of `copy`.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                dst,
                src,
                buffer.len() * std::mem::size_of::<f32>(),
                state.stream.cu_stream(),
            )
        }
        .map_err(|e| driver_error(self.ordinal, "cuMemcpyDtoDAsync", e))?;
        Ok(copy)
    }

    /// The device buffer of `storage`, or an error naming `op` and the two devices when it
    /// lives elsewhere.
    pub fn buffer<'s>(&self, op: &'static str, storage: &'s Storage) -> Result<&'s CudaBuffer> {
        match storage {
            Storage::Cuda(buffer) if buffer.ordinal() == self.ordinal => Ok(buffer),
            other => Err(Error::DeviceMismatch {
                op,
                lhs: format!("cuda:{}", self.ordinal),
                rhs: other.device().to_string(),
            }),
        }
    }

    /// Compiles (first use) or fetches the kernel `kernel` of family `family`.
    fn function(&self, family: &'static str, kernel: &'static str) -> Result<CudaFunction> {
        let state = self.state()?;
        if let Some(f) = crate::autograd::lock(&state.functions).get(&(family, kernel)) {
            return Ok(f.clone());
        }
        let module = self.module(state, family)?;
        let f = module.load_function(kernel).map_err(|e| {
            driver_error(
                self.ordinal,
                &format!("cuModuleGetFunction({family}.cu: {kernel})"),
                e,
            )
        })?;
        crate::autograd::lock(&state.functions).insert((family, kernel), f.clone());
        Ok(f)
    }

    /// The loaded module of `kernels/<family>.cu`, compiled through the NVRTC caches.
    fn module(&self, state: &DeviceState, family: &'static str) -> Result<Arc<CudaModule>> {
        if let Some(m) = crate::autograd::lock(&state.modules).get(family) {
            return Ok(m.clone());
        }
        let compiled = KernelCompiler::global()
            .compile_family(family, &state.arch, OutputFormat::Cubin)
            .map_err(Error::cuda)?;
        let image = compiled.image.to_module_image().map_err(Error::cuda)?;
        let module = state.ctx.load_module(image).map_err(|e| {
            driver_error(self.ordinal, &format!("cuModuleLoadData({family}.cu)"), e)
        })?;
        crate::autograd::lock(&state.modules).insert(family, module.clone());
        Ok(module)
    }

    /// The one launch helper: `kernel(params, buffers[0], buffers[1], ...)` from
    /// `kernels/<family>.cu` on this device's stream. Shapes travel by value in `params` (a
    /// `#[repr(C)]` struct mirrored in the .cu file); buffers are passed as device addresses,
    /// inputs first and outputs last by convention.
    pub fn launch<P: DeviceRepr>(
        &self,
        family: &'static str,
        kernel: &'static str,
        config: LaunchConfig,
        params: &P,
        buffers: &[&CudaBuffer],
    ) -> Result<()> {
        let state = self.state()?;
        let f = self.function(family, kernel)?;
        let addresses: Vec<u64> = buffers
            .iter()
            .map(|b| b.device_address(&state.stream))
            .collect();
        let mut builder = state.stream.launch_builder(&f);
        builder.arg(params);
        for address in &addresses {
            builder.arg(address);
        }
        // SAFETY: the kernel's signature is (P, float*...) as documented next to it in the .cu
        // file; every buffer is live for the launch (the caller holds it) and large enough for
        // the shapes in `params` (checked by the launcher).
        unsafe { builder.launch(config) }
            .map(|_| ())
            .map_err(|e| driver_error(self.ordinal, &format!("launch {family}.cu: {kernel}"), e))
    }

    /// A new buffer of `len` floats written by `kernel(params, inputs..., out)`: the common
    /// shape of a launcher.
    pub fn launch_into<P: DeviceRepr>(
        &self,
        family: &'static str,
        kernel: &'static str,
        config: LaunchConfig,
        params: &P,
        inputs: &[&CudaBuffer],
        len: usize,
    ) -> Result<Storage> {
        let out = self.alloc(len)?;
        if len > 0 {
            let mut buffers = inputs.to_vec();
            buffers.push(&out);
            self.launch(family, kernel, config, params, &buffers)?;
        }
        Ok(Storage::Cuda(out))
    }
}

/// Makes the device's context current on this thread (raw driver calls need it).
fn bind(state: &DeviceState, ordinal: usize) -> Result<()> {
    state
        .ctx
        .bind_to_thread()
        .map_err(|e| driver_error(ordinal, "cuCtxSetCurrent", e))
}

/// Opens CUDA device `ordinal`: driver check (no panic when libcuda is missing), context with
/// event tracking off (one stream per device), architecture from the compute capability.
fn open_device(ordinal: usize) -> std::result::Result<DeviceState, CudaError> {
    let request = format!("cuda:{ordinal}");
    libraries::cuda_driver().map_err(|e| CudaError::DeviceUnavailable {
        request: request.clone(),
        msg: format!("no CUDA driver: {e}"),
    })?;
    let unavailable = |what: &str, e: DriverError| CudaError::DeviceUnavailable {
        request: request.clone(),
        msg: format!("{what}: {e}"),
    };
    let ctx = CudaContext::new(ordinal).map_err(|e| unavailable("creating a context", e))?;
    // SAFETY: the engine uses one stream per device, so stream order alone orders every use of
    // a buffer; the per-allocation events cudarc would record are not needed.
    unsafe { ctx.disable_event_tracking() };
    let (major, minor) = ctx
        .compute_capability()
        .map_err(|e| unavailable("reading the compute capability", e))?;
    let arch = Arch::from_compute_capability(major.max(0) as u32, minor.max(0) as u32);
    let stream = ctx
        .new_stream()
        .map_err(|e| unavailable("creating a stream", e))?;
    Ok(DeviceState {
        ctx,
        stream,
        arch,
        modules: Mutex::new(HashMap::new()),
        functions: Mutex::new(HashMap::new()),
    })
}

/// `Error::Unsupported("<op> has no CUDA kernel yet")`, for families not written yet.
pub fn no_kernel<T>(op: &str) -> Result<T> {
    Err(Error::Unsupported(format!("{op} has no CUDA kernel yet")))
}

impl crate::backend::Backend for CudaBackend {
    fn upload(&self, data: Vec<f32>) -> Result<Storage> {
        Ok(Storage::Cuda(self.upload_slice(&data)?))
    }

    fn full(&self, len: usize, value: f32) -> Result<Storage> {
        self.fill(len, value)
    }
}
