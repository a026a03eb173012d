//! The emulated CUDA device sees the bugs a GPU hides: small kernels with a planted
//! out-of-bounds read, barrier divergence, a data race and undefined behaviour are each
//! reported with the kernel's name; and `verify` fails on deliberately broken copies of real
//! kernel families (an off-by-one, a `__syncthreads()` removed from a tiled kernel).
//!
//! Needs a host C++ compiler (CI installs g++). Without one every test prints why it is skipped;
//! `MOESEG_REQUIRE_EMU=1` (set by CI) turns that into a failure.

use cudarc::driver::{DeviceRepr, LaunchConfig};
use moeseg::backend::cuda::emu::{self, EmuModule, Schedule};
use moeseg::backend::cuda::{backend_for, compilable_source, CudaBackend, CudaDevice, PRELUDE};
use moeseg::backend::CpuBackend;
use moeseg::tensor::Storage;
use moeseg::verify::{run_cases, run_table, text_line, Case, Input, RunOptions, Tolerance, Totals};
use std::sync::Arc;

/// The parameters of the planted kernels (mirror: `struct P` below).
#[repr(C)]
#[derive(Clone, Copy)]
struct Params {
    n: u32,
    divisor: u32,
}
// SAFETY: plain #[repr(C)] data matching `struct P`.
unsafe impl DeviceRepr for Params {}

const PLANTED: &str = r#"
struct P { u32 n; u32 divisor; };

// Off by one: the last thread reads x[n], one past the end of x.
extern "C" __global__ void read_past_end(P p, const float* __restrict__ x, float* __restrict__ y) {
    FOR_EACH_INDEX(i, p.n) y[i] = x[i + 1];
}

// Half the block leaves before a barrier the other half waits at.
extern "C" __global__ void early_exit_barrier(P p, float* __restrict__ y) {
    __shared__ float tile[64];
    if (threadIdx.x >= 32) return;
    tile[threadIdx.x] = 1.0f;
    __syncthreads();
    y[threadIdx.x] = tile[31 - threadIdx.x];
}

// Odd and even threads wait at two different barriers.
extern "C" __global__ void split_barriers(P p, float* __restrict__ y) {
    if (threadIdx.x % 2) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    y[threadIdx.x] = 0.0f;
}

// Each thread reads its neighbour's shared slot without a barrier after the writes: a race.
extern "C" __global__ void neighbour_without_barrier(P p, float* __restrict__ y) {
    __shared__ float tile[64];
    tile[threadIdx.x] = (float)(blockIdx.x * 64 + threadIdx.x);
    y[blockIdx.x * 64 + threadIdx.x] = tile[(threadIdx.x + 1) % 64];
}

// The same with the barrier: no race.
extern "C" __global__ void neighbour_with_barrier(P p, float* __restrict__ y) {
    __shared__ float tile[64];
    tile[threadIdx.x] = (float)(blockIdx.x * 64 + threadIdx.x);
    __syncthreads();
    y[blockIdx.x * 64 + threadIdx.x] = tile[(threadIdx.x + 1) % 64];
}

// Integer division by a parameter that may be zero.
extern "C" __global__ void divide_by_parameter(P p, float* __restrict__ y) {
    FOR_EACH_INDEX(i, p.n) y[i] = (float)(i / p.divisor);
}

// A NaN converted to an integer index.
extern "C" __global__ void nan_to_index(P p, const float* __restrict__ x, float* __restrict__ y) {
    FOR_EACH_INDEX(i, p.n) y[i] = (float)(u32)x[i];
}

// Only block 0 writes the shared tile; the others read what they never wrote.
extern "C" __global__ void shared_read_before_write(P p, float* __restrict__ y) {
    __shared__ float tile[64];
    if (blockIdx.x == 0) tile[threadIdx.x] = 1.0f;
    __syncthreads();
    y[blockIdx.x * 64 + threadIdx.x] = tile[threadIdx.x];
}

// A warp sum by butterfly shuffles: every lane gets the total of its warp.
extern "C" __global__ void warp_total(P p, const float* __restrict__ x, float* __restrict__ y) {
    float v = x[blockIdx.x * blockDim.x + threadIdx.x];
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    y[blockIdx.x * blockDim.x + threadIdx.x] = v;
}
"#;

