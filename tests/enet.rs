//! ENet (davidtvs/PyTorch-ENet): state-dict keys, shapes, order and dtypes against
//! `tests/manifests/enet.tsv` and `enet-moe.tsv`; eval logits, and loss, gradients and BN
//! statistics of a training step (plain and with the default PatchConvMoE), against the
//! PyTorch reference of `scripts/fixtures/enet.py`; eval and train-mode logits against the
//! independent functional reference of `scripts/fixtures/enet_upstream.py` (written from
//! davidtvs/PyTorch-ENet's module structure and checked against that repository's ENet).

use moeseg::models::{self, ModelConfig, ModelName};
use moeseg::moe::patch_conv_moe::{balance_loss, replace_conv_with_moe, PatchConvMoeConfig};
use moeseg::nn::state_dict::{load_state_dict, LoadOptions};
use moeseg::nn::{
    get_module, named_parameters, named_tensors, set_dropout_probability, set_training, Role,
};
use moeseg::ops::loss::CrossEntropyOptions;
use moeseg::testing::{assert_close, Fixtures};
use moeseg::{DType, Tensor};
use std::path::Path;

/// The elements on the host; a failed copy fails the test.
trait ToHost {
    fn to_host(&self) -> Vec<f32>;
}

impl ToHost for Tensor {
    fn to_host(&self) -> Vec<f32> {
        self.try_to_vec().unwrap()
    }
}

fn enet() -> Box<dyn models::SegNet> {
    models::build(ModelName::Enet, &ModelConfig::default()).unwrap()
}

#[test]
fn forward_keeps_any_input_size() {
    let net = models::build(
        ModelName::Enet,
        &ModelConfig {
            num_classes: 5,
            ..ModelConfig::default()
        },
    )
    .unwrap();
    set_training(net.as_ref(), false);
    for (h, w) in [(32, 48), (37, 45)] {
        let x = Tensor::zeros([1, 3, h, w], &moeseg::Device::Cpu).unwrap();
        let out = net.forward(&x).unwrap();
        assert_eq!(out.dims(), &[1, 5, h, w]);
    }
}

#[test]
fn forward_rejects_bad_inputs() {
    let net = enet();
    let cpu = moeseg::Device::Cpu;
    assert!(net
        .forward(&Tensor::zeros([1, 4, 16, 16], &cpu).unwrap())
        .is_err());
    assert!(net
        .forward(&Tensor::zeros([3, 16, 16], &cpu).unwrap())
        .is_err());
}

// ------------------------------------------------------------------------------------------
// Parity with the PyTorch reference of `scripts/fixtures/enet.py` (random f16 weights at
// NUM_CLASSES classes, non-trivial BN statistics).

/// Classes of the fixture network.
const NUM_CLASSES: usize = 4;
/// The fixture stores gradients of at most this many elements whole, …
const FULL_GRAD: usize = 1024;
/// … and this many elements of larger ones, at flat positions `⌊i·n / SAMPLES⌋`.
const SAMPLES: usize = 256;

/// Eval logits: `‖rust − torch‖ / ‖torch‖` bound …
const LOGITS_REL_NORM: f64 = 1e-4;
/// … and `max |rust − torch|` bound relative to `max |torch|`.
const LOGITS_MAX_ABS_REL: f64 = 1e-4;
/// Loss and every gradient (relative norm per tensor) …
const GRAD_REL: f64 = 1e-3;
/// … except that a gradient that rounding-level changes move by `noise` (relative norm,
/// measured by the fixture script: a PReLU slope's gradient is a sum whose terms nearly
/// cancel) is allowed this multiple of it.
const NOISE_FACTOR: f64 = 10.0;
/// The script keeps at most MAX_NOISY gradients noisier than NOISY per case.
const NOISY: f32 = 3e-4;
const MAX_NOISY: usize = 5;
/// BN running statistics after the training forward (per element, relative + absolute).
const RUNNING_STATS_TOL: f32 = 1e-4;

fn fixture_path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// ENet at NUM_CLASSES with the fixture weights, loaded strictly from the PyTorch checkpoint.
fn pytorch_enet() -> Box<dyn models::SegNet> {
    let config = ModelConfig {
        num_classes: NUM_CLASSES,
        ..ModelConfig::default()
    };
    let net = models::build(ModelName::Enet, &config).unwrap();
    let report = load_state_dict(
        net.as_ref(),
        fixture_path("enet_weights.safetensors"),
        LoadOptions::default(),
    )
    .unwrap();
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.loaded.len(), 622);
    net
}

