//! [`CudaBackend`]: one context and one stream per CUDA device, created on first use; kernel
//! modules compiled per family on first use for the device's architecture; buffers from a
//! caching allocator; and the one generic [`CudaBackend::launch`] helper every launcher uses.
//!
//! Below that helper the two runtimes sit side by side in [`Runtime`]: a GPU through the driver
//! (NVRTC, cudarc), or the emulated device (`cuda-emu`: the host C++ compiler, host memory,
//! fibers; [`super::emu`]). Launchers, allocator and copies above it are the same code.
//!
//! Nothing here panics: a missing driver, a missing device or a kernel that does not load is an
//! [`Error::Cuda`] naming what failed.

use super::compile::{Arch, KernelCompiler, OutputFormat};
use super::device::CudaDevice;
use super::emu::{self, EmuState, HostAllocation};
use super::memory::{size_class, CachingAllocator, CudaBuffer, DeviceSlice};
use super::{libraries, CudaError};
use crate::error::{Error, Result};
use crate::tensor::Storage;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DevicePtr, DeviceRepr, DriverError,
    LaunchConfig, PushKernelArg,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Threads per block of the one-thread-per-element kernels.
pub const BLOCK: u32 = 256;

/// Upper bound on blocks of a grid-stride launch (kernels loop over the rest).
const MAX_BLOCKS: u64 = 1 << 20;

/// The backend of CUDA device `device` (a GPU or the emulated device). Created without touching
/// the driver; the device is opened on the first call that needs it.
pub struct CudaBackend {
    device: CudaDevice,
    state: OnceLock<std::result::Result<Runtime, CudaError>>,
    allocator: &'static CachingAllocator,
}

/// The layer below the launch helper: the only place the two runtimes differ.
enum Runtime {
    /// A GPU through the CUDA driver: NVRTC cubins, device memory, one stream.
    Driver(DriverState),
    /// The emulated device: host-compiled kernels, host memory, synchronous launches.
    Emulated(EmuState),
}

/// What an opened GPU holds.
struct DriverState {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: Arch,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
}

/// The process-wide backend of CUDA device `device` (created once, never freed: tensors hold
/// `'static` references to its allocator).
pub fn backend_for(device: CudaDevice) -> &'static CudaBackend {
    static REGISTRY: OnceLock<Mutex<HashMap<CudaDevice, &'static CudaBackend>>> = OnceLock::new();
    let registry = REGISTRY.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = crate::autograd::lock(registry);
    map.entry(device).or_insert_with(|| {
        Box::leak(Box::new(CudaBackend {
            device,
            state: OnceLock::new(),
            allocator: Box::leak(Box::default()),
        }))
    })
}

