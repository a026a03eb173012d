//! `moeseg verify`: every CUDA kernel, forward and backward, against the CPU backend.
//!
//! Each [`Case`] of the table ([`cases::table`]) draws fresh random inputs from the seed, runs
//! one backend method on the CPU (the reference) and on the target device, and compares every
//! output element with `|got − want| ≤ atol + rtol·|want|` plus a relative-norm bound
//! `‖got − want‖ / ‖want‖ ≤ norm`; a NaN never passes. Before the target runs, buffers of the
//! outputs' sizes are filled with NaN and released to the device's caching allocator, so an
//! element a kernel forgets to write shows up as NaN.
//!
//! Exit codes: 0 all cases pass; 1 a case failed (or its kernel is missing); 3 no usable GPU
//! (the message says where libcuda was looked for). `--compile-only` needs no GPU: it compiles
//! every kernel family with NVRTC and exits 1 on a compile error.
//!
//! The harness is device-agnostic: `cargo test` runs the whole table CPU-vs-CPU, so shape and
//! table bugs show without a GPU. STATUS: on the GPU side compile-checked under NVRTC only.

mod cases;

pub use cases::{table, Case, Input};

use crate::backend::cuda::{self, Arch, KernelCompiler, OutputFormat, KERNELS};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::{Rng, Storage};
use clap::Args;

/// Exit code when a case fails or has no kernel.
pub const EXIT_FAILED: i32 = 1;
/// Exit code when no GPU can be used.
pub const EXIT_NO_GPU: i32 = 3;

/// Arguments of `moeseg verify`.
#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// Only the cases whose op name contains this text (e.g. `softmax`, `conv2d`).
    #[arg(long)]
    pub op: Option<String>,
    /// Seed of the random inputs (fresh each run when absent).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The device to check against the CPU: `cuda` or `cuda:N`.
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    /// Only compile every kernel family with NVRTC (no GPU needed) and report.
    #[arg(long)]
    pub compile_only: bool,
    /// Architectures for `--compile-only`, comma-separated.
    #[arg(long, default_value = "sm_80,sm_90", value_delimiter = ',')]
    pub arch: Vec<String>,
}

/// Per-op tolerance: `|got − want| ≤ atol + rtol·|want|` per element and a relative-norm bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub atol: f32,
    pub rtol: f32,
    /// Bound on `‖got − want‖₂ / ‖want‖₂`.
    pub norm: f32,
}

impl Tolerance {
    /// Elementwise maps: about 1e-5 relative.
    pub const ELEMENTWISE: Tolerance = Tolerance {
        atol: 1e-6,
        rtol: 1e-5,
        norm: 1e-5,
    };
    /// Transcendental maps (exp, tanh, softmax): the GPU's fast-math-free expf still differs in
    /// the last ulps.
    pub const TRANSCENDENTAL: Tolerance = Tolerance {
        atol: 1e-5,
        rtol: 1e-4,
        norm: 1e-5,
    };
    /// Reductions and GEMM-like ops: sums in another order.
    pub const REDUCTION: Tolerance = Tolerance {
        atol: 1e-4,
        rtol: 1e-3,
        norm: 1e-4,
    };
    /// Bit-exact (copies, index ops, dropout masks).
    pub const EXACT: Tolerance = Tolerance {
        atol: 0.0,
        rtol: 0.0,
        norm: 0.0,
    };
}

/// How one output compared.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub max_abs: f32,
    pub max_rel: f32,
    pub rel_norm: f32,
    /// Elements outside the tolerance (NaN included).
    pub bad: usize,
    pub pass: bool,
}

/// Compares `got` with the reference `want` under `tol`.
pub fn compare(want: &[f32], got: &[f32], tol: Tolerance) -> Comparison {
    if want.len() != got.len() {
        return Comparison {
            max_abs: f32::INFINITY,
            max_rel: f32::INFINITY,
            rel_norm: f32::INFINITY,
            bad: want.len().max(got.len()),
            pass: false,
        };
    }
    let (mut max_abs, mut max_rel, mut bad) = (0.0f32, 0.0f32, 0usize);
    let (mut diff_sq, mut want_sq) = (0.0f64, 0.0f64);
    for (&w, &g) in want.iter().zip(got) {
        let same_nan = w.is_nan() && g.is_nan();
        let err = (g - w).abs();
        // A NaN error (either side NaN) is never within the tolerance.
        let within = err <= tol.atol + tol.rtol * w.abs();
        if !(same_nan || within) {
            bad += 1;
        }
        if same_nan || w == g {
            continue;
        }
        let err = if err.is_nan() { f32::INFINITY } else { err };
        max_abs = max_abs.max(err);
        max_rel = max_rel.max(err / w.abs().max(f32::MIN_POSITIVE));
        diff_sq += f64::from(err) * f64::from(err);
        want_sq += f64::from(w) * f64::from(w);
    }
    let rel_norm = if diff_sq == 0.0 {
        0.0
    } else {
        (diff_sq.sqrt() / want_sq.sqrt().max(f64::MIN_POSITIVE)) as f32
    };
    let norm_ok = tol.norm == 0.0 && diff_sq == 0.0 || rel_norm <= tol.norm || bad == 0;
    Comparison {
        max_abs,
        max_rel,
        rel_norm,
        bad,
        pass: bad == 0 && norm_ok,
    }
}

