//! The Soft-MoE layer over tokens: parity with the reference package `soft-moe` 0.0.1
//! (`scripts/fixtures/soft_moe_vit.py`), the batched expert path against the per-expert path,
//! the package's own layer tests (`tests/test_soft_moe.py`) and the routing diagnostics against
//! vmoe's own expectations.

mod soft_moe_fixtures;

use moeseg::models::vit_blocks::Attention;
use moeseg::moe::soft_moe::{diagnostics, experts};
use moeseg::moe::{SlotSource, SoftMoE, SoftMoeConfig};
use moeseg::nn::{named_parameters, Linear, Mlp, Module};
use moeseg::ops::activation::Activation;
use moeseg::tensor::{manual_seed, with_default_rng};
use moeseg::Tensor;
use soft_moe_fixtures::{check_grads, compare, fixtures, get, load_strict};

/// Expert kinds of the fixture cases.
#[derive(Clone, Copy)]
enum Expert {
    /// `nn.Linear(8, 6)`
    Linear,
    /// timm `Mlp(8, 16)` with GELU.
    Mlp,
}

fn layer(
    n: usize,
    p: usize,
    expert: Expert,
    normalize: bool,
    slot_source: SlotSource,
    activation: Activation,
) -> SoftMoE {
    let config = SoftMoeConfig {
        normalize,
        slot_source,
        ..SoftMoeConfig::new(8, n, p)
    };
    SoftMoE::new(config, |_| {
        Ok(match expert {
            Expert::Linear => Box::new(Linear::new(8, 6, true)?) as Box<dyn Module>,
            Expert::Mlp => Box::new(Mlp::new(8, 16, 8, activation)?),
        })
    })
    .unwrap()
}

/// Loads `layer_<case>` strictly, runs forward and backward with the fixture's upstream
/// gradient on the batched and on the per-expert path, and compares output and gradients.
fn check_case(case: &str, moe: &SoftMoE) {
    let fx = fixtures();
    let case = format!("layer_{case}");
    load_strict(&fx, &case, moe);
    for generic in [false, true] {
        moe.set_generic_experts(generic);
        for (_, p) in named_parameters(moe) {
            p.clear_grad();
        }
        let input = get(&fx, &format!("{case}.input")).with_requires_grad(true);
        let out = moe.forward(&input).unwrap();
        let path = if generic { "per-expert" } else { "batched" };
        compare(
            &format!("{case} ({path}) out"),
            &out,
            &get(&fx, &format!("{case}.out")),
            1e-5,
        );
        out.mul(&get(&fx, &format!("{case}.grad_out")))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        compare(
            &format!("{case} ({path}) grad input"),
            &input.grad().unwrap(),
            &get(&fx, &format!("{case}.grad_input")),
            1e-4,
        );
        check_grads(&fx, &case, moe, 1e-4);
    }
}

#[test]
fn linear_experts_match_the_package() {
    let moe = layer(
        4,
        2,
        Expert::Linear,
        true,
        SlotSource::Normalized,
        Activation::Relu,
    );
    assert!(moe.scale.is_some());
    check_case("linear", &moe);
}

#[test]
fn linear_experts_without_normalisation_match_the_package() {
    let moe = layer(
        4,
        2,
        Expert::Linear,
        false,
        SlotSource::Normalized,
        Activation::Relu,
    );
    assert!(
        moe.scale.is_none(),
        "normalize = false has no scale, as in the package"
    );
    check_case("linear_nonorm", &moe);
}

#[test]
fn slots_from_raw_tokens_match_the_papers_router() {
    let moe = layer(
        4,
        2,
        Expert::Linear,
        true,
        SlotSource::Raw,
        Activation::Relu,
    );
    check_case("linear_raw", &moe);
}

#[test]
fn mlp_experts_match_the_package() {
    let moe = layer(
        3,
        2,
        Expert::Mlp,
        true,
        SlotSource::Normalized,
        Activation::Gelu,
    );
    check_case("mlp", &moe);
}

