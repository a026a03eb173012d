//! PatchConvMoE end to end: parity with the PyTorch reference of moe.md §1 (fixtures from
//! `scripts/fixtures/moe.py`), E = 1 / k = 1 reproducing the replaced conv, replacement by path,
//! fixed-expert mode and reduction to one expert.

use moeseg::moe::{
    balance_loss, replace_conv_with_moe, BalanceLoss, GateConfig, GateKind, Granularity,
    PatchConvMoE, PatchConvMoeConfig,
};
use moeseg::nn::ConvOptions;
use moeseg::nn::{
    get_module, named_parameters, named_tensors, set_training, ActivationLayer, Conv2d, Module,
    Sequential,
};
use moeseg::ops::conv::Conv2dParams;
use moeseg::testing::{assert_close, Fixtures};
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

/// One fixture case of `scripts/fixtures/moe.py`.
struct Case {
    name: &'static str,
    experts: usize,
    k: usize,
    granularity: Granularity,
    gate: GateConfig,
    loss: BalanceLoss,
    dilation: usize,
    training: bool,
    capacity_factor: Option<f32>,
    shared_expert: bool,
}

fn cases() -> Vec<Case> {
    let gate = |kind, kernel| GateConfig { kind, kernel };
    let base = |name, experts, k, granularity| Case {
        name,
        experts,
        k,
        granularity,
        gate: gate(GateKind::TwoConvGap, None),
        loss: BalanceLoss::Entropy,
        dilation: 1,
        training: false,
        capacity_factor: None,
        shared_expert: false,
    };
    vec![
        base("single", 1, 1, Granularity::Grid(3)),
        Case {
            training: true,
            ..base("twoconv", 4, 2, Granularity::Grid(3))
        },
        Case {
            gate: gate(GateKind::GapLinear, None),
            loss: BalanceLoss::Switch,
            ..base("ste", 4, 1, Granularity::Grid(2))
        },
        Case {
            gate: gate(GateKind::ConvGap, None),
            loss: BalanceLoss::Importance,
            dilation: 2,
            ..base("dilated", 3, 2, Granularity::Grid(2))
        },
        Case {
            gate: gate(GateKind::TwoConvGap, Some(3)),
            loss: BalanceLoss::ColumnEntropy,
            ..base("image", 4, 2, Granularity::Image)
        },
        Case {
            gate: gate(GateKind::ThreeConvGap, None),
            loss: BalanceLoss::None,
            training: true,
            capacity_factor: Some(1.0),
            shared_expert: true,
            ..base("capacity", 4, 2, Granularity::Grid(3))
        },
    ]
}

/// The case's layer, with the fixture's weights and buffers loaded.
fn layer_for(fx: &Fixtures, case: &Case) -> PatchConvMoE {
    let get = |key: &str| fx.get(&format!("{}.{key}", case.name)).unwrap();
    let (input, weight) = (get("input"), get("state.experts.0.weight"));
    let w = weight.dims();
    let groups = input.dims()[1] / w[1];
    let padding = case.dilation * (w[2] - 1) / 2;
    let bias = fx.has(&format!("{}.state.experts.0.bias", case.name));
    let params = Conv2dParams::new(1, padding, case.dilation, groups);
    let conv = Conv2d::with_params(input.dims()[1], w[0], [w[2], w[3]], params, bias).unwrap();
    let config = PatchConvMoeConfig {
        num_experts: case.experts,
        k: case.k,
        granularity: case.granularity,
        gate: case.gate,
        loss: case.loss,
        alpha: 1.0,
        capacity_factor: case.capacity_factor,
        shared_expert: case.shared_expert,
        ..PatchConvMoeConfig::default()
    };
    let layer = PatchConvMoE::from_conv(&conv, config).unwrap();
    for (name, tensor, _) in named_tensors(&layer) {
        tensor.replace_data(&get(&format!("state.{name}"))).unwrap();
    }
    set_training(&layer, case.training);
    layer
}

