//! The PatchConvMoE pieces that need no MoE kernel: gates (keys, shapes, train / eval, PyTorch
//! logits), balancing losses (hand-derived values, gradients, PyTorch values), noisy selection,
//! capacity and routing statistics.

use moeseg::moe::{
    capacity, noisy_selection, BalanceInputs, BalanceLoss, Gate, GateConfig, GateKind, RoutingStats,
};
use moeseg::nn::{get_module, named_tensors, set_training, BatchNorm2d, Module};
use moeseg::testing::{assert_close, gradcheck, Fixtures, GradcheckOptions};
use moeseg::{Rng, Tensor};

/// The elements on the host; a failed copy fails the test.
trait ToHost {
    fn to_host(&self) -> Vec<f32>;
}

impl ToHost for Tensor {
    fn to_host(&self) -> Vec<f32> {
        self.try_to_vec().unwrap()
    }
}

fn t(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(data.to_vec(), shape.to_vec()).unwrap()
}

fn close(what: &str, actual: f32, expected: f64, tol: f64) {
    assert!(
        (actual as f64 - expected).abs() <= tol,
        "{what}: {actual} but expected {expected}"
    );
}

// ----- gates --------------------------------------------------------------------------------

fn gate_keys(config: GateConfig) -> Vec<String> {
    let gate = Gate::new(config, 5, 3).unwrap();
    named_tensors(&gate).into_iter().map(|(n, ..)| n).collect()
}

#[test]
fn gate_names_parse_and_unknown_names_list_the_valid_ones() {
    for (kind, name) in GateKind::ALL.iter().zip(GateKind::NAMES) {
        assert_eq!(name.parse::<GateKind>().unwrap(), *kind);
        assert_eq!(kind.to_string(), name);
    }
    assert_eq!(GateKind::default(), GateKind::TwoConvGap);
    let err = "4conv_gap".parse::<GateKind>().unwrap_err().to_string();
    assert!(
        err.contains("4conv_gap") && err.contains("gap_linear, conv_gap, 2conv_gap, 3conv_gap")
    );
}

#[test]
fn gate_kernel_option_is_checked_per_kind() {
    let cfg = |kind, kernel| GateConfig { kind, kernel };
    assert_eq!(cfg(GateKind::TwoConvGap, None).conv_kernel().unwrap(), 1);
    assert_eq!(
        cfg(GateKind::ThreeConvGap, Some(3)).conv_kernel().unwrap(),
        3
    );
    assert_eq!(cfg(GateKind::ConvGap, None).conv_kernel().unwrap(), 3);
    for bad in [
        cfg(GateKind::TwoConvGap, Some(5)),
        cfg(GateKind::ConvGap, Some(1)),
        cfg(GateKind::GapLinear, Some(1)),
    ] {
        let err = Gate::new(bad, 4, 2).err().unwrap().to_string();
        assert!(err.contains(bad.kind.name()), "{err}");
    }
    // Minimum token side: 1 + convs·(kg − 1).
    assert_eq!(cfg(GateKind::GapLinear, None).min_token_size().unwrap(), 1);
    assert_eq!(cfg(GateKind::ConvGap, None).min_token_size().unwrap(), 3);
    assert_eq!(
        cfg(GateKind::TwoConvGap, Some(3)).min_token_size().unwrap(),
        5
    );
    assert_eq!(
        cfg(GateKind::ThreeConvGap, Some(3))
            .min_token_size()
            .unwrap(),
        7
    );
    assert!(Gate::new(GateConfig::default(), 0, 2).is_err());
}

#[test]
fn gate_state_dict_keys_match_the_spec() {
    let bn = |i: usize| {
        [
            "weight",
            "bias",
            "running_mean",
            "running_var",
            "num_batches_tracked",
        ]
        .map(|n| format!("network.{i}.{n}"))
        .to_vec()
    };
    let w = |i: usize| format!("network.{i}.weight");
    assert_eq!(
        gate_keys(GateConfig::new(GateKind::GapLinear)),
        ["network.2.weight", "network.2.bias"]
    );
    assert_eq!(gate_keys(GateConfig::new(GateKind::ConvGap)), [w(0)]);
    let two = [vec![w(0)], bn(1), vec![w(2)]].concat();
    assert_eq!(gate_keys(GateConfig::new(GateKind::TwoConvGap)), two);
    let three = [vec![w(0)], bn(1), vec![w(2)], bn(3), vec![w(4)]].concat();
    assert_eq!(gate_keys(GateConfig::new(GateKind::ThreeConvGap)), three);
    // Shapes: Conv(C=5, 8, kg=3) and Conv(8, E=3, 3).
    let gate = Gate::new(
        GateConfig {
            kind: GateKind::TwoConvGap,
            kernel: Some(3),
        },
        5,
        3,
    )
    .unwrap();
    let shapes: Vec<Vec<usize>> = named_tensors(&gate)
        .into_iter()
        .map(|(_, t, _)| t.dims().to_vec())
        .collect();
    assert_eq!(shapes[0], [8, 5, 3, 3]);
    assert_eq!(shapes[6], [3, 8, 3, 3]);
}

