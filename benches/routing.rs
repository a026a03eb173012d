//! Sparse expert dispatch against the dense all-experts reference on the CPU backend: E = 8
//! experts (64→64, 3×3, bias), k = 2, T = 4·9 tokens (4 images on a 3×3 grid) of 64 channels
//! and 22×22 pixels (20×20 patches plus a 1-pixel halo).
//!
//! - `routed`: `dispatch_routed_conv`, each token through its 2 experts only;
//! - `dense`: every expert's `conv2d` on every token, weighted by
//!   `C[t, e] = Σ_j w[t, j]·[indices[t, j] = e]` and summed (what an unoptimised MoE does).
//!
//! Each is timed forward only (no graph) and forward + backward. `cargo bench --bench routing`
//! prints criterion's times, then a best-of-5 summary with the dense / routed ratio (the ideal
//! is E/k = 4).

use criterion::{criterion_group, Criterion};
use moeseg::ops::conv::Conv2dParams;
use moeseg::ops::routed_conv::RoutedConvParams;
use moeseg::{no_grad, Device, Rng, Tensor};
use std::hint::black_box;
use std::time::{Duration, Instant};

const EXPERTS: usize = 8;
const SLOTS: usize = 2;
const TOKENS: usize = 4 * 9;
const CHANNELS: usize = 64;
const TOKEN_SIZE: usize = 22;

/// The benchmark's inputs; expert weights, biases and routing weights require gradients.
struct Inputs {
    tokens: Tensor,
    experts: Vec<Tensor>,
    biases: Vec<Tensor>,
    indices: Tensor,
    routing: Tensor,
    /// `one_hot[j]` `[T, E]`: 1 where `indices[t, j] = e`.
    one_hot: Vec<Tensor>,
}

fn inputs() -> Inputs {
    let mut rng = Rng::new(1);
    let std = (2.0 / (CHANNELS * 9) as f32).sqrt();
    let tokens = Tensor::randn(
        [TOKENS, CHANNELS, TOKEN_SIZE, TOKEN_SIZE],
        0.0,
        1.0,
        &mut rng,
    )
    .expect("tokens")
    .with_requires_grad(true);
    let experts = (0..EXPERTS)
        .map(|_| {
            Tensor::randn([CHANNELS, CHANNELS, 3, 3], 0.0, std, &mut rng)
                .expect("expert")
                .with_requires_grad(true)
        })
        .collect();
    let biases = (0..EXPERTS)
        .map(|_| {
            Tensor::randn([CHANNELS], 0.0, 0.1, &mut rng)
                .expect("bias")
                .with_requires_grad(true)
        })
        .collect();
    // Two distinct experts per token, spread over all eight.
    let ids: Vec<usize> = (0..TOKENS)
        .flat_map(|t| {
            let first = (t * 5 + 1) % EXPERTS;
            [first, (first + 1 + t % (EXPERTS - 1)) % EXPERTS]
        })
        .collect();
    let indices = Tensor::from_vec(ids.iter().map(|&e| e as f32).collect(), [TOKENS, SLOTS])
        .expect("indices");
    let routing = Tensor::rand_uniform([TOKENS, SLOTS], 0.1, 1.0, &mut rng)
        .expect("routing")
        .with_requires_grad(true);
    let one_hot = (0..SLOTS)
        .map(|j| {
            let data = (0..TOKENS * EXPERTS)
                .map(|i| f32::from(ids[(i / EXPERTS) * SLOTS + j] == i % EXPERTS))
                .collect();
            Tensor::from_vec(data, [TOKENS, EXPERTS]).expect("one-hot")
        })
        .collect();
    Inputs {
        tokens,
        experts,
        biases,
        indices,
        routing,
        one_hot,
    }
}

fn routed(x: &Inputs) -> moeseg::Result<Tensor> {
    let experts: Vec<&Tensor> = x.experts.iter().collect();
    let biases: Vec<&Tensor> = x.biases.iter().collect();
    x.tokens.dispatch_routed_conv(
        &experts,
        Some(&biases),
        &x.indices,
        &x.routing,
        RoutedConvParams::default(),
    )
}

fn dense(x: &Inputs) -> moeseg::Result<Tensor> {
    let mut coefficients = Tensor::zeros([TOKENS, EXPERTS], &Device::Cpu)?;
    for (j, one_hot) in x.one_hot.iter().enumerate() {
        coefficients = coefficients.add(&x.routing.narrow(1, j, 1)?.mul(one_hot)?)?;
    }
    let mut sum: Option<Tensor> = None;
    for (e, (w, b)) in x.experts.iter().zip(&x.biases).enumerate() {
        let out = x.tokens.conv2d(w, Some(b), Conv2dParams::default())?;
        let weighted = out.mul(&coefficients.narrow(1, e, 1)?.reshape(&[-1, 1, 1, 1])?)?;
        sum = Some(match sum {
            Some(s) => s.add(&weighted)?,
            None => weighted,
        });
    }
    sum.ok_or_else(|| moeseg::Error::invalid("dense", "no experts"))
}

/// Forward + backward of `Σ y²`, gradients cleared afterwards.
fn train_step(x: &Inputs, f: fn(&Inputs) -> moeseg::Result<Tensor>) {
    let loss = f(x).and_then(|y| y.square()?.sum_all()).expect("forward");
    loss.backward().expect("backward");
    black_box(x.tokens.grad());
    x.tokens.clear_grad();
    x.routing.clear_grad();
    for t in x.experts.iter().chain(&x.biases) {
        t.clear_grad();
    }
}

type Workload = (&'static str, Box<dyn Fn()>);

fn workloads() -> Vec<Workload> {
    let x = std::sync::Arc::new(inputs());
    let (a, b, c, d) = (x.clone(), x.clone(), x.clone(), x);
    vec![
        (
            "routed_forward",
            Box::new(move || {
                black_box(no_grad(|| routed(&a)).ok());
            }),
        ),
        (
            "dense_forward",
            Box::new(move || {
                black_box(no_grad(|| dense(&b)).ok());
            }),
        ),
        (
            "routed_forward_backward",
            Box::new(move || train_step(&c, routed)),
        ),
        (
            "dense_forward_backward",
            Box::new(move || train_step(&d, dense)),
        ),
    ]
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing_e8_k2_t36_64ch_22x22");
    for (name, run) in workloads() {
        group.bench_function(name, |b| b.iter(&run));
    }
    group.finish();
}

/// Best-of-5 wall times and the dense / routed ratios.
fn summary() {
    let timed: Vec<(&str, f64)> = workloads()
        .iter()
        .map(|(name, run)| {
            run();
            let best = (0..5)
                .map(|_| {
                    let start = Instant::now();
                    run();
                    start.elapsed()
                })
                .min()
                .unwrap_or(Duration::ZERO);
            (*name, best.as_secs_f64() * 1e3)
        })
        .collect();
    println!(
        "\nsummary ({} rayon threads), best of 5:",
        rayon::current_num_threads()
    );
    for (name, ms) in &timed {
        println!("  {name:<26} {ms:8.2} ms");
    }
    for pass in ["forward", "forward_backward"] {
        let time = |kind: &str| {
            timed
                .iter()
                .find(|(n, _)| *n == format!("{kind}_{pass}"))
                .map_or(f64::NAN, |(_, ms)| *ms)
        };
        println!(
            "  {pass:<26} dense / routed = {:.2}× (ideal E/k = {})",
            time("dense") / time("routed"),
            EXPERTS / SLOTS
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = routing
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
