//! GPU-only tests: every kernel of `moeseg verify`'s table against the CPU on CUDA device 0,
//! tensors moved between devices, mixed-device errors. Ignored by default; on a GPU machine:
//!
//! ```text
//! cargo test --release --test cuda_gpu -- --include-ignored --nocapture
//! ```
//!
//! Without a GPU each test prints "skipped: no GPU" and returns (a skip is not a pass).

use moeseg::backend::{cuda, CpuBackend};
use moeseg::verify::{run_table, text_header, text_line, RunOptions, Totals};
use moeseg::{Device, Tensor};

/// CUDA device 0, or `None` after printing why the test is skipped.
fn gpu_or_skip(test: &str) -> Option<Device> {
    match Device::select("cuda:0") {
        Ok((device, _)) => Some(device),
        Err(e) => {
            println!("skipped {test}: no GPU ({e})");
            None
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn every_kernel_matches_the_cpu() {
    let Some(_) = gpu_or_skip("every_kernel_matches_the_cpu") else {
        return;
    };
    let mut failed = Vec::new();
    println!("{}", text_header());
    let rows = run_table(
        &CpuBackend,
        cuda::backend_for(cuda::CudaDevice::gpu(0)),
        "cuda:0",
        &RunOptions::new(2024),
        |rows| {
            let line = text_line(rows);
            println!("{line}");
            if rows.iter().any(|r| !r.pass) {
                failed.push(line);
            }
        },
    );
    let totals = Totals::from_rows(&rows);
    assert_eq!(
        totals.failed,
        0,
        "cases that did not pass:\n{}",
        failed.join("\n")
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn tensors_move_between_devices_and_mixed_devices_are_errors() {
    let Some(gpu) = gpu_or_skip("tensors_move_between_devices_and_mixed_devices_are_errors") else {
        return;
    };
    let host = Tensor::from_vec((0..12).map(|v| v as f32).collect(), [3, 4]).unwrap();
    let device = host.to_device(&gpu).unwrap();
    assert_eq!(device.device(), gpu);
    assert_eq!(device.try_to_vec().unwrap(), host.try_to_vec().unwrap());
    let sum = device.relu().unwrap().sum_all().unwrap();
    assert_eq!(sum.item().unwrap(), 66.0);
    let err = device.add(&host).unwrap_err().to_string();
    assert!(err.contains("cuda:0") && err.contains("cpu"), "{err}");
    // Gradients flow back across the copy.
    let leaf = host.with_requires_grad(true);
    let loss = leaf
        .to_device(&gpu)
        .unwrap()
        .square()
        .unwrap()
        .sum_all()
        .unwrap();
    loss.backward().unwrap();
    let grad = leaf.grad().unwrap();
    assert_eq!(grad.device(), Device::Cpu);
    assert_eq!(
        grad.try_to_vec().unwrap(),
        host.try_to_vec()
            .unwrap()
            .iter()
            .map(|v| 2.0 * v)
            .collect::<Vec<_>>()
    );
}