#[test]
fn gate_gives_logits_per_token_and_rejects_bad_tokens() {
    let mut rng = Rng::new(3);
    for kind in GateKind::ALL {
        let gate = Gate::new(GateConfig::new(kind), 4, 6).unwrap();
        let tokens = Tensor::randn([5, 4, 4, 5], 0.0, 1.0, &mut rng).unwrap();
        assert_eq!(gate.forward(&tokens).unwrap().dims(), [5, 6], "{kind}");
        let wrong_channels = Tensor::randn([5, 3, 4, 5], 0.0, 1.0, &mut rng).unwrap();
        let err = gate.forward(&wrong_channels).unwrap_err().to_string();
        assert!(err.contains("4 channels"), "{err}");
        assert!(gate.forward(&tokens.reshape(&[5, 4, 20]).unwrap()).is_err());
    }
    // conv_gap needs 3×3 tokens; 2conv_gap with kg = 3 needs 5×5.
    let conv_gap = Gate::new(GateConfig::new(GateKind::ConvGap), 2, 3).unwrap();
    let small = Tensor::zeros([2, 2, 2, 4], &moeseg::Device::Cpu).unwrap();
    let err = conv_gap.forward(&small).unwrap_err().to_string();
    assert!(
        err.contains("conv_gap") && err.contains("3×3") && err.contains("2×4"),
        "{err}"
    );
    let two = Gate::new(
        GateConfig {
            kind: GateKind::TwoConvGap,
            kernel: Some(3),
        },
        2,
        3,
    )
    .unwrap();
    let four = Tensor::zeros([2, 2, 4, 9], &moeseg::Device::Cpu).unwrap();
    assert!(two.forward(&four).unwrap_err().to_string().contains("5×5"));
}

#[test]
fn train_and_eval_reach_the_gate_batch_norms() {
    let gate = Gate::new(GateConfig::new(GateKind::ThreeConvGap), 3, 4).unwrap();
    let training = |path: &str| {
        get_module(&gate, path)
            .unwrap()
            .as_any()
            .downcast_ref::<BatchNorm2d>()
            .unwrap()
            .is_training()
    };
    assert!(training("network.1") && training("network.3"));
    set_training(&gate, false);
    assert!(!training("network.1") && !training("network.3"));
    set_training(&gate, true);
    assert!(training("network.3"));
}

/// The gate of one fixture case (the table in `scripts/fixtures/moe.py`).
struct GateCase {
    case: &'static str,
    config: GateConfig,
    channels: usize,
    experts: usize,
    training: bool,
}

const fn gate_case(
    case: &'static str,
    kind: GateKind,
    kernel: Option<usize>,
    channels: usize,
    experts: usize,
    training: bool,
) -> GateCase {
    GateCase {
        case,
        config: GateConfig { kind, kernel },
        channels,
        experts,
        training,
    }
}

const GATE_CASES: [GateCase; 5] = [
    gate_case("twoconv", GateKind::TwoConvGap, None, 3, 4, true),
    gate_case("ste", GateKind::GapLinear, None, 4, 4, false),
    gate_case("dilated", GateKind::ConvGap, None, 3, 3, false),
    gate_case("image", GateKind::TwoConvGap, Some(3), 3, 4, false),
    gate_case("capacity", GateKind::ThreeConvGap, None, 3, 4, true),
];

