//! One block of an emulated launch: every CUDA thread is a fiber (a stackful coroutine) on the
//! calling OS thread, so `__shared__` (`static thread_local` in `cuda_emu.h`) is per block.
//!
//! A fiber runs until it blocks: at `__syncthreads()` (it waits for the whole block), at a warp
//! exchange (it waits for the lanes of its mask), or when it ends or faults. The order in which
//! the runnable fibers go, between two such points, is the [`Schedule`]: forward, reverse or a
//! seeded random permutation per round. A kernel without races computes the same bits under
//! every schedule; `moeseg verify --device cuda-emu` runs each case under two and compares.
//!
//! What a GPU hides and this reports, naming the thread: barrier divergence (threads waiting at
//! a barrier that others never reach: they ended, or wait at another one), warp exchanges with
//! lanes that ended or never arrive, undefined behaviour caught by the sanitizer checks, and
//! memory faults (see [`super::memory`]).

use super::memory;
use corosensei::stack::DefaultStack;
use corosensei::trap::CoroutineTrapHandler;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_void, CStr};

use std::fmt;
use std::str::FromStr;

/// Bytes of stack per emulated thread (kernels use little; the sanitizer handlers a little more).
const FIBER_STACK: usize = 128 * 1024;

/// CUDA's `dim3`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dim3 {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

impl Dim3 {
    pub fn new((x, y, z): (u32, u32, u32)) -> Dim3 {
        Dim3 { x, y, z }
    }

    /// `x·y·z`.
    pub fn volume(self) -> u64 {
        u64::from(self.x) * u64::from(self.y) * u64::from(self.z)
    }

    /// The `index`-th point of the box `self`, x fastest (CUDA's linear order).
    pub fn point(self, index: u64) -> Dim3 {
        let (x, y) = (u64::from(self.x), u64::from(self.y));
        Dim3 {
            x: (index % x) as u32,
            y: ((index / x) % y) as u32,
            z: (index / (x * y)) as u32,
        }
    }
}

impl fmt::Display for Dim3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({},{},{})", self.x, self.y, self.z)
    }
}

/// One emulated thread's indices (mirror: `EmuThread` in `cuda_emu.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EmuThread {
    pub thread_idx: Dim3,
    pub block_idx: Dim3,
    pub block_dim: Dim3,
    pub grid_dim: Dim3,
}

/// What the kernels call on the host (mirror: `EmuHost` in `cuda_emu.h`).
#[repr(C)]
pub struct EmuHost {
    barrier: extern "C" fn(u32),
    warp: extern "C" fn(u32, u32, u64, i32, i32, u32) -> u64,
    fail: extern "C" fn(*const c_char, *const c_char, u32, u32) -> !,
}

/// The callbacks handed to every family's `emu_init`.
pub static HOST: EmuHost = EmuHost {
    barrier: host_barrier,
    warp: host_warp,
    fail: host_fail,
};

/// `emu_run_<kernel>`: runs the kernel for one thread.
pub type RunFn = unsafe extern "C" fn(*const EmuThread, *const c_void, *const *mut c_void);

/// The order in which runnable threads go between two synchronisation points.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Schedule {
    /// Thread 0, 1, 2, ...
    #[default]
    Forward,
    /// The last thread first.
    Reverse,
    /// A permutation drawn per block and round from the seed.
    Random(u64),
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(text: &str) -> Result<Schedule, String> {
        match text.trim() {
            "forward" => Ok(Schedule::Forward),
            "reverse" => Ok(Schedule::Reverse),
            other => other
                .strip_prefix("random:")
                .and_then(|seed| seed.parse().ok())
                .map(Schedule::Random)
                .ok_or_else(|| {
                    format!("schedule `{text}`: expected forward, reverse or random:SEED")
                }),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Forward => write!(f, "forward"),
            Schedule::Reverse => write!(f, "reverse"),
            Schedule::Random(seed) => write!(f, "random:{seed}"),
        }
    }
}

thread_local! {
    static SCHEDULE: Cell<Option<Schedule>> = const { Cell::new(None) };
}

/// Runs `f` with launches from this thread under `schedule` (instead of
/// `MOESEG_EMU_SCHEDULE`).
pub fn with_schedule<R>(schedule: Schedule, f: impl FnOnce() -> R) -> R {
    let before = SCHEDULE.replace(Some(schedule));
    let result = f();
    SCHEDULE.set(before);
    result
}

/// Sets (or with `None` clears) the schedule of launches from this thread.
pub fn set_schedule(schedule: Option<Schedule>) {
    SCHEDULE.set(schedule);
}

