//! Conv kernel throughput on the CPU backend: 3×3 (pad 1) and 1×1 convolutions at N=4,
//! 64→64 channels, 128×256, forward / input-backward / weight-backward, next to a plain
//! parallel sgemm of the 3×3 forward's per-image GEMM shape (M=64, N=128·256, K=64·9).
//!
//! `cargo bench --bench conv` prints criterion's times and throughputs (elements = FLOPs,
//! `2·MACs`), then a summary with GFLOP/s and the ratio of each conv to the sgemm rate.

use criterion::{criterion_group, Criterion, Throughput};
use moeseg::backend::cpu::gemm::{gemm_parallel, Operand};
use moeseg::backend::CpuBackend;
use moeseg::ops::conv::{Conv2dGeometry, Conv2dParams, ConvBackend};
use moeseg::tensor::Storage;
use moeseg::Rng;
use std::hint::black_box;
use std::time::{Duration, Instant};

const BATCH: usize = 4;
const CHANNELS: usize = 64;
const SIZE: [usize; 2] = [128, 256];

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.normal(0.0, 1.0)).collect()
}

/// A same-size convolution of the benchmark's activations with a `kernel × kernel` filter.
fn geometry(kernel: usize) -> Conv2dGeometry {
    Conv2dGeometry {
        batch: BATCH,
        in_channels: CHANNELS,
        in_size: SIZE,
        out_channels: CHANNELS,
        kernel: [kernel; 2],
        out_size: SIZE,
        params: Conv2dParams::new(1, kernel / 2, 1, 1),
    }
}

/// `2 · multiply-adds` of one conv kernel call (all three kernels do the same work).
fn conv_flops(geometry: &Conv2dGeometry) -> u64 {
    2 * (geometry.output_len() * geometry.col_rows()) as u64
}

/// One named workload: its FLOPs and a closure running it once.
struct Workload {
    name: String,
    flops: u64,
    run: Box<dyn Fn()>,
}

fn workloads() -> Vec<Workload> {
    let mut list = Vec::new();
    for kernel in [3, 1] {
        let geometry = geometry(kernel);
        let x = Storage::cpu(random(geometry.input_len(), 1));
        let w = Storage::cpu(random(geometry.weight_len(), 2));
        let g = Storage::cpu(random(geometry.output_len(), 3));
        let flops = conv_flops(&geometry);
        let (x1, w1) = (x.clone(), w.clone());
        list.push(Workload {
            name: format!("conv{kernel}x{kernel}_forward"),
            flops,
            run: Box::new(move || {
                black_box(CpuBackend.conv2d(&x1, &w1, None, geometry).ok());
            }),
        });
        let (g2, w2) = (g.clone(), w.clone());
        list.push(Workload {
            name: format!("conv{kernel}x{kernel}_input_backward"),
            flops,
            run: Box::new(move || {
                black_box(CpuBackend.conv2d_input_backward(&g2, &w2, geometry).ok());
            }),
        });
        list.push(Workload {
            name: format!("conv{kernel}x{kernel}_weight_backward"),
            flops,
            run: Box::new(move || {
                black_box(CpuBackend.conv2d_weight_backward(&g, &x, geometry).ok());
            }),
        });
    }
    // The 3×3 forward's per-image GEMM, W [64, 576] · col [576, 32768], run once per image.
    let (m, n, k) = (CHANNELS, SIZE[0] * SIZE[1], CHANNELS * 9);
    let a = random(m * k, 4);
    let b = random(k * n, 5);
    list.push(Workload {
        name: format!("sgemm_{m}x{n}x{k}_x{BATCH}"),
        flops: 2 * (BATCH * m * n * k) as u64,
        run: Box::new(move || {
            let mut c = vec![0.0f32; m * n];
            for _ in 0..BATCH {
                gemm_parallel(m, n, k, Operand::plain(&a), Operand::plain(&b), &mut c, 0.0);
            }
            black_box(&c);
        }),
    });
    list
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv_n4_64x64_128x256");
    for workload in workloads() {
        group.throughput(Throughput::Elements(workload.flops));
        group.bench_function(&workload.name, |b| b.iter(&workload.run));
    }
    group.finish();
}

/// Best-of-5 wall time of each workload, as GFLOP/s and relative to the sgemm.
fn summary() {
    let list = workloads();
    let rates: Vec<(String, f64, f64)> = list
        .iter()
        .map(|w| {
            (w.run)();
            let best = (0..5)
                .map(|_| {
                    let start = Instant::now();
                    (w.run)();
                    start.elapsed()
                })
                .min()
                .unwrap_or(Duration::ZERO);
            let gflops = w.flops as f64 / best.as_secs_f64() / 1e9;
            (w.name.clone(), best.as_secs_f64() * 1e3, gflops)
        })
        .collect();
    let sgemm = rates.last().map_or(f64::NAN, |r| r.2);
    println!(
        "\nsummary ({} rayon threads), best of 5:",
        rayon::current_num_threads()
    );
    for (name, ms, gflops) in &rates {
        println!(
            "  {name:<32} {ms:8.2} ms  {gflops:7.1} GFLOP/s  {:5.1}% of sgemm",
            100.0 * gflops / sgemm
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