#[test]
fn gates_match_pytorch_logits_and_running_stats() {
    let fx = Fixtures::load("moe").unwrap();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/moe.safetensors"
    );
    let file_keys: Vec<String> = moeseg::io::safetensors::load(path)
        .unwrap()
        .into_keys()
        .collect();
    for GateCase {
        case,
        config,
        channels,
        experts,
        training,
    } in GATE_CASES
    {
        let gate = Gate::new(config, channels, experts).unwrap();
        let ours: Vec<String> = named_tensors(&gate).into_iter().map(|(n, ..)| n).collect();
        let prefix = format!("{case}.state.gate.");
        let theirs: Vec<String> = file_keys
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string))
            .collect();
        let mut sorted = ours.clone();
        sorted.sort();
        assert_eq!(sorted, theirs, "{case}: gate keys differ from PyTorch's");
        for (name, tensor, _) in named_tensors(&gate) {
            let key = format!("{prefix}{name}");
            tensor.replace_data(&fx.get(&key).unwrap()).unwrap();
        }
        set_training(&gate, training);
        let logits = gate
            .forward(&fx.get(&format!("{case}.gate_tokens")).unwrap())
            .unwrap();
        let expected = fx.get(&format!("{case}.gate_logits")).unwrap();
        assert_close(
            &format!("{case}.gate_logits"),
            &logits,
            &expected,
            1e-4,
            1e-5,
        )
        .unwrap();
        let probs = logits.softmax(1).unwrap();
        let expected = fx.get(&format!("{case}.probs")).unwrap();
        assert_close(&format!("{case}.probs"), &probs, &expected, 1e-4, 1e-6).unwrap();
        if training {
            for (name, tensor, _) in named_tensors(&gate) {
                let key = format!("{case}.state_after.gate.{name}");
                if fx.has(&key) {
                    assert_close(&key, &tensor, &fx.get(&key).unwrap(), 1e-4, 1e-6).unwrap();
                }
            }
        }
    }
}

// ----- balancing losses ---------------------------------------------------------------------

fn loss(kind: BalanceLoss, probs: &Tensor, weights: &Tensor, indices: &Tensor) -> f32 {
    kind.compute(BalanceInputs {
        probs,
        weights,
        indices,
    })
    .unwrap()
    .item()
    .unwrap()
}

#[test]
fn balance_names_parse_and_unknown_names_list_the_valid_ones() {
    for (kind, name) in BalanceLoss::ALL.iter().zip(BalanceLoss::NAMES) {
        assert_eq!(name.parse::<BalanceLoss>().unwrap(), *kind);
    }
    assert_eq!(BalanceLoss::default(), BalanceLoss::Entropy);
    let err = "load".parse::<BalanceLoss>().unwrap_err().to_string();
    assert!(err.contains("`load`") && err.contains("switch, entropy, importance"));
}

#[test]
fn uniform_probabilities_are_perfectly_balanced() {
    // T = 3, E = 4, p = 1/4 everywhere, k = 2 (experts 0, 1 by the tie rule), weights 1/2.
    let p = t(&[0.25; 12], &[3, 4]);
    let w = t(&[0.5; 6], &[3, 2]);
    let idx = t(&[0., 1., 0., 1., 0., 1.], &[3, 2]);
    let ln4 = 4f64.ln();
    // mean_t H(p_t) − H(P) = ln 4 − ln 4.
    close(
        "entropy",
        loss(BalanceLoss::Entropy, &p, &w, &idx),
        0.0,
        1e-6,
    );
    close(
        "column",
        loss(BalanceLoss::ColumnEntropy, &p, &w, &idx),
        -ln4,
        1e-6,
    );
    // Top-1 ties go to expert 0: f = (1, 0, 0, 0), P = 1/4: 4·1/4 − 1 = 0.
    close("switch", loss(BalanceLoss::Switch, &p, &w, &idx), 0.0, 1e-6);
    // Imp = (1.5, 1.5, 0, 0): mean 0.75, variance 0.5625, CV² = 1.
    close(
        "importance",
        loss(BalanceLoss::Importance, &p, &w, &idx),
        1.0,
        1e-5,
    );
    close("none", loss(BalanceLoss::None, &p, &w, &idx), 0.0, 0.0);
}