/// The schedule of run `run` when a case runs several times: forward, reverse, then random
/// permutations seeded by the run number.
pub fn schedule_for_run(run: usize) -> Schedule {
    match run {
        0 => Schedule::Forward,
        1 => Schedule::Reverse,
        n => Schedule::Random(n as u64),
    }
}

/// The schedule of launches from this thread: [`with_schedule`]'s, else
/// `MOESEG_EMU_SCHEDULE`, else forward.
pub fn current_schedule() -> Result<Schedule, String> {
    match SCHEDULE.get() {
        Some(schedule) => Ok(schedule),
        None => match std::env::var("MOESEG_EMU_SCHEDULE") {
            Ok(text) if !text.trim().is_empty() => text
                .parse()
                .map_err(|e: String| format!("MOESEG_EMU_SCHEDULE: {e}")),
            _ => Ok(Schedule::Forward),
        },
    }
}

/// Why a fiber stopped for good.
#[derive(Clone, Debug)]
pub enum Fault {
    /// A sanitizer check: what, and where in the kernel file.
    Undefined {
        what: String,
        file: String,
        line: u32,
        column: u32,
    },
    /// A memory access outside every device allocation (a guard page).
    Memory { address: usize, write: Option<bool> },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Undefined {
                what,
                file,
                line,
                column,
            } => write!(f, "{what} at {file}:{line}:{column}"),
            Fault::Memory { address, write } => {
                let access = match write {
                    Some(true) => "write",
                    Some(false) => "read",
                    None => "access",
                };
                write!(
                    f,
                    "{access} at address {address:#x}, outside every device allocation \
                     (a guard page)"
                )
            }
        }
    }
}

/// A warp exchange asked for by one lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WarpRequest {
    kind: u32,
    mask: u32,
    value: u64,
    arg: i32,
    width: i32,
    line: u32,
}

/// Why a fiber gave control back.
enum Blocked {
    Barrier(u32),
    Warp(WarpRequest),
    Fault(Fault),
}

/// How a fiber ended: normally, or a fault raised on its stack by the signal handler.
type FiberEnd = Result<(), Fault>;
type Fiber = Coroutine<u64, Blocked, FiberEnd, DefaultStack>;
/// Points at the running fiber's yielder while it runs.
type YielderPtr = *const Yielder<u64, Blocked>;

thread_local! {
    static YIELDER: Cell<YielderPtr> = const { Cell::new(std::ptr::null()) };
    /// The running fiber's trap handler, for the memory-fault signal handler.
    static TRAP: Cell<Option<CoroutineTrapHandler<FiberEnd>>> = const { Cell::new(None) };
    /// Fiber stacks of this OS thread, reused from block to block.
    static STACKS: RefCell<Vec<DefaultStack>> = const { RefCell::new(Vec::new()) };
}

/// Gives control back to the block runner; returns what it resumes the fiber with.
fn suspend(blocked: Blocked) -> u64 {
    let yielder = YIELDER.get();
    if yielder.is_null() {
        // Kernel code only ever runs on a fiber; anything else is a bug in the emulator.
        std::process::abort();
    }
    // SAFETY: `yielder` was set by this fiber's entry closure and the fiber is running, so it
    // is alive; other fibers overwrite the cell while this one waits, hence the restore.
    let value = unsafe { (*yielder).suspend(blocked) };
    YIELDER.set(yielder);
    value
}

extern "C" fn host_barrier(line: u32) {
    suspend(Blocked::Barrier(line));
}

extern "C" fn host_warp(kind: u32, mask: u32, value: u64, arg: i32, width: i32, line: u32) -> u64 {
    suspend(Blocked::Warp(WarpRequest {
        kind,
        mask,
        value,
        arg,
        width,
        line,
    }))
}

extern "C" fn host_fail(what: *const c_char, file: *const c_char, line: u32, column: u32) -> ! {
    let text = |p: *const c_char| {
        if p.is_null() {
            "?".to_string()
        } else {
            // SAFETY: the sanitizer data and cuda_emu.h pass NUL-terminated static strings.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    let fault = Fault::Undefined {
        what: text(what),
        file: text(file),
        line,
        column,
    };
    loop {
        // The runner never resumes a faulted fiber; the loop only satisfies `!`.
        suspend(Blocked::Fault(fault.clone()));
    }
}

/// The trap handler of the fiber running on this OS thread, if any (for the signal handler).
pub fn running_trap_handler() -> Option<CoroutineTrapHandler<FiberEnd>> {
    let handler = TRAP.take();
    TRAP.set(handler.clone());
    handler
}

/// Where each thread of the block is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// Not started yet, or released with this value (a warp exchange's result, else 0).
    Runnable(u64),
    AtBarrier(u32),
    AtWarp(WarpRequest),
    Done,
}