#[test]
fn every_fixture_case_matches_the_pytorch_reference() {
    let fx = Fixtures::load("moe").unwrap();
    for case in cases() {
        let name = case.name;
        let get = |key: &str| fx.get(&format!("{name}.{key}")).unwrap();
        let layer = layer_for(&fx, &case);
        let input = get("input").with_requires_grad(true);
        let out = layer.forward(&input).unwrap();
        assert_close(&format!("{name}.out"), &out, &get("out"), 1e-4, 1e-5).unwrap();
        let record = layer.last_routing().unwrap();
        assert_close(
            &format!("{name}.indices"),
            &record.indices,
            &get("indices"),
            0.0,
            0.0,
        )
        .unwrap();
        let balance = record.balance_loss.reshape(&[1]).unwrap();
        assert_close(
            &format!("{name}.balance"),
            &balance,
            &get("balance"),
            1e-4,
            1e-6,
        )
        .unwrap();
        let loss = out
            .mul(&get("grad_out"))
            .unwrap()
            .sum_all()
            .unwrap()
            .add(&record.balance_loss)
            .unwrap();
        loss.backward().unwrap();
        assert_close(
            &format!("{name}.grad_input"),
            &input.grad().unwrap(),
            &get("grad_input"),
            1e-4,
            1e-5,
        )
        .unwrap();
        for (param, tensor) in named_parameters(&layer) {
            let grad = tensor
                .grad()
                .unwrap_or_else(|| tensor.zeros_like().unwrap());
            assert_close(
                &format!("{name}.grad.{param}"),
                &grad,
                &get(&format!("grad.{param}")),
                1e-4,
                1e-5,
            )
            .unwrap();
        }
        if case.training {
            for (buffer, tensor, _) in named_tensors(&layer) {
                let key = format!("{name}.state_after.{buffer}");
                if fx.has(&key) {
                    assert_close(&key, &tensor, &fx.get(&key).unwrap(), 1e-5, 1e-6).unwrap();
                }
            }
        }
    }
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape.to_vec(), 0.0, 1.0, &mut Rng::new(seed)).unwrap()
}