/// A driver error as an [`Error::Cuda`] naming the call and the device.
fn driver_error(device: CudaDevice, call: &str, e: impl std::fmt::Display) -> Error {
    Error::cuda(CudaError::Driver {
        device: device.to_string(),
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

/// The launch limits of every NVIDIA GPU since sm_30: the errors a driver would return.
pub fn check_launch(config: &LaunchConfig) -> std::result::Result<(), String> {
    let (gx, gy, gz) = config.grid_dim;
    let (bx, by, bz) = config.block_dim;
    if gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0 {
        return Err(format!(
            "grid {:?} / block {:?}: every dimension must be at least 1",
            config.grid_dim, config.block_dim
        ));
    }
    if gx > i32::MAX as u32 || gy > 65_535 || gz > 65_535 {
        return Err(format!(
            "grid {:?} exceeds the GPU's limits (x < 2^31, y and z ≤ 65535)",
            config.grid_dim
        ));
    }
    let threads = u64::from(bx) * u64::from(by) * u64::from(bz);
    if threads > 1024 || bz > 64 {
        return Err(format!(
            "block {:?} exceeds the GPU's limits (≤ 1024 threads, z ≤ 64)",
            config.block_dim
        ));
    }
    if config.shared_mem_bytes > 48 * 1024 {
        return Err(format!(
            "{} bytes of dynamic shared memory exceed the 48 KiB a launch gets without opting in",
            config.shared_mem_bytes
        ));
    }
    Ok(())
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
    /// The device this backend computes on.
    pub fn device(&self) -> CudaDevice {
        self.device
    }

    /// The opened device, or why it cannot be used.
    fn state(&self) -> Result<&Runtime> {
        self.state
            .get_or_init(|| match self.device.emulated {
                false => open_device(self.device.ordinal).map(Runtime::Driver),
                true => EmuState::open().map(Runtime::Emulated),
            })
            .as_ref()
            .map_err(|e| Error::cuda(e.clone()))
    }

    /// What the device is, e.g. `NVIDIA H100 80GB HBM3 (sm_90)` or `emulated CUDA device,
    /// kernels built by g++ 12.2.0`.
    pub fn describe(&self) -> Result<String> {
        match self.state()? {
            Runtime::Driver(state) => {
                let name = state
                    .ctx
                    .name()
                    .map_err(|e| driver_error(self.device, "cuDeviceGetName", e))?;
                Ok(format!("{name} ({})", state.arch))
            }
            Runtime::Emulated(state) => Ok(state.describe()),
        }
    }

    /// Waits for every queued kernel and copy (the emulated device never queues).
    pub fn synchronize(&self) -> Result<()> {
        match self.state()? {
            Runtime::Driver(state) => state
                .stream
                .synchronize()
                .map_err(|e| driver_error(self.device, "cuStreamSynchronize", e)),
            Runtime::Emulated(_) => Ok(()),
        }
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
                match new_slice(state, class) {
                    Ok(slice) => slice,
                    Err(_) => {
                        // Out of memory, most likely: give the cached buffers back and retry.
                        self.allocator.release_all();
                        new_slice(state, class)
                            .map_err(|e| driver_error(self.device, "cuMemAlloc", e))?
                    }
                }
            }
        };
        Ok(CudaBuffer::new(slice, len, self.device, self.allocator))
    }

    /// The raw device address of `buffer` for a kernel argument or a copy (0 for a buffer
    /// being dropped, which no caller can hold).
    fn address(&self, state: &Runtime, buffer: &CudaBuffer) -> u64 {
        match (state, buffer.slice()) {
            (Runtime::Driver(state), Some(DeviceSlice::Driver(slice))) => {
                slice.device_ptr(&state.stream).0
            }
            (_, Some(DeviceSlice::Emulated(allocation))) => allocation.address(buffer.len()),
            _ => 0,
        }
    }

    /// Copies host data into a new device buffer (waits for the copy).
    pub fn upload_slice(&self, data: &[f32]) -> Result<CudaBuffer> {
        let state = self.state()?;
        let buffer = self.alloc(data.len())?;
        if data.is_empty() {
            return Ok(buffer);
        }
        let dst = self.address(state, &buffer);
        match state {
            Runtime::Driver(driver) => {
                bind(driver, self.device)?;
                // SAFETY: `dst` points at ≥ data.len() floats of this device; the copy
                // finishes before `data` can go away (synchronised below).
                unsafe {
                    cudarc::driver::result::memcpy_htod_async(dst, data, driver.stream.cu_stream())
                }
                .map_err(|e| driver_error(self.device, "cuMemcpyHtoDAsync", e))?;
                self.synchronize()?;
            }
            // SAFETY: `dst` addresses data.len() floats of a live host allocation.
            Runtime::Emulated(_) => unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), dst as *mut f32, data.len())
            },
        }
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
        let src = self.address(state, buffer);
        match state {
            Runtime::Driver(driver) => {
                bind(driver, self.device)?;
                // SAFETY: `src` holds ≥ host.len() floats; the stream is synchronised after.
                unsafe {
                    cudarc::driver::result::memcpy_dtoh_async(
                        &mut host,
                        src,
                        driver.stream.cu_stream(),
                    )
                }
                .map_err(|e| driver_error(self.device, "cuMemcpyDtoHAsync", e))?;
                self.synchronize()?;
            }
            // SAFETY: `src` addresses host.len() floats of a live host allocation.
            Runtime::Emulated(_) => unsafe {
                std::ptr::copy_nonoverlapping(src as *const f32, host.as_mut_ptr(), host.len())
            },
        }
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
        let src = self.address(state, buffer);
        let dst = self.address(state, &copy);
        match state {
            Runtime::Driver(driver) => {
                bind(driver, self.device)?;
                // SAFETY: both addresses hold ≥ buffer.len() floats of this device; the stream
                // orders the copy after the writes of `buffer` and before any later use.
                unsafe {
                    cudarc::driver::result::memcpy_dtod_async(
                        dst,
                        src,
                        buffer.len() * std::mem::size_of::<f32>(),
                        driver.stream.cu_stream(),
                    )
                }
                .map_err(|e| driver_error(self.device, "cuMemcpyDtoDAsync", e))?;
            }
            // SAFETY: two distinct live allocations of buffer.len() floats each.
            Runtime::Emulated(_) => unsafe {
                std::ptr::copy_nonoverlapping(src as *const f32, dst as *mut f32, buffer.len())
            },
        }
        Ok(copy)
    }

    /// The device buffer of `storage`, or an error naming `op` and the two devices when it
    /// lives elsewhere.
    pub fn buffer<'s>(&self, op: &'static str, storage: &'s Storage) -> Result<&'s CudaBuffer> {
        match storage {
            Storage::Cuda(buffer) if buffer.device() == self.device => Ok(buffer),
            other => Err(Error::DeviceMismatch {
                op,
                lhs: self.device.to_string(),
                rhs: other.device().to_string(),
            }),
        }
    }

    /// Compiles (first use) or fetches the kernel `kernel` of family `family` on a GPU.
    fn function(
        &self,
        state: &DriverState,
        family: &'static str,
        kernel: &'static str,
    ) -> Result<CudaFunction> {
        if let Some(f) = crate::autograd::lock(&state.functions).get(&(family, kernel)) {
            return Ok(f.clone());
        }
        let module = self.module(state, family)?;
        let f = module.load_function(kernel).map_err(|e| {
            driver_error(
                self.device,
                &format!("cuModuleGetFunction({family}.cu: {kernel})"),
                e,
            )
        })?;
        crate::autograd::lock(&state.functions).insert((family, kernel), f.clone());
        Ok(f)
    }

    /// The loaded module of `kernels/<family>.cu`, compiled through the NVRTC caches.
    fn module(&self, state: &DriverState, family: &'static str) -> Result<Arc<CudaModule>> {
        if let Some(m) = crate::autograd::lock(&state.modules).get(family) {
            return Ok(m.clone());
        }
        let compiled = KernelCompiler::global()
            .compile_family(family, &state.arch, OutputFormat::Cubin)
            .map_err(Error::cuda)?;
        let image = compiled.image.to_module_image().map_err(Error::cuda)?;
        let module = state
            .ctx
            .load_module(image)
            .map_err(|e| driver_error(self.device, &format!("cuModuleLoadData({family}.cu)"), e))?;
        crate::autograd::lock(&state.modules).insert(family, module.clone());
        Ok(module)
    }

    /// The one launch helper: `kernel(params, buffers[0], buffers[1], ...)` from
    /// `kernels/<family>.cu` on this device's stream. Shapes travel by value in `params` (a
    /// `#[repr(C)]` struct mirrored in the .cu file); buffers are passed as device addresses,
    /// inputs first and outputs last by convention. Launch shapes a GPU rejects are errors on
    /// both runtimes.
    pub fn launch<P: DeviceRepr>(
        &self,
        family: &'static str,
        kernel: &'static str,
        config: LaunchConfig,
        params: &P,
        buffers: &[&CudaBuffer],
    ) -> Result<()> {
        let state = self.state()?;
        let addresses: Vec<u64> = buffers.iter().map(|b| self.address(state, b)).collect();
        match state {
            Runtime::Driver(driver) => {
                // The emulated device checks the same limits in `EmuModule::launch`.
                check_launch(&config).map_err(|msg| {
                    Error::cuda(CudaError::Launch {
                        device: self.device.to_string(),
                        kernel: format!("{family}.cu: {kernel}"),
                        at: String::new(),
                        msg,
                    })
                })?;
                let f = self.function(driver, family, kernel)?;
                let mut builder = driver.stream.launch_builder(&f);
                builder.arg(params);
                for address in &addresses {
                    builder.arg(address);
                }
                // SAFETY: the kernel's signature is (P, float*...) as documented next to it in
                // the .cu file; every buffer is live for the launch (the caller holds it) and
                // large enough for the shapes in `params` (checked by the launcher).
                unsafe { builder.launch(config) }.map(|_| ()).map_err(|e| {
                    driver_error(self.device, &format!("launch {family}.cu: {kernel}"), e)
                })
            }
            Runtime::Emulated(emulated) => emulated
                .module(family)
                .and_then(|module| {
                    let device = self.device.to_string();
                    module.launch(&device, kernel, &config, param_bytes(params), &addresses)
                })
                .map_err(Error::cuda),
        }
    }

    /// Launches `kernel` of `module` (a kernel file loaded with [`emu::EmuModule::load`]: a
    /// test kernel, a deliberately broken family) on this emulated device.
    pub fn launch_emulated<P: DeviceRepr>(
        &self,
        module: &emu::EmuModule,
        kernel: &str,
        config: LaunchConfig,
        params: &P,
        buffers: &[&CudaBuffer],
    ) -> Result<()> {
        let state = self.state()?;
        let addresses: Vec<u64> = buffers.iter().map(|b| self.address(state, b)).collect();
        match state {
            Runtime::Emulated(_) => module
                .launch(
                    &self.device.to_string(),
                    kernel,
                    &config,
                    param_bytes(params),
                    &addresses,
                )
                .map_err(Error::cuda),
            Runtime::Driver(_) => Err(Error::Unsupported(format!(
                "{}: launch_emulated needs an emulated device (cuda-emu:N)",
                self.device
            ))),
        }
    }

    /// Makes this emulated device run `module` for every launch of kernel family `family`
    /// (to prove that `moeseg verify` sees a broken kernel; use a device number of its own).
    pub fn replace_family(&self, family: &'static str, module: emu::EmuModule) -> Result<()> {
        match self.state()? {
            Runtime::Emulated(emulated) => {
                emulated.replace(family, module);
                Ok(())
            }
            Runtime::Driver(_) => Err(Error::Unsupported(format!(
                "{}: replace_family needs an emulated device (cuda-emu:N)",
                self.device
            ))),
        }
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

/// The bytes of a kernel's parameter struct: what a GPU launch copies into parameter space.
fn param_bytes<P: DeviceRepr>(params: &P) -> &[u8] {
    // SAFETY: `P: DeviceRepr` is a plain `#[repr(C)]` value without interior pointers.
    unsafe {
        std::slice::from_raw_parts((params as *const P).cast::<u8>(), std::mem::size_of::<P>())
    }
}

/// A new allocation of `class` floats on the device.
fn new_slice(state: &Runtime, class: usize) -> std::result::Result<DeviceSlice, String> {
    match state {
        // SAFETY: the memory is uninitialised; every launcher writes all `len` elements before
        // anything reads them, and the padding up to the class is never read.
        Runtime::Driver(driver) => unsafe { driver.stream.alloc::<f32>(class) }
            .map(DeviceSlice::Driver)
            .map_err(|e| e.to_string()),
        Runtime::Emulated(_) => HostAllocation::new(class).map(DeviceSlice::Emulated),
    }
}

/// Makes the device's context current on this thread (raw driver calls need it).
fn bind(state: &DriverState, device: CudaDevice) -> Result<()> {
    state
        .ctx
        .bind_to_thread()
        .map_err(|e| driver_error(device, "cuCtxSetCurrent", e))
}

/// Opens CUDA device `ordinal`: driver check (no panic when libcuda is missing), context with
/// event tracking off (one stream per device), architecture from the compute capability.
fn open_device(ordinal: usize) -> std::result::Result<DriverState, CudaError> {
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
    Ok(DriverState {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_limits_are_the_gpus() {
        let config = |grid: (u32, u32, u32), block: (u32, u32, u32), shared: u32| LaunchConfig {
            grid_dim: grid,
            block_dim: block,
            shared_mem_bytes: shared,
        };
        assert!(check_launch(&config((1 << 20, 65_535, 65_535), (1024, 1, 1), 0)).is_ok());
        assert!(check_launch(&config((1, 65_536, 1), (32, 1, 1), 0)).is_err());
        assert!(check_launch(&config((1, 1, 65_536), (32, 1, 1), 0)).is_err());
        assert!(check_launch(&config((1, 1, 1), (1025, 1, 1), 0)).is_err());
        assert!(check_launch(&config((1, 1, 1), (32, 32, 2), 0)).is_err());
        assert!(check_launch(&config((1, 1, 1), (32, 1, 1), 48 * 1024 + 1)).is_err());
        assert!(check_launch(&config((0, 1, 1), (32, 1, 1), 0)).is_err());
    }
}