/// The outcome of one case.
#[derive(Debug)]
pub enum Outcome {
    /// One comparison per output.
    Compared(Vec<Comparison>),
    /// The target has no kernel for it (`Error::Unsupported`).
    NoKernel(String),
    /// The reference or the target returned another error.
    Failed(String),
}

impl Outcome {
    /// True when every output is within tolerance.
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Compared(c) if c.iter().all(|c| c.pass))
    }
}

/// Draws the inputs of `case` from `rng` as host vectors.
pub fn draw_inputs(case: &Case, rng: &mut Rng) -> Vec<Vec<f32>> {
    case.inputs.iter().map(|input| input.draw(rng)).collect()
}

/// Runs `case` on `reference` and `target` with the same inputs and compares the outputs.
pub fn run_case(
    case: &Case,
    reference: &dyn Backend,
    target: &dyn Backend,
    rng: &mut Rng,
) -> Outcome {
    let inputs = draw_inputs(case, rng);
    let run = |backend: &dyn Backend, poison: Option<&[usize]>| -> Result<Vec<Vec<f32>>> {
        let storages: Vec<Storage> = inputs
            .iter()
            .map(|data| backend.upload(data.clone()))
            .collect::<Result<_>>()?;
        if let Some(lens) = poison {
            // NaN buffers of the outputs' sizes, released to the allocator for the kernels.
            let poisoned: Vec<Storage> = lens
                .iter()
                .map(|&len| backend.full(len, f32::NAN))
                .collect::<Result<_>>()?;
            drop(poisoned);
        }
        let outputs = (case.run)(backend, &storages)?;
        outputs.iter().map(Storage::try_to_vec).collect()
    };
    let want = match run(reference, None) {
        Ok(want) => want,
        Err(e) => return Outcome::Failed(format!("reference: {e}")),
    };
    let lens: Vec<usize> = want.iter().map(Vec::len).collect();
    match run(target, Some(&lens)) {
        Ok(got) => Outcome::Compared(
            want.iter()
                .zip(&got)
                .map(|(w, g)| compare(w, g, case.tolerance))
                .chain((got.len() != want.len()).then(|| compare(&[], &[0.0], case.tolerance)))
                .collect(),
        ),
        Err(Error::Unsupported(msg)) => Outcome::NoKernel(msg),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Runs every case whose op contains `filter` and prints one row per case; returns how many
/// cases did not pass.
pub fn run_table(
    filter: Option<&str>,
    seed: u64,
    reference: &dyn Backend,
    target: &dyn Backend,
    mut print: impl FnMut(&str),
) -> usize {
    let mut rng = Rng::new(seed);
    let mut failures = 0;
    print(&format!(
        "{:<38} {:<34} {:>10} {:>10} {:>10} {:>16}  result",
        "op", "shape", "max abs", "max rel", "rel norm", "tol (atol,rtol)"
    ));
    for case in table() {
        if filter.is_some_and(|f| !case.op.contains(f)) {
            continue;
        }
        let outcome = run_case(&case, reference, target, &mut rng);
        let tol = format!("{:.0e},{:.0e}", case.tolerance.atol, case.tolerance.rtol);
        let row = match &outcome {
            Outcome::Compared(comparisons) => {
                let worst =
                    |f: fn(&Comparison) -> f32| comparisons.iter().map(f).fold(0.0f32, f32::max);
                format!(
                    "{:<38} {:<34} {:>10.2e} {:>10.2e} {:>10.2e} {:>16}  {}",
                    case.op,
                    case.shape,
                    worst(|c| c.max_abs),
                    worst(|c| c.max_rel),
                    worst(|c| c.rel_norm),
                    tol,
                    if outcome.passed() { "pass" } else { "FAIL" }
                )
            }
            Outcome::NoKernel(msg) => {
                format!("{:<38} {:<34} NO KERNEL: {msg}", case.op, case.shape)
            }
            Outcome::Failed(msg) => format!("{:<38} {:<34} FAIL: {msg}", case.op, case.shape),
        };
        if !outcome.passed() {
            failures += 1;
        }
        print(&row);
    }
    failures
}

/// Compiles every kernel family for each architecture; prints one line per compile. Returns
/// the number of failures.
fn compile_only(archs: &[String]) -> Result<usize> {
    let nvrtc = cuda::nvrtc().map_err(Error::cuda)?;
    println!(
        "NVRTC {} at {}",
        nvrtc.version_string(),
        nvrtc.path.display()
    );
    let compiler = KernelCompiler::new(None);
    let mut failures = 0;
    for arch in archs {
        let arch = Arch::parse(arch.trim()).map_err(Error::cuda)?;
        for (family, _) in KERNELS {
            match compiler.compile_family(family, &arch, OutputFormat::Cubin) {
                Ok(compiled) => {
                    let seconds = match compiled.origin {
                        cuda::Origin::Nvrtc { seconds } => seconds,
                        _ => 0.0,
                    };
                    println!(
                        "{family:<12} {arch}: ok, {seconds:.2} s, cubin {} bytes",
                        compiled.image.bytes.len()
                    );
                }
                Err(e) => {
                    failures += 1;
                    println!("{family:<12} {arch}: FAILED\n{e}");
                }
            }
        }
    }
    Ok(failures)
}

/// `moeseg verify`.
pub fn run(args: &VerifyArgs) -> Result<()> {
    if args.compile_only {
        let failures = compile_only(&args.arch)?;
        if failures > 0 {
            eprintln!("{failures} kernel compile(s) failed");
            std::process::exit(EXIT_FAILED);
        }
        return Ok(());
    }
    let request: cuda::DeviceRequest = args.device.parse().map_err(Error::cuda)?;
    let device = match cuda::select(request) {
        Ok(cuda::Selected::Cuda { ordinal }) => cuda::CudaDevice::gpu(ordinal),
        Ok(cuda::Selected::Emulated { ordinal }) => cuda::CudaDevice::emulated(ordinal),
        Ok(cuda::Selected::Cpu { reason }) => {
            eprintln!(
                "moeseg verify: no GPU to verify ({}); `--device cuda:N` compares CUDA device N \
                 with the CPU",
                reason.unwrap_or_else(|| "the CPU was requested".to_string())
            );
            std::process::exit(EXIT_NO_GPU);
        }
        Err(e) => {
            eprintln!("moeseg verify: no GPU to verify: {e}");
            std::process::exit(EXIT_NO_GPU);
        }
    };
    let gpu = cuda::backend_for(device);
    let name = gpu.describe()?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    println!("moeseg verify: {device} ({name}) against the CPU, seed {seed}");
    let failures = run_table(
        args.op.as_deref(),
        seed,
        &crate::backend::CpuBackend,
        gpu,
        |row| println!("{row}"),
    );
    if failures > 0 {
        eprintln!("{failures} case(s) failed or have no CUDA kernel (rerun with --seed {seed})");
        std::process::exit(EXIT_FAILED);
    }
    println!("all cases pass");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;

    #[test]
    fn comparison_catches_nan_and_tolerance() {
        let tol = Tolerance::ELEMENTWISE;
        assert!(compare(&[1.0, 2.0], &[1.0, 2.0], tol).pass);
        assert!(!compare(&[1.0, 2.0], &[1.0, f32::NAN], tol).pass);
        assert!(!compare(&[1.0], &[1.01], tol).pass);
        assert!(compare(&[1.0], &[1.000_005], tol).pass);
        assert!(!compare(&[1.0], &[1.0, 2.0], tol).pass);
        assert!(!compare(&[0.0], &[1e-7], Tolerance::EXACT).pass);
    }

    /// The whole table CPU-vs-CPU: every case's shapes fit its kernels and the reference is
    /// deterministic, so only device differences can fail on a GPU.
    #[test]
    fn table_passes_cpu_against_cpu() {
        let mut rows = Vec::new();
        let failures = run_table(None, 7, &CpuBackend, &CpuBackend, |row| {
            rows.push(row.to_string())
        });
        for row in &rows {
            println!("{row}");
        }
        assert_eq!(failures, 0, "{}", rows.join("\n"));
        assert!(rows.len() > 40, "the table has {} rows", rows.len() - 1);
    }
}