/// The same with the default PatchConvMoE at `regular5_1.ext_conv2.0`, its weights loaded
/// strictly from the fixture's layer checkpoint.
fn pytorch_enet_moe() -> Box<dyn models::SegNet> {
    let mut net = pytorch_enet();
    let path = ModelName::Enet.default_moe_path();
    replace_conv_with_moe(net.as_mut(), path, PatchConvMoeConfig::default()).unwrap();
    let layer = get_module(net.as_ref(), path).unwrap();
    let report = load_state_dict(
        layer,
        fixture_path("enet_moe_layer.safetensors"),
        LoadOptions::default(),
    )
    .unwrap();
    assert!(report.is_complete(), "{report}");
    net
}

fn norm(values: impl Iterator<Item = f64>) -> f64 {
    values.map(|v| v * v).sum::<f64>().sqrt()
}

/// `(‖a − e‖ / ‖e‖, max |a − e|)` over two equally long slices.
fn errors(actual: &[f32], expected: &[f32]) -> (f64, f64) {
    assert_eq!(actual.len(), expected.len());
    let diff = actual
        .iter()
        .zip(expected)
        .map(|(&a, &e)| a as f64 - e as f64);
    let max_abs = diff.clone().fold(0.0, |m: f64, d| m.max(d.abs()));
    let rel = norm(diff) / norm(expected.iter().map(|&e| e as f64)).max(f64::MIN_POSITIVE);
    (rel, max_abs)
}

fn check_logits(what: &str, actual: &Tensor, expected: &Tensor) {
    assert_eq!(actual.shape(), expected.shape(), "{what}");
    let expected = expected.to_host();
    let (rel, max_abs) = errors(&actual.to_host(), &expected);
    let scale = expected.iter().fold(0.0f64, |m, &e| m.max(e.abs() as f64));
    println!("{what}: relative norm error {rel:.2e}, max abs error {max_abs:.2e} (max |logit| {scale:.1})");
    assert!(
        rel <= LOGITS_REL_NORM,
        "{what}: relative norm error {rel:e}"
    );
    assert!(
        max_abs <= LOGITS_MAX_ABS_REL * scale,
        "{what}: max abs error {max_abs:e} vs max |logit| {scale}"
    );
}

#[test]
fn eval_logits_match_pytorch() {
    let fx = Fixtures::load("enet").unwrap();
    let net = pytorch_enet();
    set_training(net.as_ref(), false);
    let out = net.forward(&fx.get("train.input").unwrap()).unwrap();
    check_logits("eval [2,3,32,48]", &out, &fx.get("eval.out").unwrap());
    let out = net.forward(&fx.get("odd.input").unwrap()).unwrap();
    check_logits("eval [1,3,37,53]", &out, &fx.get("odd.out").unwrap());
}

/// The same weights against `scripts/fixtures/enet_upstream.py`, which shares no network code
/// with `enet.py`: eval logits (even and odd size) and train-mode logits (BN batch statistics,
/// dropout off).
#[test]
fn logits_match_upstream_structure() {
    let fx = Fixtures::load("enet_upstream").unwrap();
    let net = pytorch_enet();
    set_training(net.as_ref(), false);
    let out = net.forward(&fx.get("eval.input").unwrap()).unwrap();
    check_logits(
        "upstream eval [2,3,40,56]",
        &out,
        &fx.get("eval.out").unwrap(),
    );
    let out = net.forward(&fx.get("odd.input").unwrap()).unwrap();
    check_logits(
        "upstream eval [1,3,45,61]",
        &out,
        &fx.get("odd.out").unwrap(),
    );
    set_training(net.as_ref(), true);
    set_dropout_probability(net.as_ref(), 0.0).unwrap();
    let out = net.forward(&fx.get("eval.input").unwrap()).unwrap();
    check_logits(
        "upstream train [2,3,40,56]",
        &out,
        &fx.get("train.out").unwrap(),
    );
}