/// A block that did not complete: which thread, and why.
#[derive(Clone, Debug)]
pub struct BlockError {
    pub thread: Option<Dim3>,
    pub what: String,
}

/// The `__shared__` arrays of a kernel file: its thread-local block (found with `dlinfo`),
/// filled with 0xFF bytes (NaN floats, -1 integers) before each block runs.
#[derive(Clone, Copy)]
pub struct SharedMemory {
    /// The `dlopen` handle of the file's shared object.
    pub handle: usize,
    /// Bytes of its thread-local segment.
    pub bytes: usize,
    /// `emu_touch_shared`: allocates this OS thread's copy.
    pub touch: unsafe extern "C" fn(),
}

impl SharedMemory {
    /// Fills this OS thread's copy with 0xFF bytes.
    fn poison(&self) {
        // SAFETY: `touch` only writes a thread-local of the loaded file; dlinfo returns this
        // thread's copy of its thread-local block (or null), which is `bytes` long.
        unsafe {
            (self.touch)();
            let mut block: *mut c_void = std::ptr::null_mut();
            let status = libc::dlinfo(
                self.handle as *mut c_void,
                libc::RTLD_DI_TLS_DATA,
                (&mut block as *mut *mut c_void).cast(),
            );
            if status == 0 && !block.is_null() {
                std::ptr::write_bytes(block.cast::<u8>(), 0xff, self.bytes);
            }
        }
    }
}

/// The launch-wide inputs of one block.
pub struct BlockLaunch<'a> {
    pub run: RunFn,
    pub grid: Dim3,
    pub block: Dim3,
    pub params: &'a [u8],
    /// Buffer addresses, in the kernel's parameter order.
    pub buffers: &'a [usize],
    pub schedule: Schedule,
    /// The kernel file's `__shared__` arrays, poisoned before each block.
    pub shared: Option<SharedMemory>,
}

/// Runs block `block_idx` of `launch` to completion on this OS thread.
pub fn run_block(launch: &BlockLaunch<'_>, block_idx: Dim3) -> Result<(), BlockError> {
    if let Some(shared) = &launch.shared {
        shared.poison();
    }
    let count = launch.block.volume() as usize;
    let threads: Vec<EmuThread> = (0..count as u64)
        .map(|i| EmuThread {
            thread_idx: launch.block.point(i),
            block_idx,
            block_dim: launch.block,
            grid_dim: launch.grid,
        })
        .collect();
    let mut runner = Runner {
        launch,
        threads: &threads,
        fibers: (0..count).map(|_| None).collect(),
        states: vec![State::Runnable(0); count],
        block_index: u64::from(block_idx.x)
            + u64::from(launch.grid.x)
                * (u64::from(block_idx.y) + u64::from(launch.grid.y) * u64::from(block_idx.z)),
    };
    let result = runner.run();
    runner.release();
    result
}

struct Runner<'a, 'l> {
    launch: &'a BlockLaunch<'l>,
    threads: &'a [EmuThread],
    fibers: Vec<Option<Fiber>>,
    states: Vec<State>,
    block_index: u64,
}

impl Runner<'_, '_> {
    fn error(&self, thread: usize, what: String) -> BlockError {
        BlockError {
            thread: Some(self.threads[thread].thread_idx),
            what,
        }
    }

    fn run(&mut self) -> Result<(), BlockError> {
        for round in 0u64.. {
            let mut order: Vec<usize> = (0..self.states.len())
                .filter(|&i| matches!(self.states[i], State::Runnable(_)))
                .collect();
            self.arrange(&mut order, round);
            for i in order {
                self.step(i)?;
            }
            if self.resolve_warps()? {
                continue;
            }
            if self.states.iter().all(|s| *s == State::Done) {
                return Ok(());
            }
            self.release_barrier()?;
        }
        Ok(())
    }

    /// Puts the runnable threads in the schedule's order for this round.
    fn arrange(&self, order: &mut [usize], round: u64) {
        match self.launch.schedule {
            Schedule::Forward => {}
            Schedule::Reverse => order.reverse(),
            Schedule::Random(seed) => {
                let mut state = seed ^ self.block_index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ round;
                for i in (1..order.len()).rev() {
                    state = splitmix64(state);
                    order.swap(i, (state % (i as u64 + 1)) as usize);
                }
            }
        }
    }