#[test]
fn mlp_experts_without_normalisation_match_the_package() {
    let moe = layer(
        3,
        1,
        Expert::Mlp,
        false,
        SlotSource::Normalized,
        Activation::Gelu,
    );
    check_case("mlp_nonorm", &moe);
}

#[test]
fn the_slot_source_changes_the_output() {
    manual_seed(5);
    let normalized = layer(
        4,
        2,
        Expert::Linear,
        true,
        SlotSource::Normalized,
        Activation::Relu,
    );
    let raw = layer(
        4,
        2,
        Expert::Linear,
        true,
        SlotSource::Raw,
        Activation::Relu,
    );
    for ((_, dst), (_, src)) in named_parameters(&raw)
        .iter()
        .zip(named_parameters(&normalized))
    {
        dst.replace_data(&src).unwrap();
    }
    // Tokens far from unit norm: mixing raw or normalised tokens differs.
    let x = with_default_rng(|rng| Tensor::randn([2, 7, 8], 0.0, 3.0, rng)).unwrap();
    let a = normalized.forward(&x).unwrap().try_to_vec().unwrap();
    let b = raw.forward(&x).unwrap().try_to_vec().unwrap();
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(
        diff > 1e-3,
        "raw and normalised slot sources agree ({diff})"
    );
}

#[test]
fn the_expert_count_is_checked() {
    let err = SoftMoE::with_experts(SoftMoeConfig::new(8, 3, 1), Vec::new()).err();
    assert!(err.is_some_and(|e| e.to_string().contains("0 experts given")));
}

#[test]
fn batched_experts_equal_per_expert_experts() {
    manual_seed(7);
    for activation in [Activation::Tanh, Activation::Relu] {
        let moe = layer(5, 3, Expert::Mlp, true, SlotSource::Normalized, activation);
        let x = with_default_rng(|rng| Tensor::randn([3, 11, 8], 0.0, 1.0, rng))
            .unwrap()
            .with_requires_grad(true);
        let mut results = Vec::new();
        for generic in [false, true] {
            moe.set_generic_experts(generic);
            for (_, p) in named_parameters(&moe) {
                p.clear_grad();
            }
            x.clear_grad();
            let out = moe.forward(&x).unwrap();
            out.square().unwrap().sum_all().unwrap().backward().unwrap();
            let mut grads = vec![("out".to_string(), out.detach())];
            grads.push(("input".to_string(), x.grad().unwrap()));
            for (name, p) in named_parameters(&moe) {
                grads.push((name, p.grad().unwrap()));
            }
            results.push(grads);
        }
        for ((name, batched), (_, generic)) in results[0].iter().zip(&results[1]) {
            compare(
                &format!("batched vs per-expert {name}"),
                batched,
                generic,
                1e-5,
            );
        }
    }
}

/// `tests/test_soft_moe.py::test_soft_moe_layer_forward`, Linear experts: shape `[1, n, 32]`,
/// no NaN, for 1 and 4 experts, 1 and 2 slots, dims 16 and 128, token counts in 1..=128.
#[test]
fn package_test_linear_experts_forward() {
    manual_seed(11);
    let mut token_counts = [1usize, 37, 128, 5, 64, 2, 100, 17].into_iter().cycle();
    for num_experts in [1, 4] {
        for slots in [1, 2] {
            for dim in [16, 128] {
                let moe = SoftMoE::new(SoftMoeConfig::new(dim, num_experts, slots), |_| {
                    Ok(Box::new(Linear::new(dim, 32, true)?) as Box<dyn Module>)
                })
                .unwrap();
                let m = token_counts.next().unwrap();
                let x = with_default_rng(|rng| Tensor::randn([1, m, dim], 0.0, 1.0, rng)).unwrap();
                let out = moe.forward(&x).unwrap();
                assert_eq!(out.dims(), &[1, m, 32]);
                assert!(out.try_to_vec().unwrap().iter().all(|v| v.is_finite()));
            }
        }
    }
}