#[test]
fn collapsed_routing_is_penalised_as_derived_by_hand() {
    // T = 5, E = 4, every token one-hot on expert 0, k = 1, weight 1: Imp = (5, 0, 0, 0).
    let mut data = vec![0.0; 20];
    for row in data.chunks_mut(4) {
        row[0] = 1.0;
    }
    let p = t(&data, &[5, 4]);
    let (w, idx) = (t(&[1.0; 5], &[5, 1]), t(&[0.0; 5], &[5, 1]));
    // mean H(p_t) = 0 (0·log 0 = 0) and H(P) = H(1, 0, 0, 0) = 0.
    close(
        "entropy",
        loss(BalanceLoss::Entropy, &p, &w, &idx),
        0.0,
        1e-6,
    );
    close(
        "column",
        loss(BalanceLoss::ColumnEntropy, &p, &w, &idx),
        0.0,
        1e-6,
    );
    // f = P = (1, 0, 0, 0): 4·1 − 1 = 3.
    close("switch", loss(BalanceLoss::Switch, &p, &w, &idx), 3.0, 1e-6);
    // mean 5/4, variance ((15/4)² + 3·(5/4)²)/4 = 75/16, CV² = (75/16)/(25/16) = 3.
    close(
        "importance",
        loss(BalanceLoss::Importance, &p, &w, &idx),
        3.0,
        1e-5,
    );
}

#[test]
fn two_by_two_case_worked_by_hand() {
    // p = [[0.8, 0.2], [0.6, 0.4]], P = (0.7, 0.3), both tokens' top-1 is expert 0.
    let p = t(&[0.8, 0.2, 0.6, 0.4], &[2, 2]);
    let h = |a: f64, b: f64| -(a * a.ln() + b * b.ln());
    let expected_entropy = (h(0.8, 0.2) + h(0.6, 0.4)) / 2.0 - h(0.7, 0.3);
    // ≈ (0.500402 + 0.673012)/2 − 0.610864 = −0.024157
    close("h", expected_entropy as f32, -0.024157, 1e-6);
    let (w1, idx1) = (t(&[0.8, 0.6], &[2, 1]), t(&[0.0, 0.0], &[2, 1]));
    close(
        "entropy",
        loss(BalanceLoss::Entropy, &p, &w1, &idx1),
        expected_entropy,
        1e-6,
    );
    close(
        "column",
        loss(BalanceLoss::ColumnEntropy, &p, &w1, &idx1),
        -h(0.7, 0.3),
        1e-6,
    );
    // f = (1, 0): 2·(1·0.7 + 0·0.3) − 1 = 0.4.
    close(
        "switch",
        loss(BalanceLoss::Switch, &p, &w1, &idx1),
        0.4,
        1e-6,
    );
    // k = 1: Imp = (1.4, 0), mean 0.7, variance 0.49: CV² = 1.
    close(
        "importance k1",
        loss(BalanceLoss::Importance, &p, &w1, &idx1),
        1.0,
        1e-5,
    );
    // k = 2 with the weights in rank order: Imp = (1.4, 0.6), mean 1, variance 0.16.
    let (w2, idx2) = (
        t(&[0.8, 0.2, 0.6, 0.4], &[2, 2]),
        t(&[0., 1., 0., 1.], &[2, 2]),
    );
    close(
        "importance k2",
        loss(BalanceLoss::Importance, &p, &w2, &idx2),
        0.16,
        1e-6,
    );
    // The same weights listed in another slot order give the same Imp.
    let (w3, idx3) = (
        t(&[0.2, 0.8, 0.6, 0.4], &[2, 2]),
        t(&[1., 0., 0., 1.], &[2, 2]),
    );
    close(
        "importance k2",
        loss(BalanceLoss::Importance, &p, &w3, &idx3),
        0.16,
        1e-6,
    );
}

#[test]
fn zero_probabilities_give_zero_entropy_and_finite_gradients() {
    // p = [[1, 0], [0, 1]]: mean H = 0, P = (1/2, 1/2): entropy loss = −ln 2.
    let p = t(&[1., 0., 0., 1.], &[2, 2]).with_requires_grad(true);
    let (w, idx) = (t(&[1., 1.], &[2, 1]), t(&[0., 1.], &[2, 1]));
    let l = BalanceLoss::Entropy
        .compute(BalanceInputs {
            probs: &p,
            weights: &w,
            indices: &idx,
        })
        .unwrap();
    close("entropy", l.item().unwrap(), -(2f64.ln()), 1e-6);
    l.backward().unwrap();
    let grad = p.grad().unwrap().to_host();
    assert!(grad.iter().all(|g| g.is_finite()), "{grad:?}");
    // d/dp_{0,1}: −(ln 1e-12)/2 from the clamped log, +(ln(1/2) + 1)/2 from H(P).
    let expected = -(1e-12f64.ln()) / 2.0 + (0.5f64.ln() + 1.0) / 2.0;
    close("grad p01", grad[1], expected, 1e-4);
}