/// E = 1, k = 1: the layer is the replaced conv (moe.md §1.2), forward and gradients.
#[test]
fn one_expert_reproduces_the_replaced_conv() {
    // (in, out, kernel, dilation, groups, bias, input size, granularity)
    type Config = (
        usize,
        usize,
        [usize; 2],
        usize,
        usize,
        bool,
        [usize; 2],
        Granularity,
    );
    let configs: [Config; 6] = [
        (4, 6, [1, 1], 1, 1, true, [9, 9], Granularity::Grid(3)),
        (4, 6, [3, 3], 1, 1, true, [10, 11], Granularity::Grid(3)),
        (4, 4, [3, 3], 2, 1, false, [13, 8], Granularity::Grid(2)),
        (4, 6, [3, 3], 1, 2, true, [7, 9], Granularity::Grid(4)),
        (
            3,
            5,
            [3, 1],
            1,
            1,
            true,
            [8, 6],
            Granularity::PatchSize([3, 4]),
        ),
        (3, 5, [3, 3], 1, 1, true, [6, 7], Granularity::Image),
    ];
    for (i, &(cin, cout, kernel, dilation, groups, bias, [h, w], granularity)) in
        configs.iter().enumerate()
    {
        moeseg::tensor::manual_seed(i as u64);
        let padding = [
            dilation * (kernel[0] - 1) / 2,
            dilation * (kernel[0] - 1) / 2,
            dilation * (kernel[1] - 1) / 2,
            dilation * (kernel[1] - 1) / 2,
        ];
        let params = Conv2dParams {
            stride: [1, 1],
            padding,
            dilation: [dilation; 2],
            groups,
        };
        let conv = Conv2d::with_params(cin, cout, kernel, params, bias).unwrap();
        let config = PatchConvMoeConfig {
            num_experts: 1,
            k: 1,
            granularity,
            gate: GateConfig::new(GateKind::GapLinear),
            ..PatchConvMoeConfig::default()
        };
        let layer = PatchConvMoE::from_conv(&conv, config).unwrap();
        // The one expert takes the replaced conv's weights.
        for (name, p) in &named_parameters(&layer) {
            if name == "experts.0.weight" {
                p.replace_data(&conv.weight).unwrap();
            }
            if name == "experts.0.bias" {
                p.replace_data(conv.bias.as_ref().unwrap()).unwrap();
            }
        }
        let x = randn(&[2, cin, h, w], 10 + i as u64);
        let what = format!("config {i}");
        let (xa, xb) = (x.with_requires_grad(true), x.with_requires_grad(true));
        let reference = conv.forward(&xa).unwrap();
        let routed = layer.forward(&xb).unwrap();
        assert_close(&what, &routed, &reference, 1e-6, 1e-6).unwrap();
        let upstream = randn(reference.dims(), 99);
        reference
            .mul(&upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        routed
            .mul(&upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_close(
            &format!("{what} grad x"),
            &xb.grad().unwrap(),
            &xa.grad().unwrap(),
            1e-4,
            1e-5,
        )
        .unwrap();
        let layer_params = named_parameters(&layer);
        let grad_of = |key: &str| {
            layer_params
                .iter()
                .find(|(n, _)| n == key)
                .unwrap()
                .1
                .grad()
                .unwrap()
        };
        assert_close(
            &format!("{what} grad w"),
            &grad_of("experts.0.weight"),
            &conv.weight.grad().unwrap(),
            1e-4,
            1e-5,
        )
        .unwrap();
        if bias {
            assert_close(
                &format!("{what} grad b"),
                &grad_of("experts.0.bias"),
                &conv.bias.as_ref().unwrap().grad().unwrap(),
                1e-4,
                1e-5,
            )
            .unwrap();
        }
    }
}

/// `Σ out ⊙ R + alpha·L_balance` of one forward, in f64 (R fixed).
fn projected_loss(layer: &PatchConvMoE, x: &Tensor, projection: &Tensor) -> f64 {
    moeseg::no_grad(|| {
        let out = layer.forward(x).unwrap();
        let balance = layer.last_routing().unwrap().balance_loss.item().unwrap() as f64;
        let dot: f64 = out
            .to_host()
            .iter()
            .zip(projection.to_host())
            .map(|(&a, b)| a as f64 * b as f64)
            .sum();
        dot + balance
    })
}

#[test]
fn finite_differences_agree_through_gate_and_experts() {
    moeseg::tensor::manual_seed(21);
    let conv = Conv2d::new(2, 3, 3, ConvOptions::new().padding(1)).unwrap();
    let config = PatchConvMoeConfig {
        num_experts: 3,
        k: 2,
        granularity: Granularity::Grid(2),
        gate: GateConfig::new(GateKind::GapLinear),
        loss: BalanceLoss::Entropy,
        alpha: 0.5,
        ..PatchConvMoeConfig::default()
    };
    let layer = PatchConvMoE::from_conv(&conv, config).unwrap();
    set_training(&layer, false);
    // A decisive gate, so that no ±eps step flips a top-k choice.
    for (name, p) in named_parameters(&layer) {
        if name.starts_with("gate.") {
            p.replace_data(&p.mul_scalar(6.0).unwrap()).unwrap();
        }
    }
    let x = randn(&[1, 2, 5, 6], 3).with_requires_grad(true);
    let out = layer.forward(&x).unwrap();
    let projection = randn(out.dims(), 4);
    let loss = out
        .mul(&projection)
        .unwrap()
        .sum_all()
        .unwrap()
        .add(&layer.last_routing().unwrap().balance_loss)
        .unwrap();
    loss.backward().unwrap();
    let eps = 1e-2f32;
    let mut checked = 0;
    let mut targets: Vec<(String, Tensor)> = vec![("input".into(), x.clone())];
    targets.extend(named_parameters(&layer));
    for (name, tensor) in targets {
        let analytic = tensor
            .grad()
            .map(|g| g.to_host())
            .unwrap_or(vec![0.0; tensor.numel()]);
        let base = tensor.to_host();
        for j in 0..base.len() {
            let eval = |delta: f32| {
                let mut values = base.clone();
                values[j] += delta;
                tensor
                    .replace_data(&Tensor::from_vec(values, tensor.shape().clone()).unwrap())
                    .unwrap();
                projected_loss(&layer, &x, &projection)
            };
            let numeric = ((eval(eps) - eval(-eps)) / (2.0 * eps as f64)) as f32;
            tensor
                .replace_data(&Tensor::from_vec(base.clone(), tensor.shape().clone()).unwrap())
                .unwrap();
            let err = (analytic[j] - numeric).abs();
            assert!(
                err <= 2e-3 + 2e-2 * numeric.abs(),
                "d/d {name}[{j}]: autograd {} vs finite differences {numeric}",
                analytic[j]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 60 + 3 * (54 + 3) + 9);
}

#[test]
fn replacement_by_path_fixed_expert_and_reduction() {
    moeseg::tensor::manual_seed(5);
    let mut net = Sequential::default()
        .push(Conv2d::new(3, 4, 3, ConvOptions::new().stride(2).padding(1)).unwrap())
        .push(ActivationLayer::relu())
        .push(Conv2d::new(4, 4, 3, ConvOptions::new().padding(1)).unwrap());
    let config = PatchConvMoeConfig {
        num_experts: 4,
        k: 2,
        ..PatchConvMoeConfig::default()
    };
    // A stride-2 conv and a non-conv are refused with the path in the message.
    let err = replace_conv_with_moe(&mut net, "0", config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`0`") && err.contains("stride"), "{err}");
    let err = replace_conv_with_moe(&mut net, "1", config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`1`") && err.contains("ReLU"), "{err}");
    assert!(replace_conv_with_moe(&mut net, "7", config).is_err());
    replace_conv_with_moe(&mut net, "2", config).unwrap();
    let names: Vec<String> = named_parameters(&net).into_iter().map(|(n, _)| n).collect();
    assert!(
        names.contains(&"2.experts.3.weight".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"2.gate.network.0.weight".to_string()),
        "{names:?}"
    );
    let x = randn(&[2, 3, 12, 14], 1);
    let y = net.forward(&x).unwrap();
    assert_eq!(y.dims(), &[2, 4, 6, 7]);
    let loss = balance_loss(&net).unwrap().unwrap();
    assert_eq!(loss.numel(), 1);

    // Fixed expert e: the output is expert e applied as a plain conv.
    let moe = get_module(&net, "2")
        .unwrap()
        .as_any()
        .downcast_ref::<PatchConvMoE>()
        .unwrap();
    let h = net.layers[1]
        .forward(&net.layers[0].forward(&x).unwrap())
        .unwrap();
    for e in 0..4 {
        moe.set_fixed_expert(Some(e)).unwrap();
        let fixed = moe.forward(&h).unwrap();
        let plain = moe.expert(e).unwrap().forward(&h).unwrap();
        assert_close(&format!("fixed expert {e}"), &fixed, &plain, 1e-5, 1e-6).unwrap();
        let used = moe.last_routing().unwrap().indices.to_host();
        assert!(used.iter().all(|&i| i == e as f32));
    }
    assert!(moe.set_fixed_expert(Some(4)).is_err());
    moe.set_fixed_expert(None).unwrap();
}

#[test]
fn labels_reach_the_patch_grid_and_routing_stats_are_collected() {
    use moeseg::moe::{collect_routing_stats, token_class_histograms};
    use moeseg::ops::patch_grid::PatchGrid;
    // Labels 4×4 over a 2×2 feature map cut into 1×1 patches: each 2×2 label block is a token.
    #[rustfmt::skip]
    let labels = Tensor::from_vec(vec![
        0.0, 0.0, 1.0, 1.0,
        0.0, 255.0, 1.0, 2.0,
        2.0, 2.0, 0.0, 0.0,
        2.0, 2.0, 0.0, 1.0,
    ], [1, 4, 4]).unwrap();
    let grid = PatchGrid::from_grid(1, 3, 2, 2, 2, [0, 0]).unwrap();
    let hist = token_class_histograms(&labels, grid, 3).unwrap();
    #[rustfmt::skip]
    let expected = vec![
        3.0, 0.0, 0.0, // top-left: three 0s and one ignored pixel
        0.0, 3.0, 1.0, // top-right
        0.0, 0.0, 4.0, // bottom-left
        3.0, 1.0, 0.0, // bottom-right
    ];
    assert_eq!(hist.to_host(), expected);

    moeseg::tensor::manual_seed(8);
    let mut net =
        Sequential::default().push(Conv2d::new(3, 4, 3, ConvOptions::new().padding(1)).unwrap());
    let config = PatchConvMoeConfig {
        num_experts: 4,
        k: 2,
        granularity: Granularity::Grid(2),
        ..PatchConvMoeConfig::default()
    };
    replace_conv_with_moe(&mut net, "0", config).unwrap();
    let mut stats = std::collections::BTreeMap::new();
    for seed in 0..3 {
        let x = randn(&[2, 3, 8, 8], seed);
        let labels =
            Tensor::from_vec((0..128).map(|i| (i % 3) as f32).collect(), [2, 8, 8]).unwrap();
        net.forward(&x).unwrap();
        collect_routing_stats(&net, Some(&labels), 3, &mut stats).unwrap();
    }
    let report = stats["0"].report();
    assert_eq!(report.tokens, 3 * 2 * 4);
    let usage_total: f64 = report.usage.iter().sum();
    assert!((usage_total - 1.0).abs() < 1e-9, "{:?}", report.usage);
    assert!(report.nre > 0.0 && report.nre <= 1.0);
}

#[test]
fn noisy_top_k_changes_choices_in_training_only() {
    moeseg::tensor::manual_seed(3);
    let conv = Conv2d::new(4, 4, 3, ConvOptions::new().padding(1)).unwrap();
    let config = PatchConvMoeConfig {
        num_experts: 8,
        k: 2,
        granularity: Granularity::Grid(4),
        noise_std: 1.0,
        ..PatchConvMoeConfig::default()
    };
    let layer = PatchConvMoE::from_conv(&conv, config).unwrap();
    let x = randn(&[4, 4, 16, 16], 1);
    let choices = |seed: u64| {
        moeseg::tensor::manual_seed(seed);
        layer.forward(&x).unwrap();
        layer.last_routing().unwrap().indices.to_host()
    };
    set_training(&layer, true);
    let (a, b) = (choices(1), choices(2));
    assert_ne!(
        a, b,
        "noise of std 1 on 64 tokens should change some choice"
    );
    set_training(&layer, false);
    assert_eq!(choices(1), choices(2), "no noise in eval");
}

#[test]
fn copy_init_starts_every_expert_as_the_replaced_conv() {
    use moeseg::moe::ExpertInit;
    moeseg::tensor::manual_seed(4);
    let conv = Conv2d::new(3, 5, 3, ConvOptions::new().padding(1)).unwrap();
    let config = PatchConvMoeConfig {
        num_experts: 4,
        k: 2,
        init: ExpertInit::Copy { noise_std: 0.0 },
        ..PatchConvMoeConfig::default()
    };
    let layer = PatchConvMoE::from_conv(&conv, config).unwrap();
    let x = randn(&[2, 3, 9, 10], 2);
    // Identical experts and weights summing to S/(S + 1e-5): the conv's output up to ~1e-5.
    let expected = conv.forward(&x).unwrap();
    assert_close(
        "copy init",
        &layer.forward(&x).unwrap(),
        &expected,
        1e-4,
        1e-5,
    )
    .unwrap();
    let noisy = PatchConvMoE::from_conv(
        &conv,
        PatchConvMoeConfig {
            init: ExpertInit::Copy { noise_std: 0.01 },
            ..config
        },
    )
    .unwrap();
    let w0 = noisy.expert(0).unwrap().weight.to_host();
    let w1 = noisy.expert(1).unwrap().weight.to_host();
    assert_ne!(w0, w1);
    let base = conv.weight.to_host();
    assert!(w0.iter().zip(&base).all(|(a, b)| (a - b).abs() < 0.1));
}

#[test]
fn several_moe_layers_in_one_network_train_together() {
    use moeseg::ops::loss::CrossEntropyOptions;
    use moeseg::optim::{Optimizer, Sgd, SgdOptions};
    moeseg::tensor::manual_seed(12);
    let mut net = Sequential::default()
        .push(Conv2d::new(3, 8, 3, ConvOptions::new().padding(1)).unwrap())
        .push(ActivationLayer::relu())
        .push(Conv2d::new(8, 8, 3, ConvOptions::new().padding(1)).unwrap())
        .push(ActivationLayer::relu())
        .push(Conv2d::new(8, 3, 1, ConvOptions::new()).unwrap());
    for (path, granularity) in [("2", Granularity::Grid(2)), ("4", Granularity::Image)] {
        let config = PatchConvMoeConfig {
            num_experts: 4,
            k: 2,
            granularity,
            alpha: 0.1,
            ..PatchConvMoeConfig::default()
        };
        replace_conv_with_moe(&mut net, path, config).unwrap();
    }
    let mut sgd = Sgd::with_params(named_parameters(&net), SgdOptions::new(0.05)).unwrap();
    let x = randn(&[4, 3, 8, 8], 1);
    let labels =
        Tensor::from_vec((0..256).map(|i| ((i / 8) % 3) as f32).collect(), [4, 8, 8]).unwrap();
    let mut losses = Vec::new();
    for _ in 0..15 {
        let task = net
            .forward(&x)
            .unwrap()
            .cross_entropy(&labels, CrossEntropyOptions::default())
            .unwrap();
        // Both layers contribute their weighted balancing loss.
        let per_layer: Vec<f32> = ["2", "4"]
            .iter()
            .map(|p| {
                let m = get_module(&net, p)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<PatchConvMoE>()
                    .unwrap();
                m.last_routing().unwrap().balance_loss.item().unwrap()
            })
            .collect();
        let balance = balance_loss(&net).unwrap().unwrap();
        assert!((balance.item().unwrap() - per_layer.iter().sum::<f32>()).abs() < 1e-6);
        let loss = task.add(&balance).unwrap();
        losses.push(task.item().unwrap());
        loss.backward().unwrap();
        // Every expert that was routed to and both gates received gradients.
        let gate_grads = named_parameters(&net)
            .into_iter()
            .filter(|(n, _)| n.contains(".gate."))
            .filter(|(_, p)| p.grad().is_some())
            .count();
        assert!(gate_grads >= 2, "both gates get gradients");
        sgd.step().unwrap();
        sgd.zero_grad();
    }
    assert!(losses.last().unwrap() < &losses[0], "{losses:?}");
}