/// One training step (dropout 0) of `net` on the case's input; compares the loss, every
/// parameter's gradient and the BN statistics after the forward with the fixture.
fn check_train_step(net: &dyn models::SegNet, case: &str, with_balance: bool) {
    let fx = Fixtures::load("enet").unwrap();
    let get = |key: &str| fx.get(&format!("{case}.{key}")).unwrap();
    set_training(net, true);
    set_dropout_probability(net, 0.0).unwrap();
    let logits = net.forward(&get("input")).unwrap();
    let mut loss = logits
        .cross_entropy(&get("target"), CrossEntropyOptions::default())
        .unwrap();
    if with_balance {
        let balance = balance_loss(net).unwrap().expect("a MoE layer");
        let (rel, _) = errors(&balance.to_host(), &get("balance").to_host());
        println!("{case}: balance loss relative error {rel:.2e}");
        assert!(
            rel <= GRAD_REL,
            "{case}: balance loss relative error {rel:e}"
        );
        loss = loss.add(&balance).unwrap();
    }
    let (rel, _) = errors(&loss.to_host(), &get("loss").to_host());
    println!(
        "{case}: loss {} relative error {rel:.2e}",
        loss.item().unwrap()
    );
    assert!(rel <= GRAD_REL, "{case}: loss relative error {rel:e}");
    loss.backward().unwrap();

    let (norms, scales) = (get("grad_norms").to_host(), get("grad_scales").to_host());
    let noise = get("grad_noise").to_host();
    let mut widened = Vec::new();
    let stored = get("grads").to_host();
    let params = named_parameters(net);
    assert_eq!(params.len(), norms.len(), "{case}: parameter count");
    let (mut offset, mut worst) = (0, (0.0f64, String::new()));
    for (i, (key, param)) in params.iter().enumerate() {
        let grad = param
            .grad()
            .map(|g| g.to_host())
            .unwrap_or_else(|| vec![0.0; param.numel()]);
        let n = grad.len();
        let picked: Vec<f32> = if n <= FULL_GRAD {
            grad.clone()
        } else {
            (0..SAMPLES).map(|s| grad[s * n / SAMPLES]).collect()
        };
        let expected: Vec<f32> = stored[offset..offset + picked.len()]
            .iter()
            .map(|&v| v * scales[i])
            .collect();
        offset += picked.len();
        let expected_norm = norms[i] as f64;
        let actual_norm = norm(grad.iter().map(|&g| g as f64));
        // f16 storage of values scaled to max-abs 1: an absolute floor for tiny samples.
        let floor = 1e-6 * scales[i] as f64 * (picked.len() as f64).sqrt();
        let tolerance = GRAD_REL.max(NOISE_FACTOR * noise[i] as f64);
        if tolerance > GRAD_REL {
            widened.push(format!("{key} ({tolerance:.1e})"));
        }
        let (rel_sample, _) = errors(&picked, &expected);
        let sample_norm = norm(expected.iter().map(|&e| e as f64));
        let sample_ok = rel_sample * sample_norm <= tolerance * sample_norm + floor;
        let norm_err = (actual_norm - expected_norm).abs();
        let norm_ok = norm_err <= tolerance * expected_norm + 1e-12;
        assert!(
            sample_ok && norm_ok,
            "{case}: gradient of {key}: values relative error {rel_sample:e}, norm {actual_norm} vs {expected_norm} (bound {tolerance:e})"
        );
        let rel = if expected_norm > 0.0 {
            norm_err / expected_norm
        } else {
            0.0
        };
        if tolerance == GRAD_REL && rel_sample.max(rel) > worst.0 && sample_norm > 0.0 {
            worst = (rel_sample.max(rel), key.clone());
        }
    }
    assert_eq!(offset, stored.len(), "{case}: stored gradient values");
    let noisy = noise.iter().filter(|&&n| n > NOISY).count();
    assert!(
        noisy <= MAX_NOISY,
        "{case}: {noisy} noisy gradients in the fixture"
    );
    println!("{case}: bounds widened for {widened:?}");
    println!(
        "{case}: worst relative error of the gradients held to GRAD_REL: {:.2e} ({})",
        worst.0, worst.1
    );

    let mut stats = Vec::new();
    for (key, tensor, role) in named_tensors(net) {
        match role {
            Role::Buffer(DType::F32) => stats.extend(tensor.to_host()),
            Role::Buffer(DType::I64) => assert_eq!(tensor.item().unwrap(), 8.0, "{case}: {key}"),
            _ => {}
        }
    }
    let stats = Tensor::from_vec(stats.clone(), [stats.len()]).unwrap();
    assert_close(
        &format!("{case}: running statistics"),
        &stats,
        &get("running_stats"),
        RUNNING_STATS_TOL,
        RUNNING_STATS_TOL,
    )
    .unwrap();
    let (rel, max_abs) = errors(&stats.to_host(), &get("running_stats").to_host());
    println!("{case}: running statistics relative norm error {rel:.2e}, max abs {max_abs:.2e}");
}

#[test]
fn train_step_matches_pytorch() {
    check_train_step(pytorch_enet().as_ref(), "train", false);
}

#[test]
fn moe_train_step_matches_pytorch() {
    check_train_step(pytorch_enet_moe().as_ref(), "moe_train", true);
}