/// The emulated device `ordinal`, or `None` after saying why the test is skipped.
fn emulator(test: &str, ordinal: usize) -> Option<&'static CudaBackend> {
    match emu::compile::host_compiler() {
        Ok(_) => Some(backend_for(CudaDevice::emulated(ordinal))),
        Err(e) => {
            assert!(
                std::env::var_os("MOESEG_REQUIRE_EMU").is_none(),
                "{test}: MOESEG_REQUIRE_EMU is set but the emulator cannot run: {e}"
            );
            println!("skipped {test}: no host C++ compiler for the emulated device ({e})");
            None
        }
    }
}

fn planted() -> EmuModule {
    let source = format!("{PRELUDE}\n#line 1 \"planted.cu\"\n{PLANTED}");
    EmuModule::load("planted.cu", &source).expect("the planted kernels compile")
}

fn config(blocks: u32, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launches `kernel` with `inputs` uploaded and one output of `out_len` floats; its values.
fn run(
    gpu: &CudaBackend,
    module: &EmuModule,
    kernel: &str,
    launch: LaunchConfig,
    params: Params,
    inputs: &[&[f32]],
    out_len: usize,
) -> moeseg::Result<Vec<f32>> {
    let uploaded = inputs
        .iter()
        .map(|data| gpu.upload_slice(data))
        .collect::<moeseg::Result<Vec<_>>>()?;
    let out = gpu.alloc(out_len)?;
    let mut buffers: Vec<_> = uploaded.iter().collect();
    buffers.push(&out);
    gpu.launch_emulated(module, kernel, launch, &params, &buffers)?;
    gpu.download(&out)
}

#[test]
fn an_out_of_bounds_read_is_reported_with_the_kernel() {
    let Some(gpu) = emulator("an_out_of_bounds_read_is_reported_with_the_kernel", 0) else {
        return;
    };
    let module = planted();
    let x: Vec<f32> = (0..300).map(|v| v as f32).collect();
    let params = Params { n: 300, divisor: 1 };
    let err = run(
        gpu,
        &module,
        "read_past_end",
        config(2, 256),
        params,
        &[&x],
        300,
    )
    .unwrap_err()
    .to_string();
    println!("{err}");
    assert!(
        err.contains("read_past_end") && err.contains("outside every device allocation"),
        "{err}"
    );
    assert!(
        err.contains("block (1,0,0)") && err.contains("thread (43,0,0)"),
        "{err}"
    );
}

#[test]
fn barrier_divergence_is_reported_with_the_kernel() {
    let Some(gpu) = emulator("barrier_divergence_is_reported_with_the_kernel", 0) else {
        return;
    };
    let module = planted();
    let params = Params { n: 64, divisor: 1 };
    for kernel in ["early_exit_barrier", "split_barriers"] {
        let err = run(gpu, &module, kernel, config(1, 64), params, &[], 64)
            .unwrap_err()
            .to_string();
        println!("{err}");
        assert!(
            err.contains(kernel) && err.contains("barrier divergence"),
            "{kernel}: {err}"
        );
    }
}

/// A verify case running planted kernel `kernel` (no input is read; the dummy input tells
/// which side runs): the CPU side gives each thread's neighbour value, the emulated side
/// launches the kernel.
fn neighbour_case(module: &Arc<EmuModule>, kernel: &'static str) -> Case {
    let module = module.clone();
    Case {
        family: "planted",
        op: kernel.to_string(),
        shape: "4 blocks of 64".to_string(),
        inputs: vec![Input::Normal(1)],
        tolerance: Tolerance::EXACT,
        outputs: vec!["out"],
        run: Box::new(move |_, x| match &x[0] {
            Storage::Cuda(input) => {
                let gpu = backend_for(input.device());
                let out = gpu.alloc(256)?;
                let params = Params { n: 256, divisor: 1 };
                gpu.launch_emulated(&module, kernel, config(4, 64), &params, &[&out])?;
                Ok(vec![Storage::Cuda(out)])
            }
            Storage::Cpu(_) => Ok(vec![Storage::cpu(
                (0..256u32)
                    .map(|i| (i / 64 * 64 + (i % 64 + 1) % 64) as f32)
                    .collect(),
            )]),
        }),
    }
}

#[test]
fn a_race_is_reported_by_two_schedules() {
    let Some(gpu) = emulator("a_race_is_reported_by_two_schedules", 0) else {
        return;
    };
    let module = Arc::new(planted());
    let cases = [
        neighbour_case(&module, "neighbour_without_barrier"),
        neighbour_case(&module, "neighbour_with_barrier"),
    ];
    // What `moeseg verify --device cuda-emu` does: each case under two schedules.
    let options = RunOptions::new(1).under_schedules();
    let rows = run_cases(&cases, &CpuBackend, gpu, "cuda-emu:0", &options, |_| {});
    emu::set_schedule(None);
    let racy = &rows[0];
    println!("{}", text_line(std::slice::from_ref(racy)));
    assert_eq!(racy.op, "neighbour_without_barrier");
    assert!(!racy.pass, "the race passed");
    let why = racy.error.as_deref().unwrap_or_default();
    assert!(
        why.contains("outputs differ between runs 0 and 1 (race?)"),
        "{why}"
    );
    // With the barrier the schedules agree, and every thread sees its neighbour's value.
    assert!(rows[1].pass, "{:?}", rows[1]);
}

#[test]
fn undefined_behaviour_is_reported_with_file_and_line() {
    let Some(gpu) = emulator("undefined_behaviour_is_reported_with_file_and_line", 0) else {
        return;
    };
    let module = planted();
    let err = run(
        gpu,
        &module,
        "divide_by_parameter",
        config(1, 32),
        Params { n: 32, divisor: 0 },
        &[],
        32,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("divide_by_parameter") && err.contains("division by zero"),
        "{err}"
    );
    println!("{err}");
    assert!(err.contains("planted.cu:"), "{err}");
    let x = [1.0, f32::NAN, 2.0];
    let err = run(
        gpu,
        &module,
        "nan_to_index",
        config(1, 32),
        Params { n: 3, divisor: 1 },
        &[&x],
        3,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("nan_to_index") && err.contains("NaN"), "{err}");
}

#[test]
fn warp_shuffles_exchange_within_each_warp() {
    let Some(gpu) = emulator("warp_shuffles_exchange_within_each_warp", 0) else {
        return;
    };
    let module = planted();
    let x: Vec<f32> = (0..128).map(|v| v as f32).collect();
    let got = run(
        gpu,
        &module,
        "warp_total",
        config(2, 64),
        Params { n: 128, divisor: 1 },
        &[&x],
        128,
    )
    .unwrap();
    // Lane values of warp w are 32w..32w+31; their sum is 32·32w + 496.
    let want: Vec<f32> = (0..128)
        .map(|i| (32 * 32 * (i / 32) + 496) as f32)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn shared_memory_starts_undefined_in_every_block() {
    let Some(gpu) = emulator("shared_memory_starts_undefined_in_every_block", 0) else {
        return;
    };
    let module = planted();
    let params = Params { n: 0, divisor: 1 };
    // One OS thread runs several blocks in turn: without the NaN fill, blocks after block 0
    // would see its 1.0s and the bug would pass unseen.
    let got = run(
        gpu,
        &module,
        "shared_read_before_write",
        config(64, 64),
        params,
        &[],
        4096,
    )
    .unwrap();
    assert!(got[..64].iter().all(|&v| v == 1.0), "{:?}", &got[..64]);
    assert!(
        got[64..].iter().all(|v| v.is_nan()),
        "a later block saw another's shared memory"
    );
}

#[test]
fn launch_shapes_a_gpu_rejects_are_errors() {
    let Some(gpu) = emulator("launch_shapes_a_gpu_rejects_are_errors", 0) else {
        return;
    };
    let module = planted();
    let params = Params { n: 1, divisor: 1 };
    let err = run(
        gpu,
        &module,
        "warp_total",
        config(1, 2048),
        params,
        &[&[0.0; 2048]],
        2048,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("1024 threads"), "{err}");
    let err = run(gpu, &module, "warp_total", config(1, 32), params, &[], 32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 buffers"), "{err}");
}

/// `verify` (cases whose op contains `op`, two schedules) on `device`: the lines of the cases
/// that did not pass.
fn failed_cases(device: &CudaBackend, op: Option<&str>, seed: u64) -> (Totals, Vec<String>) {
    let options = RunOptions::new(seed).filter(op).under_schedules();
    let mut failed = Vec::new();
    let rows = run_table(
        &CpuBackend,
        device,
        &device.device().to_string(),
        &options,
        |rows| {
            if rows.iter().any(|row| !row.pass) {
                failed.push(text_line(rows));
            }
        },
    );
    emu::set_schedule(None);
    (Totals::from_rows(&rows), failed)
}

/// `verify` of family `family` on its own emulated device running `source` instead of the
/// real kernel file: the cases that did not pass.
fn verify_mutant(ordinal: usize, family: &'static str, op: &str, source: String) -> Vec<String> {
    let gpu = backend_for(CudaDevice::emulated(ordinal));
    let module = EmuModule::load(&format!("{family}-mutant.cu"), &source)
        .expect("the mutated family compiles");
    gpu.replace_family(family, module).unwrap();
    failed_cases(gpu, Some(op), 7).1
}

#[test]
fn every_kernel_passes_verify_under_two_schedules_for_three_seeds() {
    let Some(gpu) = emulator(
        "every_kernel_passes_verify_under_two_schedules_for_three_seeds",
        1,
    ) else {
        return;
    };
    for seed in 1..=3 {
        let (totals, failed) = failed_cases(gpu, None, seed);
        println!(
            "seed {seed}: {} cases, {} outputs, {} failed",
            totals.cases, totals.rows, totals.failed
        );
        assert!(totals.cases > 300, "{totals:?}");
        assert!(failed.is_empty(), "seed {seed}:\n{}", failed.join("\n"));
    }
}

/// `original` with `from` replaced by `to` once (the mutation must still apply to the file).
fn mutate(original: &str, from: &str, to: &str) -> String {
    assert_eq!(
        original.matches(from).count(),
        1,
        "the mutation `{from}` no longer matches the kernel file exactly once"
    );
    original.replacen(from, to, 1)
}

#[test]
fn verify_fails_on_an_off_by_one() {
    let Some(_) = emulator("verify_fails_on_an_off_by_one", 8) else {
        return;
    };
    let source = compilable_source("patch_grid").unwrap();
    let mutant = mutate(&source, "y < (i64)p.height", "y <= (i64)p.height");
    let failed = verify_mutant(8, "patch_grid", "patch_split", mutant);
    println!("{}", failed.join("\n"));
    assert!(
        !failed.is_empty(),
        "verify passed an off-by-one in patch_grid.cu"
    );
    // The real family passes on a device of its own.
    let (totals, failed) =
        failed_cases(backend_for(CudaDevice::emulated(2)), Some("patch_split"), 7);
    assert!(
        totals.cases > 0 && failed.is_empty(),
        "{}",
        failed.join("\n")
    );
}

#[test]
fn verify_fails_without_a_barrier_in_a_tiled_kernel() {
    let Some(_) = emulator("verify_fails_without_a_barrier_in_a_tiled_kernel", 9) else {
        return;
    };
    let source = compilable_source("matmul").unwrap();
    // The barrier after the multiply-adds of a tile: without it, fast threads load the next
    // tile over the one slow threads still read.
    let at = source
        .rfind("__syncthreads();")
        .expect("matmul.cu has barriers");
    let mutant = format!(
        "{}{}",
        &source[..at],
        &source[at + "__syncthreads();".len()..]
    );
    let failed = verify_mutant(9, "matmul", "matmul", mutant);
    println!("{}", failed.join("\n"));
    assert!(
        !failed.is_empty(),
        "verify passed matmul.cu without its second barrier"
    );
}

#[test]
fn schedules_are_honoured() {
    assert_eq!(
        emu::with_schedule(Schedule::Reverse, emu::current_schedule),
        Ok(Schedule::Reverse)
    );
}
