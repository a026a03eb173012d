//! Conv kernel throughput on the CPU backend: 3×3 (pad 1) and 1×1 convolutions at N=4,
//! 64→64 channels, 128×256, forward / input-backward / weight-backward, next to a plain
//! parallel sgemm of the 3×3 forward's per-image GEMM shape (M=64, N=128·256, K=64·9) and of
//! the 1×1's (K=64), each writing a fresh output of the conv's size.
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
    // Plain sgemms of the convs' per-image GEMM shapes, one per image into a fresh
    // [N, 64, 128·256] output like the conv's: W [64, K] · col [K, 32768], K = 576 and 64.
    for k in [CHANNELS * 9, CHANNELS] {
        let (m, n) = (CHANNELS, SIZE[0] * SIZE[1]);
        let a = random(m * k, 4);
        let b = random(k * n, 5);
        list.push(Workload {
            name: format!("sgemm_{m}x{n}x{k}_x{BATCH}"),
            flops: 2 * (BATCH * m * n * k) as u64,
            run: Box::new(move || {
                let mut c = vec![0.0f32; BATCH * m * n];
                for image in c.chunks_mut(m * n) {
                    gemm_parallel(m, n, k, Operand::plain(&a), Operand::plain(&b), image, 0.0);
                }
                black_box(&c);
            }),
        });
    }
    // The machine's sgemm rate: a square, cache-friendly product into a reused output.
    let square = 1024;
    let (a, b) = (random(square * square, 6), random(square * square, 7));
    let c = std::sync::Mutex::new(vec![0.0f32; square * square]);
    list.push(Workload {
        name: format!("sgemm_{square}x{square}x{square}_peak"),
        flops: 2 * (square * square * square) as u64,
        run: Box::new(move || {
            if let Ok(mut c) = c.lock() {
                let (a, b) = (Operand::plain(&a), Operand::plain(&b));
                gemm_parallel(square, square, square, a, b, &mut c, 0.0);
                black_box(&*c);
            }
        }),
    });
    // Memory bandwidth: copying one activation tensor (33.5 MB) into a reused buffer, in
    // parallel; a 1×1 conv with 64 channels must at least read its input and write its output.
    let activation = BATCH * CHANNELS * SIZE[0] * SIZE[1];
    let source = random(activation, 8);
    let destination = std::sync::Mutex::new(vec![0.0f32; activation]);
    list.push(Workload {
        name: "copy_activation_33.5MB".into(),
        flops: 0,
        run: Box::new(move || {
            use rayon::prelude::*;
            if let Ok(mut d) = destination.lock() {
                d.par_chunks_mut(1 << 16)
                    .zip(source.par_chunks(1 << 16))
                    .for_each(|(d, s)| d.copy_from_slice(s));
                black_box(&*d);
            }
        }),
    });
    // What every kernel above pays for its fresh 33.5 MB output: first-touch page faults.
    let len = BATCH * CHANNELS * SIZE[0] * SIZE[1];
    list.push(Workload {
        name: "allocate_and_touch_output".into(),
        flops: 0,
        run: Box::new(move || {
            let mut out = vec![0.0f32; len];
            out.iter_mut().step_by(1024).for_each(|v| *v = 1.0);
            black_box(&out);
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

/// Best-of-5 wall time of each workload, as GFLOP/s and relative to the machine's sgemm rate
/// (a square 1024³ product), to the sgemm of the 3×3 forward's shape and, for 1×1 convs, of
/// their own K = 64 shape.
fn summary() {
    let timed: Vec<(String, u64, f64)> = workloads()
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
            (w.name.clone(), w.flops, best.as_secs_f64())
        })
        .collect();
    let rate = |prefix: &str| {
        timed
            .iter()
            .find(|(name, ..)| name.starts_with(prefix))
            .map_or(f64::NAN, |(_, flops, secs)| *flops as f64 / secs / 1e9)
    };
    let (sgemm_3x3, sgemm_1x1) = (rate("sgemm_64x32768x576"), rate("sgemm_64x32768x64_"));
    let peak = rate("sgemm_1024x1024x1024_peak");
    println!(
        "\nsummary ({} rayon threads), best of 5:",
        rayon::current_num_threads()
    );
    for (name, flops, secs) in &timed {
        let ms = secs * 1e3;
        if *flops == 0 {
            if name.starts_with("copy") {
                let bytes = 2.0 * (BATCH * CHANNELS * SIZE[0] * SIZE[1] * 4) as f64;
                println!(
                    "  {name:<32} {ms:8.2} ms  {:7.1} GB/s (read + write)",
                    bytes / secs / 1e9
                );
            } else {
                println!("  {name:<32} {ms:8.2} ms");
            }
            continue;
        }
        let gflops = *flops as f64 / secs / 1e9;
        let own = if name.starts_with("conv1x1") {
            sgemm_1x1
        } else {
            sgemm_3x3
        };
        println!(
            "  {name:<32} {ms:8.2} ms  {gflops:7.1} GFLOP/s  {:5.1}% of peak sgemm  {:5.1}% of the 3x3 sgemm  {:5.1}% of its shape's sgemm",
            100.0 * gflops / peak,
            100.0 * gflops / sgemm_3x3,
            100.0 * gflops / own
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