    /// Runs thread `i` until it blocks, ends or faults.
    fn step(&mut self, i: usize) -> Result<(), BlockError> {
        let State::Runnable(value) = self.states[i] else {
            return Ok(());
        };
        if self.fibers[i].is_none() {
            self.fibers[i] = Some(self.new_fiber(i)?);
        }
        let Some(fiber) = self.fibers[i].as_mut() else {
            return Ok(());
        };
        TRAP.set(Some(fiber.trap_handler()));
        let result = fiber.resume(value);
        TRAP.set(None);
        match result {
            CoroutineResult::Yield(Blocked::Barrier(line)) => {
                self.states[i] = State::AtBarrier(line)
            }
            CoroutineResult::Yield(Blocked::Warp(request)) => {
                self.states[i] = State::AtWarp(request)
            }
            CoroutineResult::Yield(Blocked::Fault(fault)) => {
                return Err(self.error(i, fault.to_string()))
            }
            CoroutineResult::Return(Err(fault)) => {
                self.states[i] = State::Done;
                self.recycle(i);
                return Err(self.error(i, fault.to_string()));
            }
            CoroutineResult::Return(Ok(())) => {
                self.states[i] = State::Done;
                self.recycle(i);
            }
        }
        Ok(())
    }

    fn new_fiber(&self, i: usize) -> Result<Fiber, BlockError> {
        let stack = match STACKS.with_borrow_mut(Vec::pop) {
            Some(stack) => stack,
            None => DefaultStack::new(FIBER_STACK).map_err(|e| BlockError {
                thread: Some(self.threads[i].thread_idx),
                what: format!("no memory for an emulated thread's stack: {e}"),
            })?,
        };
        let run = self.launch.run;
        let thread = &self.threads[i] as *const EmuThread as usize;
        let params = self.launch.params.as_ptr() as usize;
        let buffers = self.launch.buffers.as_ptr() as usize;
        Ok(Coroutine::with_stack(
            stack,
            move |yielder: &Yielder<u64, Blocked>, _| {
                YIELDER.set(yielder);
                // SAFETY: `run` is a kernel entry of a loaded family whose signature was checked
                // against the launcher's; the thread record, parameters and buffer list outlive
                // the fiber (run_block finishes or resets every fiber before returning).
                unsafe {
                    run(
                        thread as *const EmuThread,
                        params as *const c_void,
                        buffers as *const *mut c_void,
                    )
                };
                Ok(())
            },
        ))
    }

    /// Gives a finished fiber's stack back to this OS thread's pool.
    fn recycle(&mut self, i: usize) {
        if let Some(fiber) = self.fibers[i].take() {
            let stack = fiber.into_stack();
            STACKS.with_borrow_mut(|stacks| stacks.push(stack));
        }
    }

    /// Abandons every fiber still suspended (after an error) and pools all stacks.
    fn release(&mut self) {
        for i in 0..self.fibers.len() {
            if let Some(fiber) = self.fibers[i].as_mut() {
                if fiber.started() && !fiber.done() {
                    // SAFETY: a suspended fiber holds only kernel frames (plain data) and the
                    // host callback waiting in `suspend`; nothing on its stack needs dropping.
                    unsafe { fiber.force_reset() };
                }
            }
            self.recycle(i);
        }
    }

