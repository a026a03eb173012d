//! The verification harness behind `moeseg verify`: every CUDA kernel, forward and backward,
//! against the CPU backend.
//!
//! - [`cases`]: the table ([`table`]), one [`Case`] per (kernel, shape), each with its op family
//!   ([`FAMILIES`]), random [`Input`]s and a [`Tolerance`].
//! - [`compare()`]: `|got − want| ≤ atol + rtol·|want|` per element plus a relative-norm bound
//!   `‖got − want‖ / ‖want‖ ≤ norm`; a NaN never passes (except against a NaN).
//! - [`run_table`] / [`run_cases`]: each case draws fresh random inputs from the seed, runs one
//!   backend method on the reference (the CPU) and on the target device, and yields one [`Row`]
//!   per output. Before each target run, buffers of the outputs' sizes are filled with NaN and
//!   released to the device's caching allocator, so an element a kernel forgets to write shows
//!   up as NaN. [`RunOptions`] can run the target several times and require bitwise-identical
//!   outputs (a difference is reported as a race).
//! - [`Report`]: a whole run (device, seed, version, commit, date, rows, [`Totals`]) as JSON;
//!   [`text_header`] / [`text_line`]: the text table.
//! - [`compile_families`]: the compile-only check (NVRTC, no GPU).
//!
//! The harness is device-agnostic: the table runs CPU-vs-CPU in `cargo test` and with
//! `moeseg verify --device cpu`, so shape and table bugs show without a GPU. The committed
//! record of the runs, one JSON per device, is `kernels/verified/` (see `kernels/verified.md`).

pub mod cases;
mod compare;
mod compile;
mod report;
mod runner;

pub use cases::{table, Case, CaseFn, Input, FAMILIES};
pub use compare::{bitwise_differences, compare, Comparison, Tolerance};
pub use compile::{compile_families, nvrtc_description, CompileRow};
pub use report::{
    case_groups, git_commit, text_header, text_line, utc_date, utc_now, Report, Row, Totals,
};
pub use runner::{draw_inputs, run_case, run_cases, run_table, BeforeRun, RunOptions};
