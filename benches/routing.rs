//! Sparse expert dispatch against the dense all-experts reference on the CPU backend: E = 8
//! experts (64→64, 3×3, bias), k = 2, T = 4·9 tokens (4 images on a 3×3 grid) of 64 channels
//! and 22×22 pixels (20×20 patches plus a 1-pixel halo).
//!
//! - `routed`: `dispatch_routed_conv`, each token through its 2 experts only;
//! - `dense`: every expert's `conv2d` on every token, weighted by
//!   `C[t, e] = Σ_j w[t, j]·[indices[t, j] = e]` and summed (what an unoptimised MoE does).
//!
//! Each is timed forward only (no graph) and forward + backward.
//!
//! A second group times the PatchConvMoE pieces at the `small` shape of `moeseg bench routing`
//! (a 3×3 conv of 64 channels on [2, 64, 64, 128], E = 8, k = 2, a 3×3 grid, 2conv_gap gate,
//! entropy loss): `patch_split` (halo 1), `patch_reassemble`, the fused `topk_gate` on the
//! [18, 8] logits, the whole layer forward (eval, no graph) and forward + backward (train,
//! `Σ(y·g) + balance loss`), and the dense conv forward + backward next to it.
//!
//! `cargo bench --bench routing` prints criterion's times, then a best-of-5 summary with the
//! dense / routed ratio (the ideal is E/k = 4) and the layer / dense conv ratio. For the full
//! table at the real placements, and PyTorch side by side, see `moeseg bench routing --help`
//! and `scripts/bench_moe_torch.py`.

use criterion::{criterion_group, Criterion};
use moeseg::moe::{PatchConvMoE, PatchConvMoeConfig};
use moeseg::nn::ConvOptions;
use moeseg::nn::{named_parameters, set_training, Conv2d, Module};
use moeseg::ops::conv::Conv2dParams;
use moeseg::ops::patch_grid::PatchGrid;
use moeseg::ops::routed_conv::RoutedConvParams;
use moeseg::ops::topk_gate::TopkGateParams;
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

/// The `small` shape of `moeseg bench routing`: `[B, C, H, W]`.
const LAYER_MAP: [usize; 4] = [2, 64, 64, 128];

/// The PatchConvMoE pieces and the whole layer at [`LAYER_MAP`], next to the dense conv.
fn layer_workloads() -> Vec<Workload> {
    let [batch, channels, height, width] = LAYER_MAP;
    moeseg::tensor::manual_seed(2);
    let mut rng = Rng::new(2);
    let conv = Conv2d::new(channels, channels, 3, ConvOptions::new().padding(1)).expect("conv");
    let layer =
        PatchConvMoE::from_conv(&conv, PatchConvMoeConfig::default()).expect("PatchConvMoE");
    let x = Tensor::randn(LAYER_MAP, 0.0, 1.0, &mut rng)
        .expect("input")
        .with_requires_grad(true);
    let g = Tensor::randn(LAYER_MAP, 0.0, 1.0, &mut rng).expect("upstream");
    let grid = PatchGrid::from_grid(batch, channels, height, width, 3, [1, 1]).expect("grid");
    let patches = Tensor::randn(
        [grid.tokens(), channels, grid.patch[0], grid.patch[1]],
        0.0,
        1.0,
        &mut rng,
    )
    .expect("patches");
    let logits = Tensor::randn([grid.tokens(), EXPERTS], 0.0, 2.0, &mut rng).expect("logits");
    let input = x.detach();
    let (split_input, fwd_input) = (input.clone(), input);
    let eval_layer = std::sync::Arc::new(layer);
    let train_layer = eval_layer.clone();
    let (x_layer, g_layer) = (x.clone(), g.clone());
    let layer_params = named_parameters(&*train_layer);
    let conv_params = named_parameters(&conv);
    vec![
        (
            "patch_split_halo1",
            Box::new(move || {
                black_box(no_grad(|| split_input.patch_split(grid)).expect("split"));
            }),
        ),
        (
            "patch_reassemble",
            Box::new(move || {
                black_box(no_grad(|| patches.patch_reassemble(grid)).expect("reassemble"));
            }),
        ),
        (
            "topk_gate_t18_e8",
            Box::new(move || {
                black_box(no_grad(|| logits.topk_gate(TopkGateParams::new(SLOTS), None)).ok());
            }),
        ),
        (
            "layer_forward",
            Box::new(move || {
                set_training(&*eval_layer, false);
                black_box(no_grad(|| eval_layer.forward(&fwd_input)).expect("layer"));
            }),
        ),
        (
            "layer_forward_backward",
            Box::new(move || {
                set_training(&*train_layer, true);
                let y = train_layer.forward(&x_layer).expect("layer");
                let balance = train_layer.last_routing().expect("routing").balance_loss;
                let loss = y.mul(&g_layer).and_then(|l| l.sum_all()?.add(&balance));
                loss.expect("loss").backward().expect("backward");
                x_layer.clear_grad();
                layer_params.iter().for_each(|(_, p)| p.clear_grad());
            }),
        ),
        (
            "dense_conv_forward_backward",
            Box::new(move || {
                let y = conv.forward(&x).expect("conv");
                let loss = y.mul(&g).and_then(|l| l.sum_all()).expect("loss");
                loss.backward().expect("backward");
                x.clear_grad();
                conv_params.iter().for_each(|(_, p)| p.clear_grad());
            }),
        ),
    ]
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing_e8_k2_t36_64ch_22x22");
    for (name, run) in workloads() {
        group.bench_function(name, |b| b.iter(&run));
    }
    group.finish();
    let mut group = c.benchmark_group("patch_conv_moe_small_2x64x64x128");
    for (name, run) in layer_workloads() {
        group.bench_function(name, |b| b.iter(&run));
    }
    group.finish();
}

/// Best-of-5 wall times, the dense / routed ratios and the layer / dense conv ratio.
fn summary() {
    let timed: Vec<(&str, f64)> = workloads()
        .into_iter()
        .chain(layer_workloads())
        .collect::<Vec<_>>()
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
        println!("  {name:<28} {ms:9.3} ms");
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
    let time = |name: &str| {
        timed
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(f64::NAN, |(_, ms)| *ms)
    };
    println!(
        "  {:<26} layer / dense conv = {:.2}× (ideal ≈ k = {SLOTS})",
        "layer_forward_backward",
        time("layer_forward_backward") / time("dense_conv_forward_backward")
    );
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
