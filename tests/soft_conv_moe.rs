//! SoftConvMoE (soft routing of PatchConvMoE's patch tokens): parity with the PyTorch reference
//! in `scripts/fixtures/soft_conv_moe.py` (forward, dispatch/combine weights, every gradient),
//! the exact reduction to the replaced conv, and its use in the networks by configuration.

use moeseg::models::{build, complexity, ModelConfig, ModelName};
use moeseg::moe::{
    replace_conv_with_soft_moe, ExpertInit, Granularity, SoftConvMoE, SoftConvMoeConfig,
    SoftRouting, SoftRoutingLayer,
};
use moeseg::nn::{get_module, named_parameters, named_tensors, Conv2d, Module};
use moeseg::ops::conv::Conv2dParams;
use moeseg::testing::{assert_close, Fixtures};
use moeseg::{Rng, Tensor};

struct Case {
    name: &'static str,
    experts: usize,
    slots: usize,
    granularity: Granularity,
    kernel: [usize; 2],
    dilation: usize,
    groups: usize,
    normalize: bool,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "normalized",
            experts: 3,
            slots: 2,
            granularity: Granularity::Grid(3),
            kernel: [3, 3],
            dilation: 1,
            groups: 1,
            normalize: true,
        },
        Case {
            name: "raw",
            experts: 2,
            slots: 2,
            granularity: Granularity::Grid(2),
            kernel: [3, 3],
            dilation: 2,
            groups: 2,
            normalize: false,
        },
        Case {
            name: "patch",
            experts: 2,
            slots: 3,
            granularity: Granularity::PatchSize([4, 5]),
            kernel: [1, 3],
            dilation: 1,
            groups: 1,
            normalize: true,
        },
    ]
}

fn layer_for(fx: &Fixtures, case: &Case) -> SoftConvMoE {
    let get = |key: &str| fx.get(&format!("{}.{key}", case.name)).unwrap();
    let (input, weight) = (get("input"), get("state.experts.0.weight"));
    let halo = |axis: usize| case.dilation * (case.kernel[axis] - 1) / 2;
    let params = Conv2dParams {
        padding: [halo(0), halo(0), halo(1), halo(1)],
        ..Conv2dParams::new(1, 0, case.dilation, case.groups)
    };
    let bias = fx.has(&format!("{}.state.experts.0.bias", case.name));
    let conv =
        Conv2d::with_params(input.dims()[1], weight.dims()[0], case.kernel, params, bias).unwrap();
    let config = SoftConvMoeConfig {
        num_experts: case.experts,
        slots_per_expert: case.slots,
        granularity: case.granularity,
        normalize: case.normalize,
        init: ExpertInit::KaimingNormal,
    };
    let layer = SoftConvMoE::from_conv(&conv, config).unwrap();
    for (name, tensor, _) in named_tensors(&layer) {
        tensor.replace_data(&get(&format!("state.{name}"))).unwrap();
    }
    layer
}

#[test]
fn every_fixture_case_matches_the_pytorch_reference() {
    let fx = Fixtures::load("soft_conv_moe").unwrap();
    for case in cases() {
        let name = case.name;
        let get = |key: &str| fx.get(&format!("{name}.{key}")).unwrap();
        let layer = layer_for(&fx, &case);
        let keys: Vec<String> = named_parameters(&layer).into_iter().map(|p| p.0).collect();
        assert_eq!(keys[0], "phi", "{name}: the package's registration order");
        assert_eq!(
            keys.contains(&"scale".to_string()),
            case.normalize,
            "{name}"
        );
        let input = get("input").with_requires_grad(true);
        let out = layer.forward(&input).unwrap();
        assert_close(&format!("{name}.out"), &out, &get("out"), 1e-4, 1e-5).unwrap();
        let routing = layer.last_routing().unwrap();
        assert_close(
            &format!("{name}.dispatch"),
            &routing.dispatch,
            &get("dispatch"),
            1e-4,
            1e-6,
        )
        .unwrap();
        assert_close(
            &format!("{name}.combine"),
            &routing.combine,
            &get("combine"),
            1e-4,
            1e-6,
        )
        .unwrap();
        out.mul(&get("grad_out"))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_close(
            &format!("{name}.grad.input"),
            &input.grad().unwrap(),
            &get("grad.input"),
            1e-3,
            1e-5,
        )
        .unwrap();
        for (param, tensor) in named_parameters(&layer) {
            assert_close(
                &format!("{name}.grad.{param}"),
                &tensor.grad().unwrap(),
                &get(&format!("grad.{param}")),
                1e-3,
                1e-5,
            )
            .unwrap();
        }
    }
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    Tensor::randn(shape.to_vec(), 0.0, 1.0, &mut rng).unwrap()
}

