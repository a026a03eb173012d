//! The dynamic routing network against the PyTorch reference of a reduced routing space
//! (`scripts/fixtures/dynamic_routing.py`, written from the original's definitions: 4 layers,
//! 16 base channels, small gate, 2×3×128×128): eval and train logits, gate values, expected and
//! real FLOPs, the budget loss, and the gradient of every parameter; then the per-image skipping
//! eval forward against the dense one.

use moeseg::models::dynamic::network::NodeAlphas;
use moeseg::models::dynamic::{BudgetConfig, DynamicConfig, DynamicNet4Seg};
use moeseg::nn::{named_parameters, named_tensors, set_training, Module, Role};
use moeseg::ops::loss::CrossEntropyOptions;
use moeseg::testing::{assert_close, Fixtures};
use moeseg::Tensor;

fn reduced_config() -> DynamicConfig {
    DynamicConfig {
        layers: 4,
        channels: 16,
        num_classes: 5,
        small_gate: true,
        gate_bias: 1.5,
    }
}

fn budget() -> BudgetConfig {
    BudgetConfig {
        constrain: true,
        loss_weight: 0.8,
        mu: 0.1,
        flops_all: 50.0,
        unupdate_rate: 0.4,
        warm_up: true,
    }
}

const STEP_RATE: f64 = 0.41;

fn loaded(fx: &Fixtures) -> DynamicNet4Seg {
    let net = DynamicNet4Seg::new(reduced_config()).unwrap();
    let ours = named_tensors(&net);
    for (name, tensor, _) in &ours {
        let value = fx.get(&format!("state.{name}")).unwrap();
        tensor
            .replace_data(&value)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    net
}

fn alpha_key(node: &NodeAlphas) -> String {
    match node.layer {
        None => "init".to_string(),
        Some(i) => format!("{i}.{}", node.scale),
    }
}

fn check_alphas(fx: &Fixtures, mode: &str, nodes: &[NodeAlphas]) {
    let mut checked = 0;
    for node in nodes {
        let key = format!("{mode}.alpha.{}", alpha_key(node));
        if fx.has(&key) {
            assert_close(&key, &node.alphas, &fx.get(&key).unwrap(), 1e-4, 1e-5).unwrap();
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        nodes.len(),
        "{mode}: every node's alphas have a reference"
    );
}

/// `|a − e| ≤ rel·(|e| + max|e|) + 1e-6`: relative to each element and to the tensor's scale
/// (float rounding of a sum is relative to its largest terms, not to a small result).
fn close_scaled(what: &str, actual: &Tensor, expected: &Tensor, rel: f32) {
    let scale = expected
        .try_to_vec()
        .unwrap()
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()));
    assert_close(what, actual, expected, rel, rel * scale + 1e-6).unwrap();
}

#[test]
fn state_dict_keys_match_the_reference() {
    let fx = Fixtures::load("dynamic_routing").unwrap();
    let net = DynamicNet4Seg::new(reduced_config()).unwrap();
    let ours: Vec<String> = named_tensors(&net).into_iter().map(|(n, _, _)| n).collect();
    for name in &ours {
        assert!(
            fx.has(&format!("state.{name}")),
            "{name} is not in the reference"
        );
    }
    let count = fx.get("state_count").unwrap().item().unwrap();
    assert_eq!(ours.len(), count as usize, "number of state-dict entries");
}

#[test]
fn eval_forward_matches_reference() {
    let fx = Fixtures::load("dynamic_routing").unwrap();
    let net = loaded(&fx);
    set_training(&net, false);
    let input = fx.get("input").unwrap();
    net.set_skip_in_eval(false);
    let dense = net.forward(&input).unwrap();
    close_scaled(
        "dense eval",
        &dense,
        &fx.get("eval_dense.logits").unwrap(),
        1e-4,
    );
    net.set_skip_in_eval(true);
    {
        let (logits, record) = net.forward_routed(&input).unwrap();
        let what = "skipping eval";
        close_scaled(what, &logits, &fx.get("eval.logits").unwrap(), 1e-4);
        assert_close(
            &format!("{what} expected FLOPs"),
            &record.expected,
            &fx.get("eval.expected_flops").unwrap(),
            1e-4,
            1e-5,
        )
        .unwrap();
        check_alphas(&fx, "eval", &record.alphas);
    }
}

#[test]
fn train_forward_loss_and_gradients_match_reference() {
    let fx = Fixtures::load("dynamic_routing").unwrap();
    let net = loaded(&fx);
    set_training(&net, true);
    let input = fx.get("input").unwrap();
    let target = fx.get("target").unwrap();
    let (logits, record) = net.forward_routed(&input).unwrap();
    close_scaled(
        "train logits",
        &logits,
        &fx.get("train.logits").unwrap(),
        1e-4,
    );
    assert_close(
        "train expected FLOPs",
        &record.expected,
        &fx.get("train.expected_flops").unwrap(),
        1e-4,
        1e-5,
    )
    .unwrap();
    let real = Tensor::from_vec(record.real.iter().map(|&v| v as f32).collect(), [2]).unwrap();
    assert_close(
        "train real FLOPs",
        &real,
        &fx.get("train.real_flops").unwrap(),
        1e-4,
        1e-5,
    )
    .unwrap();
    check_alphas(&fx, "train", &record.alphas);
    let ce = logits
        .cross_entropy(&target, CrossEntropyOptions::default())
        .unwrap();
    let budget = budget().loss(&record.expected, STEP_RATE).unwrap().unwrap();
    assert_close(
        "budget",
        &budget.reshape(&[1]).unwrap(),
        &fx.get("train.budget").unwrap(),
        1e-4,
        1e-7,
    )
    .unwrap();
    let loss = ce.add(&budget).unwrap();
    assert_close(
        "loss",
        &loss.reshape(&[1]).unwrap(),
        &fx.get("train.loss").unwrap(),
        1e-4,
        1e-6,
    )
    .unwrap();
    loss.backward().unwrap();
    let params = named_parameters(&net);
    assert!(params.len() > 100);
    for (name, p) in &params {
        let grad = p.grad().unwrap_or_else(|| panic!("{name}: no gradient"));
        let expected = fx.get(&format!("grad.{name}")).unwrap();
        close_scaled(&format!("grad {name}"), &grad, &expected, 1e-3);
    }
    for (name, tensor, role) in named_tensors(&net) {
        if role != Role::Parameter && name.contains("running") {
            assert_close(
                &name,
                &tensor,
                &fx.get(&format!("buffers.{name}")).unwrap(),
                1e-4,
                1e-5,
            )
            .unwrap();
        }
    }
}
