//! Device memory of the emulated device: host mappings with guard regions, and the signal
//! handler that turns an access into a guard region into a launch error.
//!
//! Each allocation is its own mapping: [`GUARD`] bytes of inaccessible memory, the body (the
//! caching allocator's size class, rounded up to pages), [`GUARD`] bytes inaccessible again.
//! A buffer of `len` floats is addressed so that it *ends* exactly at the upper guard
//! ([`HostAllocation::address`]): reading or writing one element past the end faults. Below
//! the start, the unused part of the size class is readable, so only underruns past it (or
//! further than the guard) fault; the NaN-poisoning of `moeseg verify` covers reads of
//! elements never written.
//!
//! The fault handler (SIGSEGV/SIGBUS, x86-64 Linux) acts only when the faulting thread is
//! running an emulated CUDA thread (the fiber's stack holds the stack pointer): it makes that
//! fiber end with [`Fault::Memory`], so the launch returns an error naming kernel, block and
//! thread. Any other fault goes to the handler that was installed before (Rust's stack-overflow
//! report, or the default action).

use super::block::Fault;
use std::sync::OnceLock;

/// Inaccessible bytes on each side of an allocation.
pub const GUARD: usize = 64 * 1024;

/// One emulated device allocation of `capacity` floats (unmapped on drop).
pub struct HostAllocation {
    /// The start of the whole mapping (lower guard included).
    mapping: *mut libc::c_void,
    mapping_len: usize,
    /// One past the last byte of the accessible body (page-aligned).
    body_end: usize,
    capacity: usize,
}

// SAFETY: the mapping is plain memory owned by this value; kernels and copies that use it are
// ordered by the runtime (every emulated launch and copy is synchronous).
unsafe impl Send for HostAllocation {}
unsafe impl Sync for HostAllocation {}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).unwrap_or(4096).max(4096)
}

impl HostAllocation {
    /// Maps `capacity` floats between two guard regions; `Err` says why not.
    pub fn new(capacity: usize) -> Result<HostAllocation, String> {
        let page = page_size();
        let body = (capacity.max(1) * 4).div_ceil(page) * page;
        let mapping_len = body + 2 * GUARD;
        // SAFETY: an anonymous private mapping at an address the kernel picks.
        let mapping = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapping_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if mapping == libc::MAP_FAILED {
            return Err(format!(
                "mmap of {mapping_len} bytes failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        let allocation = HostAllocation {
            mapping,
            mapping_len,
            body_end: mapping as usize + GUARD + body,
            capacity,
        };
        // SAFETY: the body lies inside the mapping just made.
        let status = unsafe {
            libc::mprotect(
                (mapping as usize + GUARD) as *mut libc::c_void,
                body,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if status != 0 {
            return Err(format!(
                "mprotect of {body} bytes failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(allocation)
    }

    /// Capacity in floats (the size class).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The address of a buffer of `len` floats in this allocation: its last element is the
    /// last float before the upper guard.
    pub fn address(&self, len: usize) -> u64 {
        (self.body_end - len.min(self.capacity) * 4) as u64
    }
}

impl Drop for HostAllocation {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, once.
        unsafe { libc::munmap(self.mapping, self.mapping_len) };
    }
}

/// Installs the fault handler once per process (a no-op off x86-64 Linux, where a fault in an
/// emulated kernel ends the process as on any host program).
pub fn install_fault_handler() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        handler::install();
    });
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod handler {
    use super::Fault;
    use crate::backend::cuda::emu::block::running_trap_handler;
    use std::sync::atomic::{AtomicPtr, Ordering};

    /// The actions installed before ours, for SIGSEGV and SIGBUS.
    static PREVIOUS_SEGV: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());
    static PREVIOUS_BUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());

    pub fn install() {
        for (signal, previous) in [
            (libc::SIGSEGV, &PREVIOUS_SEGV),
            (libc::SIGBUS, &PREVIOUS_BUS),
        ] {
            // SAFETY: sigaction with a zeroed struct filled as the man page says; the old
            // action is kept for the life of the process (leaked on purpose).
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_fault as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                let old = Box::into_raw(Box::new(std::mem::zeroed::<libc::sigaction>()));
                if libc::sigaction(signal, &action, old) == 0 {
                    previous.store(old, Ordering::SeqCst);
                } else {
                    drop(Box::from_raw(old));
                }
            }
        }
    }

    extern "C" fn on_fault(
        signal: libc::c_int,
        info: *mut libc::siginfo_t,
        context: *mut libc::c_void,
    ) {
        // SAFETY: called by the kernel with valid `info` and `context` for this signal.
        unsafe {
            let uc = context as *mut libc::ucontext_t;
            let gregs = &mut (*uc).uc_mcontext.gregs;
            let rsp = gregs[libc::REG_RSP as usize] as usize;
            if let Some(trap) = running_trap_handler() {
                if trap.stack_ptr_in_bounds(rsp) {
                    let address = (*info).si_addr() as usize;
                    // Page-fault error code bit 1: the access was a write.
                    let write =
                        (signal == libc::SIGSEGV).then(|| gregs[libc::REG_ERR as usize] & 2 != 0);
                    let regs =
                        trap.setup_trap_handler(move || Err(Fault::Memory { address, write }));
                    gregs[libc::REG_RIP as usize] = regs.rip as i64;
                    gregs[libc::REG_RSP as usize] = regs.rsp as i64;
                    gregs[libc::REG_RBP as usize] = regs.rbp as i64;
                    gregs[libc::REG_RDI as usize] = regs.rdi as i64;
                    gregs[libc::REG_RSI as usize] = regs.rsi as i64;
                    return;
                }
            }
            let previous = if signal == libc::SIGBUS {
                &PREVIOUS_BUS
            } else {
                &PREVIOUS_SEGV
            };
            let previous = previous.load(Ordering::SeqCst);
            if !previous.is_null() {
                let handler = (*previous).sa_sigaction;
                if (*previous).sa_flags & libc::SA_SIGINFO != 0 && handler > 1 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(handler);
                    f(signal, info, context);
                    return;
                }
                if handler > 1 {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
                    f(signal);
                    return;
                }
            }
            // The default action: reinstall it and return, so the access faults again and the
            // process ends as it would have without us.
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signal, &default, std::ptr::null_mut());
        }
    }
}