#[test]
fn balance_inputs_are_checked() {
    let p = t(&[0.5; 8], &[2, 4]);
    let good = t(&[0., 1., 2., 3.], &[2, 2]);
    let cases = [
        (t(&[0.5; 6], &[3, 2]), good.clone()), // weights: wrong T
        (t(&[0.5; 4], &[2, 2]), t(&[0., 1.], &[2, 1])), // shapes differ
        (t(&[0.5; 4], &[2, 2]), t(&[0., 1., 2., 7.], &[2, 2])), // expert 7 of 4
    ];
    for (w, idx) in &cases {
        let r = BalanceLoss::Importance.compute(BalanceInputs {
            probs: &p,
            weights: w,
            indices: idx,
        });
        assert!(r.is_err());
    }
    let flat = t(&[0.5; 8], &[8]);
    let err = BalanceLoss::Entropy
        .compute(BalanceInputs {
            probs: &flat,
            weights: &t(&[0.5; 4], &[2, 2]),
            indices: &good,
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("probs"), "{err}");
}

/// Rank-order top-k indices and renormalised weights `p·m / (Σ p·m + 1e-5)` (STE for k = 1)
/// computed from `p` with the mask constant, as the layer does.
fn routing_weights(p: &Tensor, indices: &Tensor, ste: bool) -> moeseg::Result<Tensor> {
    let chosen = p.gather(1, indices)?;
    if ste && indices.dims()[1] == 1 {
        return chosen.sub(&chosen.detach())?.add_scalar(1.0);
    }
    chosen.div(&chosen.sum(&[1], true)?.add_scalar(1e-5)?)
}

#[test]
fn balancing_losses_pass_gradcheck() {
    let mut rng = Rng::new(11);
    // Well separated logits so a ±eps step never changes a top-1 or top-k choice.
    let logits: Vec<f32> = (0..5)
        .flat_map(|t| (0..4).map(move |e| ((t * 3 + e * 5) % 7) as f32 * 0.6))
        .zip((0..20).map(|_| rng.uniform(-0.05, 0.05)))
        .map(|(a, b)| a + b)
        .collect();
    let logits = t(&logits, &[5, 4]);
    let (_, indices) = logits.topk(2, 1, true).unwrap();
    let options = GradcheckOptions {
        eps: 1e-2,
        rtol: 2e-2,
        atol: 2e-3,
    };
    for kind in [
        BalanceLoss::Switch,
        BalanceLoss::Entropy,
        BalanceLoss::Importance,
        BalanceLoss::ColumnEntropy,
    ] {
        gradcheck(
            kind.name(),
            std::slice::from_ref(&logits),
            |x| {
                let p = x[0].softmax(1)?;
                let w = routing_weights(&p, &indices, false)?;
                kind.compute(BalanceInputs {
                    probs: &p,
                    weights: &w,
                    indices: &indices,
                })?
                .mul_scalar(10.0)
            },
            options,
        )
        .unwrap();
    }
}

const ALL_CASES: [(&str, BalanceLoss, bool); 6] = [
    ("single", BalanceLoss::Entropy, true),
    ("twoconv", BalanceLoss::Entropy, false),
    ("ste", BalanceLoss::Switch, true),
    ("dilated", BalanceLoss::Importance, false),
    ("image", BalanceLoss::ColumnEntropy, false),
    ("capacity", BalanceLoss::None, false),
];

#[test]
fn balancing_losses_match_pytorch() {
    let fx = Fixtures::load("moe").unwrap();
    for (case, kind, ste) in ALL_CASES {
        let get = |key: &str| fx.get(&format!("{case}.{key}")).unwrap();
        let (probs, indices) = (get("probs").with_requires_grad(true), get("indices"));
        let weights = routing_weights(&probs, &indices, ste).unwrap();
        assert_close(
            &format!("{case}.weights"),
            &weights,
            &get("weights"),
            1e-5,
            1e-6,
        )
        .unwrap();
        let value = kind
            .compute(BalanceInputs {
                probs: &probs,
                weights: &weights,
                indices: &indices,
            })
            .unwrap();
        let value = value.reshape(&[1]).unwrap();
        assert_close(
            &format!("{case}.balance"),
            &value,
            &get("balance"),
            1e-4,
            1e-6,
        )
        .unwrap();
        if value.requires_grad() {
            value.sum_all().unwrap().backward().unwrap();
            let grad = probs.grad().unwrap();
            assert_close(
                &format!("{case}.grad_probs"),
                &grad,
                &get("grad_probs"),
                1e-4,
                1e-5,
            )
            .unwrap();
        } else {
            assert!(get("grad_probs").to_host().iter().all(|&g| g == 0.0));
        }
    }
}

// ----- selection ----------------------------------------------------------------------------

#[test]
fn noisy_selection_scales_by_the_population_std_and_adds_noise() {
    let p = t(&[0.5, 0.3, 0.2, 0.25, 0.25, 0.5], &[2, 3]).with_requires_grad(true);
    let scores = noisy_selection(&p, 0.0, &mut Rng::new(1)).unwrap();
    assert!(!scores.requires_grad());
    // Row 0: mean 1/3, population variance ((1/6)² + (1/30)² + (2/15)²)/3 = 7/450.
    let std0 = (7.0f64 / 450.0).sqrt();
    // Row 1: mean 1/3, deviations (−1/12, −1/12, 1/6): variance (1/144·2 + 1/36)/3 = 1/72.
    let std1 = (1.0f64 / 72.0).sqrt();
    let s = scores.to_host();
    close("s00", s[0], 0.5 / std0, 1e-4);
    close("s02", s[2], 0.2 / std0, 1e-4);
    close("s12", s[5], 0.5 / std1, 1e-4);
    // A uniform row (std 0) gives equal finite scores.
    let u = noisy_selection(&t(&[0.25; 4], &[1, 4]), 0.0, &mut Rng::new(1)).unwrap();
    assert!(u
        .to_host()
        .iter()
        .all(|&v| v.is_finite() && v == u.to_host()[0]));
    // Noise: N(0, σ²) on top, reproducible from the seed.
    let big = Tensor::full([200, 5], 0.2, &moeseg::Device::Cpu).unwrap();
    let a = noisy_selection(&big, 0.7, &mut Rng::new(9))
        .unwrap()
        .to_host();
    let b = noisy_selection(&big, 0.7, &mut Rng::new(9))
        .unwrap()
        .to_host();
    assert_eq!(a, b);
    let base = 0.2 / 1e-6f64;
    let noise: Vec<f64> = a.iter().map(|&v| v as f64 - base).collect();
    let mean = noise.iter().sum::<f64>() / noise.len() as f64;
    let std = (noise.iter().map(|n| (n - mean).powi(2)).sum::<f64>() / noise.len() as f64).sqrt();
    assert!(mean.abs() < 0.1 && (std - 0.7).abs() < 0.1, "{mean} {std}");
    for bad in [-0.1, f32::NAN] {
        let err = noisy_selection(&p, bad, &mut Rng::new(1)).unwrap_err();
        assert!(err.to_string().contains("noise_std"));
    }
    assert!(noisy_selection(&t(&[0.5; 2], &[2]), 1.0, &mut Rng::new(1)).is_err());
}

#[test]
fn capacity_is_the_ceiling_of_k_t_over_e_times_the_factor() {
    assert_eq!(capacity(2, 18, 4, 1.0).unwrap(), 9);
    assert_eq!(capacity(2, 18, 4, 1.25).unwrap(), 12); // 11.25
    assert_eq!(capacity(1, 10, 3, 1.0).unwrap(), 4); // 3.33…
    assert_eq!(capacity(1, 0, 3, 2.0).unwrap(), 0);
    for (k, e, f) in [
        (3, 2, 1.0),
        (0, 2, 1.0),
        (1, 0, 1.0),
        (1, 2, 0.0),
        (1, 2, f32::NAN),
    ] {
        assert!(capacity(k, 8, e, f).is_err(), "k {k} E {e} factor {f}");
    }
    let err = capacity(1, 8, 2, -1.0).unwrap_err().to_string();
    assert!(err.contains("capacity_factor") && err.contains("-1"));
}

// ----- routing statistics -------------------------------------------------------------------

#[test]
fn routing_statistics_worked_by_hand() {
    let mut stats = RoutingStats::new(3, 2).unwrap();
    // Batch 1: tokens {0,1}, {0,2}, {1,0}; batch 2: {2,1}. Class histograms per token.
    stats
        .update(
            &t(&[0., 1., 0., 2., 1., 0.], &[3, 2]),
            Some(&t(&[2., 0., 1., 1., 0., 4.], &[3, 2])),
        )
        .unwrap();
    stats
        .update(&t(&[2., 1.], &[1, 2]), Some(&t(&[3., 1.], &[1, 2])))
        .unwrap();
    let r = stats.report();
    assert_eq!(r.tokens, 4);
    // Assignments (3, 3, 2) of 8.
    assert_eq!(r.usage, [3.0 / 8.0, 3.0 / 8.0, 2.0 / 8.0]);
    let h = -(2.0 * 0.375 * 0.375f64.ln() + 0.25 * 0.25f64.ln());
    assert!((r.nre - h / 3f64.ln()).abs() < 1e-12 && r.nre < 1.0);
    // Top-1: expert 0 twice, 1 once, 2 once.
    assert_eq!(r.tec, 0.5);
    let a = &r.coactivation;
    assert_eq!(a[0], [0.75, 0.5, 0.25]);
    assert_eq!(a[1], [0.5, 0.75, 0.25]);
    assert_eq!(a[2], [0.25, 0.25, 0.5]);
    // Pixels: e0 = t0+t1+t2 = (3, 5), e1 = t0+t2+t3 = (5, 5), e2 = t1+t3 = (4, 2).
    assert_eq!(r.expert_class[0], [3.0 / 8.0, 5.0 / 8.0]);
    assert_eq!(r.expert_class[1], [0.5, 0.5]);
    assert_eq!(r.expert_class[2], [4.0 / 6.0, 2.0 / 6.0]);
    assert_eq!(r.class_expert[0], [3.0 / 12.0, 5.0 / 12.0, 4.0 / 12.0]);
    assert_eq!(r.class_expert[1], [5.0 / 12.0, 5.0 / 12.0, 2.0 / 12.0]);
}

#[test]
fn collapsed_balanced_and_degenerate_routing() {
    let mut collapsed = RoutingStats::new(4, 0).unwrap();
    collapsed.update(&t(&[0.0; 6], &[6, 1]), None).unwrap();
    assert_eq!((collapsed.nre(), collapsed.tec()), (0.0, 1.0));
    let mut balanced = RoutingStats::new(4, 0).unwrap();
    balanced
        .update(&t(&[0., 1., 2., 3.], &[4, 1]), None)
        .unwrap();
    assert!((balanced.nre() - 1.0).abs() < 1e-12);
    assert_eq!(balanced.tec(), 0.25);
    let empty = RoutingStats::new(3, 2).unwrap();
    assert_eq!(empty.usage(), [0.0; 3]);
    assert_eq!((empty.nre(), empty.tec()), (0.0, 0.0));
    assert_eq!(empty.expert_class()[0], [0.0, 0.0]);
    let mut one = RoutingStats::new(1, 0).unwrap();
    one.update(&t(&[0., 0.], &[2, 1]), None).unwrap();
    assert_eq!(one.nre(), 1.0);
    assert!(RoutingStats::new(0, 2).is_err());
}

#[test]
fn routing_statistics_reject_bad_batches_and_keep_their_counts() {
    let mut stats = RoutingStats::new(3, 2).unwrap();
    stats.update(&t(&[0., 1.], &[1, 2]), None).unwrap();
    let before = stats.clone();
    let hist = t(&[1., 1.], &[1, 2]);
    let bad: [(Tensor, Option<&Tensor>, &str); 6] = [
        (t(&[0., 0.], &[1, 2]), None, "twice"),
        (t(&[0., 3.], &[1, 2]), None, "0..3"),
        (t(&[0., 1.5], &[1, 2]), None, "1.5"),
        (t(&[0.], &[1, 1]), None, "same k"),
        (
            t(&[0., 1.], &[1, 2]),
            Some(&t(&[1., 1., 1.], &[1, 3])),
            "[T = 1, C = 2]",
        ),
        (t(&[0., 1.], &[1, 2]), Some(&t(&[1., -1.], &[1, 2])), "≥ 0"),
    ];
    for (indices, histograms, message) in bad {
        let err = stats.update(&indices, histograms).unwrap_err().to_string();
        assert!(err.contains(message), "{err}");
    }
    assert_eq!(stats, before);
    stats.update(&t(&[2., 1.], &[1, 2]), Some(&hist)).unwrap();
    assert_eq!(stats.tokens(), 2);
}