    /// Completes every warp exchange whose lanes have all arrived; true if any did.
    fn resolve_warps(&mut self) -> Result<bool, BlockError> {
        let count = self.states.len();
        let mut progressed = false;
        for warp_start in (0..count).step_by(32) {
            let lanes = (count - warp_start).min(32);
            let Some(first) =
                (0..lanes).find(|&l| matches!(self.states[warp_start + l], State::AtWarp(_)))
            else {
                continue;
            };
            let State::AtWarp(request) = self.states[warp_start + first] else {
                continue;
            };
            let mut ready = true;
            for lane in 0..lanes {
                if request.mask & (1 << lane) == 0 {
                    continue;
                }
                match self.states[warp_start + lane] {
                    State::AtWarp(other) if other.kind == request.kind && other.line == request.line && other.mask == request.mask => {}
                    State::AtWarp(other) => {
                        return Err(self.error(
                            warp_start + lane,
                            format!(
                                "warp divergence: lane {lane} is at a warp operation at line {} (mask {:#x}) while lane {first} is at line {} (mask {:#x})",
                                other.line, other.mask, request.line, request.mask
                            ),
                        ))
                    }
                    State::Done => {
                        return Err(self.error(
                            warp_start + first,
                            format!(
                                "warp operation at line {} names lane {lane} in its mask {:#x}, but that lane has ended",
                                request.line, request.mask
                            ),
                        ))
                    }
                    _ => ready = false,
                }
            }
            if request.mask & (1 << first) == 0 {
                return Err(self.error(
                    warp_start + first,
                    format!("warp operation at line {}: the calling lane {first} is not in its mask {:#x}", request.line, request.mask),
                ));
            }
            if !ready {
                continue;
            }
            let value_of = |lane: usize| match self.states[warp_start + lane] {
                State::AtWarp(r) => r.value,
                _ => 0,
            };
            let mut results = Vec::with_capacity(lanes);
            for lane in 0..lanes {
                if request.mask & (1 << lane) == 0 {
                    continue;
                }
                let width = request.width.clamp(1, 32) as usize;
                let segment = lane - lane % width;
                let arg = request.arg.max(0) as usize;
                let source = match request.kind {
                    0 => segment + arg % width,
                    1 => lane ^ arg,
                    2 if lane + arg < segment + width => lane + arg,
                    3 if lane >= segment + arg => lane - arg,
                    _ => lane,
                };
                if source >= lanes || request.mask & (1 << source) == 0 {
                    return Err(self.error(
                        warp_start + lane,
                        format!(
                            "warp shuffle at line {} reads lane {source}, which is not in the mask {:#x} or not in the block",
                            request.line, request.mask
                        ),
                    ));
                }
                results.push((lane, value_of(source)));
            }
            for (lane, value) in results {
                self.states[warp_start + lane] = State::Runnable(value);
            }
            progressed = true;
        }
        Ok(progressed)
    }

    /// Releases a barrier all live threads wait at, or reports why the block cannot go on.
    fn release_barrier(&mut self) -> Result<(), BlockError> {
        let describe = |states: &[State], pick: &dyn Fn(&State) -> bool| -> (usize, String) {
            let threads: Vec<usize> = (0..states.len()).filter(|&i| pick(&states[i])).collect();
            let shown: Vec<String> = threads.iter().take(4).map(|&i| i.to_string()).collect();
            let more = if threads.len() > 4 {
                format!(" and {} more", threads.len() - 4)
            } else {
                String::new()
            };
            (
                threads.first().copied().unwrap_or(0),
                format!("{}{more}", shown.join(", ")),
            )
        };
        let barrier_line = self.states.iter().find_map(|s| match s {
            State::AtBarrier(line) => Some(*line),
            _ => None,
        });
        let Some(line) = barrier_line else {
            let (first, which) = describe(&self.states, &|s| matches!(s, State::AtWarp(_)));
            return Err(self.error(
                first,
                format!("warp operation never completes: threads {which} wait for lanes that are at a barrier or have ended"),
            ));
        };
        if let Some(other) = self.states.iter().find_map(|s| match s {
            State::AtBarrier(l) if *l != line => Some(*l),
            _ => None,
        }) {
            let (first, at_line) = describe(&self.states, &|s| *s == State::AtBarrier(line));
            let (_, at_other) = describe(&self.states, &|s| *s == State::AtBarrier(other));
            return Err(self.error(
                first,
                format!("barrier divergence: threads {at_line} wait at __syncthreads() on line {line}, threads {at_other} at the one on line {other}"),
            ));
        }
        if self.states.contains(&State::Done) {
            let (first, waiting) = describe(&self.states, &|s| *s == State::AtBarrier(line));
            let (_, ended) = describe(&self.states, &|s| *s == State::Done);
            return Err(self.error(
                first,
                format!("barrier divergence: threads {waiting} wait at __syncthreads() on line {line}, which threads {ended} never reach (they ended; a GPU hangs or misbehaves here)"),
            ));
        }
        if let Some(i) = self
            .states
            .iter()
            .position(|s| matches!(s, State::AtWarp(_)))
        {
            return Err(self.error(
                i,
                format!("thread waits at a warp operation while the rest of its block waits at __syncthreads() on line {line}"),
            ));
        }
        for state in &mut self.states {
            *state = State::Runnable(0);
        }
        Ok(())
    }
}

/// A step of the SplitMix64 generator (the random schedule's permutations).
fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Makes sure the memory-fault handler is installed (once per process).
pub fn ensure_fault_handler() {
    memory::install_fault_handler();
}