/// `test_soft_moe_layer_forward`, attention experts (timm's `Attention(dim)`: 8 heads, no qkv
/// bias): shape `[1, n, dim]`, no NaN. Each expert attends over its own p slots.
#[test]
fn package_test_attention_experts_forward() {
    manual_seed(12);
    let mut token_counts = [3usize, 128, 1, 50, 77, 9, 128, 31].into_iter().cycle();
    for num_experts in [1, 4] {
        for slots in [1, 2] {
            for dim in [16, 128] {
                let moe = SoftMoE::new(SoftMoeConfig::new(dim, num_experts, slots), |_| {
                    Ok(Box::new(Attention::new(dim, 8, false)?) as Box<dyn Module>)
                })
                .unwrap();
                assert!(experts::StackedExperts::detect(&moe.experts).is_none());
                let m = token_counts.next().unwrap();
                let x = with_default_rng(|rng| Tensor::randn([1, m, dim], 0.0, 1.0, rng)).unwrap();
                let out = moe.forward(&x).unwrap();
                assert_eq!(out.dims(), &[1, m, dim]);
                assert!(out.try_to_vec().unwrap().iter().all(|v| v.is_finite()));
            }
        }
    }
}

/// `test_soft_moe_layer_input_wrong_features_channels` and `..._wrong_dim`: errors, not panics.
#[test]
fn package_test_wrong_inputs_are_errors() {
    let moe = SoftMoE::new(SoftMoeConfig::new(128, 16, 1), |_| {
        Ok(Box::new(Linear::new(128, 32, true)?) as Box<dyn Module>)
    })
    .unwrap();
    for dims in [vec![1, 16, 64], vec![1, 16, 64, 64], vec![1, 16]] {
        let x = Tensor::zeros(dims.clone(), &Default::default()).unwrap();
        let err = moe.forward(&x).unwrap_err().to_string();
        assert!(err.contains("128"), "input {dims:?}: {err}");
    }
}

#[test]
fn parameters_are_named_and_initialised_as_in_the_package() {
    manual_seed(3);
    let d = 256;
    let moe = SoftMoE::new(SoftMoeConfig::new(d, 32, 4), |_| {
        Ok(Box::new(Linear::new(d, 8, true)?) as Box<dyn Module>)
    })
    .unwrap();
    let names: Vec<String> = named_parameters(&moe).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        &names[..4],
        ["phi", "scale", "experts.0.weight", "experts.0.bias"]
    );
    assert_eq!(moe.phi.dims(), &[d, 32, 4]);
    assert_eq!(moe.scale.as_ref().unwrap().try_to_vec().unwrap(), vec![1.0]);
    let phi = moe.phi.try_to_vec().unwrap();
    let var = phi.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / phi.len() as f64;
    // N(0, 1/d): variance 1/256 within a few percent for 32768 samples.
    assert!((var * d as f64 - 1.0).abs() < 0.05, "phi variance {var}");
}

