//! Single-precision GEMM at the shapes the networks and soft-routing layers run (taken from a
//! log of the conv and matmul paths), for each candidate kernel side by side:
//! `matrixmultiply` (through ndarray), the `gemm` crate, and the engine's
//! [`moeseg::backend::cpu::gemm`] as configured. `scripts/bench_gemm_torch.py` times
//! `torch.mm` at the same shapes with the same thread count.
//!
//! `cargo bench --bench gemm` prints one `bench_gemm` line per shape and kernel (median of
//! repeats, GFLOP/s); `MOESEG_GEMM_THREADS` sets the thread count (default: rayon's).

use moeseg::backend::cpu::gemm::{gemm_parallel, Operand};
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use std::hint::black_box;
use std::time::Instant;

/// `(label, m, n, k, a transposed, b transposed)`.
pub const SHAPES: &[(&str, usize, usize, usize, bool, bool)] = &[
    ("vit_soft_mlp1", 197, 768, 192, false, false),
    ("vit_soft_mlp2", 197, 192, 768, false, false),
    ("vit_mlp1_b2", 394, 768, 192, false, false),
    ("vit_mlp1_dw", 192, 768, 394, true, false),
    ("enet_1x1_a", 32, 2048, 128, false, false),
    ("enet_1x1_b", 128, 2048, 32, false, false),
    ("enet_1x1_dgrad", 128, 2048, 32, true, false),
    ("enet_1x1_wgrad", 32, 128, 2048, false, true),
    ("enet_stage1", 16, 8192, 64, false, false),
    ("erfnet_dgrad", 576, 455, 128, true, false),
    ("erfnet_fwd", 64, 455, 576, false, false),
    ("lraspp_1x1", 960, 512, 160, false, false),
    ("lraspp_1x1_b", 160, 512, 960, false, false),
    ("lraspp_wgrad", 960, 160, 512, false, true),
    ("deeplab_aspp_tile", 256, 64, 18432, false, false),
    ("deeplab_1x1", 2048, 512, 512, false, false),
    ("deeplab_1x1_b", 512, 512, 2048, false, false),
];

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn view<'a>(data: &'a [f32], rows: usize, cols: usize, transposed: bool) -> ArrayView2<'a, f32> {
    if transposed {
        ArrayView2::from_shape((cols, rows), data)
            .expect("bench shape")
            .reversed_axes()
    } else {
        ArrayView2::from_shape((rows, cols), data).expect("bench shape")
    }
}

/// Row and column strides of `op(X)` (`rows × cols`) as stored.
fn strides(rows: usize, cols: usize, transposed: bool) -> (isize, isize) {
    if transposed {
        (1, rows as isize)
    } else {
        (cols as isize, 1)
    }
}

fn median_seconds(mut run: impl FnMut(), flops: f64) -> f64 {
    run();
    let repeats = ((2e9 / flops) as usize).clamp(5, 200);
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let threads = std::env::var("MOESEG_GEMM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rayon::current_num_threads);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .ok();
    println!(
        "bench_gemm threads={threads} kernels=\"{}\"",
        moeseg::backend::cpu::kernels_description()
    );
    for &(label, m, n, k, ta, tb) in SHAPES {
        let a = random(m * k, 1);
        let b = random(k * n, 2);
        let mut c = vec![0.0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let mm = median_seconds(
            || {
                let mut cv = ArrayViewMut2::from_shape((m, n), &mut c[..]).expect("bench shape");
                general_mat_mul(1.0, &view(&a, m, k, ta), &view(&b, k, n, tb), 0.0, &mut cv);
                black_box(&c);
            },
            flops,
        );
        let (ars, acs) = strides(m, k, ta);
        let (brs, bcs) = strides(k, n, tb);
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        let crate_gemm = median_seconds(
            || {
                // SAFETY: the strides describe `a`, `b` and `c` as allocated above.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        acs,
                        ars,
                        b.as_ptr(),
                        bcs,
                        brs,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    )
                };
                black_box(&c);
            },
            flops,
        );
        let engine = median_seconds(
            || {
                let op = |d, t| Operand {
                    data: d,
                    transposed: t,
                };
                gemm_parallel(m, n, k, op(&a[..], ta), op(&b[..], tb), &mut c, 0.0);
                black_box(&c);
            },
            flops,
        );
        for (kernel, s) in [
            ("matrixmultiply", mm),
            ("gemm", crate_gemm),
            ("engine", engine),
        ] {
            println!(
                "bench_gemm shape={label} m={m} n={n} k={k} ta={} tb={} kernel={kernel} ms={:.4} gflops={:.1}",
                ta as u8, tb as u8, s * 1e3, flops / s / 1e9
            );
        }
    }
}