/// Identity dispatch and combine weights `[batch, m, m]`.
fn identity(batch: usize, m: usize) -> Tensor {
    let mut data = vec![0.0; batch * m * m];
    for b in 0..batch {
        for i in 0..m {
            data[(b * m + i) * m + i] = 1.0;
        }
    }
    Tensor::from_vec(data, [batch, m, m]).unwrap()
}

#[test]
fn one_expert_with_identity_routing_is_the_replaced_conv() {
    // 3×3 dilated conv, 11×14 map, 3×3 grid: 9 patches, one expert with 9 slots (slot s =
    // patch s through the test hook), expert = the conv's weights exactly.
    let params = Conv2dParams::new(1, 2, 2, 1);
    let conv = Conv2d::with_params(5, 6, [3, 3], params, true).unwrap();
    let config = SoftConvMoeConfig {
        num_experts: 1,
        slots_per_expert: 9,
        granularity: Granularity::Grid(3),
        normalize: true,
        init: ExpertInit::Copy { noise_std: 0.0 },
    };
    let layer = SoftConvMoE::from_conv(&conv, config).unwrap();
    let x = randn(&[2, 5, 11, 14], 3);
    let expected = conv.forward(&x).unwrap();
    layer.set_routing_override(Some(SoftRouting {
        dispatch: identity(2, 9),
        combine: identity(2, 9),
    }));
    layer.diagnostics().set_recording(true);
    let got = layer.forward(&x).unwrap();
    assert_close("identity routing", &got, &expected, 1e-5, 1e-6).unwrap();
    // Hand-derived diagnostics of one-hot routing: each slot copies one token and each token
    // takes one slot (min weight 0, max 1), and distinct tokens' combine vectors are orthogonal.
    let d = layer.diagnostics().last().unwrap();
    assert_eq!((d.batch, d.tokens, d.slots), (2, 9, 9));
    assert_eq!([d.dispatch_min_mean, d.dispatch_max_mean], [0.0, 1.0]);
    assert_eq!([d.combine_min_mean, d.combine_max_mean], [0.0, 1.0]);
    assert!(d.combine_similarity.max.abs() < 1e-9, "{d:?}");
    layer.diagnostics().set_recording(false);
    // A wrong-shaped override is a clear error, not a silent use.
    layer.set_routing_override(Some(SoftRouting {
        dispatch: identity(2, 4),
        combine: identity(2, 4),
    }));
    let err = layer.forward(&x).unwrap_err().to_string();
    assert!(err.contains("routing override"), "{err}");
    // Without the hook the router mixes patches: the output differs from the conv.
    layer.set_routing_override(None);
    let mixed = layer.forward(&x).unwrap();
    assert!(assert_close("router", &mixed, &expected, 1e-3, 1e-4).is_err());
}

#[test]
fn soft_routing_goes_into_every_network_by_path() {
    let config = ModelConfig {
        num_classes: 5,
        backbone_depth: 50,
        ..ModelConfig::default()
    };
    for name in [
        ModelName::Enet,
        ModelName::Erfnet,
        ModelName::Unet,
        ModelName::Lraspp,
        ModelName::Deeplabv3plus,
        ModelName::Pspnet,
    ] {
        let mut net = build(name, &config).unwrap();
        let path = name.default_moe_path();
        let soft = SoftConvMoeConfig {
            num_experts: 4,
            slots_per_expert: 2,
            ..SoftConvMoeConfig::default()
        };
        replace_conv_with_soft_moe(&mut *net as &mut dyn Module, path, soft).unwrap();
        let root: &dyn Module = &*net;
        let layer = get_module(root, path).unwrap();
        assert_eq!(layer.type_name(), "SoftConvMoE", "{name}");
        let keys: Vec<String> = named_parameters(root).into_iter().map(|p| p.0).collect();
        for key in ["phi", "scale", "experts.0.weight", "experts.3.weight"] {
            assert!(
                keys.contains(&format!("{path}.{key}")),
                "{name}: {path}.{key}"
            );
        }
        let counts = complexity(root, [1, 3, 64, 128]).unwrap();
        assert_eq!(
            counts.total_params, counts.active_params,
            "{name}: every slot runs"
        );
        assert!(counts.macs > 0);
    }
    // Not a conv: a clear error naming the path.
    let mut net = build(ModelName::Enet, &config).unwrap();
    let err = replace_conv_with_soft_moe(
        &mut *net as &mut dyn Module,
        "initial_block",
        SoftConvMoeConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("initial_block"), "{err}");
}
