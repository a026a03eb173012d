//! `moeseg verify`: every CUDA kernel, forward and backward, against the CPU backend. The
//! harness (the case table, comparison, runner, JSON report) is the library's
//! [`crate::verify`]; this is its command line: arguments, device selection, printing, exit
//! codes.
//!
//! Exit codes: 0 all cases pass; 1 a case failed (or its kernel is missing); 3 no usable GPU
//! (the message says where libcuda was looked for). `--device cpu` runs the table CPU against
//! CPU (no GPU needed). `--compile-only` needs no GPU: it compiles every kernel family with
//! NVRTC and exits 1 on a compile error. `--json PATH` also writes the run as JSON (see
//! [`crate::verify::Report`]).

use crate::backend::{cuda, Backend, CpuBackend};
use crate::error::{Error, Result};
use crate::verify::{
    compile_families, nvrtc_description, run_table, text_header, text_line, Report, RunOptions,
};
use clap::Args;
use std::path::PathBuf;

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
    /// The device to check against the CPU: `cuda`, `cuda:N`, `cuda-emu[:N]` (the emulated
    /// device: every case under two thread schedules at least); `cpu` checks the CPU against
    /// itself (the table without a GPU).
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    /// Run every case this many times on the device and require bitwise-identical outputs
    /// (a difference is reported as a race).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// Also write the whole run (device, seed, version, commit, date, rows, totals) as JSON
    /// to this file.
    #[arg(long, value_name = "PATH", conflicts_with = "compile_only")]
    pub json: Option<PathBuf>,
    /// Only compile every kernel family with NVRTC (no GPU needed) and report.
    #[arg(long)]
    pub compile_only: bool,
    /// Architectures for `--compile-only`, comma-separated.
    #[arg(long, default_value = "sm_80,sm_90", value_delimiter = ',')]
    pub arch: Vec<String>,
}

/// `--compile-only`: prints one line per compile; returns the number of failures.
fn compile_only(archs: &[String]) -> Result<usize> {
    println!("{}", nvrtc_description()?);
    let rows = compile_families(archs, |row| match &row.error {
        None => println!(
            "{:<12} {}: ok, {:.2} s, cubin {} bytes",
            row.family, row.arch, row.seconds, row.cubin_bytes
        ),
        Some(e) => println!("{:<12} {}: FAILED\n{e}", row.family, row.arch),
    })?;
    Ok(rows.iter().filter(|row| !row.pass()).count())
}

/// The device to verify: its name, a description, and its backend; exits with
/// [`EXIT_NO_GPU`] when a CUDA device was asked for and none can be used.
fn target(device: &str) -> Result<(String, String, &'static dyn Backend)> {
    let request: cuda::DeviceRequest = device.parse().map_err(Error::cuda)?;
    let no_gpu = |why: String| -> ! {
        eprintln!(
            "moeseg verify: no GPU to verify ({why}); `--device cuda:N` compares CUDA device N \
             with the CPU, `--device cpu` the CPU with itself"
        );
        std::process::exit(EXIT_NO_GPU);
    };
    match cuda::select(request) {
        Ok(cuda::Selected::Cuda { ordinal }) => {
            let gpu = cuda::backend_for(cuda::CudaDevice::gpu(ordinal));
            Ok((format!("cuda:{ordinal}"), gpu.describe()?, gpu))
        }
        Ok(cuda::Selected::Emulated { ordinal }) => {
            let emulated = cuda::backend_for(cuda::CudaDevice::emulated(ordinal));
            Ok((
                format!("cuda-emu:{ordinal}"),
                emulated.describe()?,
                emulated,
            ))
        }
        Ok(cuda::Selected::Cpu { reason: None }) => Ok((
            "cpu".to_string(),
            format!(
                "the CPU backend against itself, {} threads",
                rayon::current_num_threads()
            ),
            &CpuBackend,
        )),
        Ok(cuda::Selected::Cpu {
            reason: Some(reason),
        }) => no_gpu(reason),
        Err(e) => no_gpu(e.to_string()),
    }
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
    let (device, description, backend) = target(&args.device)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let runs = usize::try_from(args.runs).unwrap_or(usize::MAX);
    // The emulated device runs every case under at least two thread schedules.
    let emulated = device.starts_with("cuda-emu");
    let options = RunOptions::new(seed)
        .repeat(runs, None)
        .filter(args.op.as_deref());
    let options = match emulated {
        false => options,
        true => options.under_schedules(),
    };
    let runs = options.target_runs();
    let repeated = match (emulated, runs > 1) {
        (true, _) => {
            let names: Vec<String> = (0..runs)
                .map(|run| cuda::emu::schedule_for_run(run).to_string())
                .collect();
            format!(
                ", every case under the thread schedules {} compared bitwise",
                names.join(", ")
            )
        }
        (false, true) => format!(", {runs} runs per case compared bitwise"),
        (false, false) => String::new(),
    };
    println!("moeseg verify: {device} ({description}) against the CPU, seed {seed}{repeated}");
    println!("{}", text_header());
    let rows = run_table(&CpuBackend, backend, &device, &options, |case_rows| {
        println!("{}", text_line(case_rows))
    });
    cuda::emu::set_schedule(None);
    let mut report = Report::new("cpu", &device, &options, rows);
    report.device_description = Some(description);
    report.command = Some(
        std::iter::once("moeseg".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
    );
    if let Some(path) = &args.json {
        report.write_json(path)?;
        println!("wrote {}", path.display());
    }
    let totals = report.totals;
    if totals.cases == 0 {
        eprintln!(
            "no case's op contains {:?}",
            args.op.as_deref().unwrap_or_default()
        );
        std::process::exit(EXIT_FAILED);
    }
    if totals.failed > 0 {
        eprintln!(
            "{} of {} case(s) failed or have no kernel on {device} (rerun with --seed {seed})",
            totals.failed, totals.cases
        );
        std::process::exit(EXIT_FAILED);
    }
    println!("all {} cases pass", totals.cases);
    Ok(())
}