/// vmoe's `router_test.py::test_metrics` inputs and expected values, in our layout (the
/// dispatch and combine weights of one group, `[1, m, n·p]`, and `mu` as `phi` `[d, n, p]`).
#[test]
fn diagnostics_reproduce_vmoes_metric_test() {
    #[rustfmt::skip]
    let x = vec![
        1.0, 0.0, 0.0, 1.0, 0.0, 0.0,
        0.0, 0.0, 1.0, 0.0, 0.0, 0.0,
        0.0, 1.0, 0.0, 0.0, 1.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 1.0,
    ];
    let weights = Tensor::from_vec(x, [1, 4, 6]).unwrap();
    #[rustfmt::skip]
    let mu = Tensor::from_vec(
        vec![1.0, 0.0, 2.0, 1.0, -1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0],
        [2, 3, 2],
    )
    .unwrap();
    let m = diagnostics::compute(&weights, &weights, &mu, 3).unwrap();
    let close = |a: f64, b: f64, what: &str| assert!((a - b).abs() < 1e-6, "{what}: {a} vs {b}");
    close(m.combine_min_mean, 0.0, "combine min");
    close(m.combine_max_mean, 1.0, "combine max");
    close(m.dispatch_min_mean, 0.0, "dispatch min");
    close(m.dispatch_max_mean, 1.0, "dispatch max");
    close(m.combine_similarity.min, 0.0, "combine sim min");
    close(m.combine_similarity.max, 0.0, "combine sim max");
    close(m.combine_similarity.mean, 0.0, "combine sim mean");
    close(m.dispatch_similarity.min, 0.0, "dispatch sim min");
    close(m.dispatch_similarity.max, 1.0, "dispatch sim max");
    close(m.dispatch_similarity.mean, 4.0 / 30.0, "dispatch sim mean");
    close(m.phi_similarity.min, -1.0, "phi sim min");
    close(m.phi_similarity.max, 1.0, "phi sim max");
    close(
        m.phi_similarity.mean,
        (1.0 / 2f64.sqrt() - 2.0) / 15.0,
        "phi sim mean",
    );
}

/// A zero router gives uniform routing: dispatch weights 1/m, combine weights 1/s, every
/// weight vector identical (similarity 1); recorded by the layer's forward.
#[test]
fn the_layer_records_diagnostics_of_uniform_routing() {
    manual_seed(2);
    let moe = layer(
        4,
        2,
        Expert::Linear,
        true,
        SlotSource::Normalized,
        Activation::Relu,
    );
    moe.phi
        .replace_data(&moe.phi.zeros_like().unwrap())
        .unwrap();
    let x = with_default_rng(|rng| Tensor::randn([2, 5, 8], 0.0, 1.0, rng)).unwrap();
    moe.forward(&x).unwrap();
    assert!(
        moe.last_diagnostics().is_none(),
        "recording is off by default"
    );
    moe.set_record_diagnostics(true);
    moe.forward(&x).unwrap();
    let m = moe.last_diagnostics().unwrap();
    assert_eq!((m.batch, m.tokens, m.slots), (2, 5, 8));
    for (v, e) in [
        (m.dispatch_min_mean, 0.2),
        (m.dispatch_max_mean, 0.2),
        (m.combine_min_mean, 0.125),
        (m.combine_max_mean, 0.125),
        (m.combine_similarity.min, 1.0),
        (m.dispatch_similarity.mean, 1.0),
        (m.phi_similarity.max, 0.0),
    ] {
        assert!((v - e).abs() < 1e-5, "{m:?}");
    }
}

/// Merging the diagnostics of two forwards: means weighted by images, overall extremes.
#[test]
fn diagnostics_merge_weights_by_images() {
    use moeseg::moe::soft_moe::Similarity;
    let one = |batch, value: f64, sim: Similarity| diagnostics::SoftRoutingDiagnostics {
        batch,
        tokens: 5,
        slots: 4,
        dispatch_min_mean: value,
        dispatch_max_mean: value,
        combine_min_mean: value,
        combine_max_mean: value,
        combine_similarity: sim,
        dispatch_similarity: sim,
        phi_similarity: sim,
    };
    let a_sim = Similarity {
        min: 0.2,
        max: 0.5,
        mean: 0.3,
    };
    let b_sim = Similarity {
        min: 0.1,
        max: 0.4,
        mean: 0.6,
    };
    let mut merged = one(1, 0.1, a_sim);
    merged.merge(&one(3, 0.5, b_sim));
    assert_eq!(merged.batch, 4);
    assert!((merged.dispatch_min_mean - 0.4).abs() < 1e-12);
    assert!((merged.combine_similarity.min - 0.1).abs() < 1e-12);
    assert!((merged.combine_similarity.max - 0.5).abs() < 1e-12);
    assert!((merged.combine_similarity.mean - 0.525).abs() < 1e-12);
    assert_eq!(merged.phi_similarity, b_sim, "the latest router");
}
