//! The dynamic routing networks against the original's state-dict manifests:
//! `moeseg inspect --model dynamic16|dynamic33` equals `tests/manifests/dynamic{16,33}.tsv`
//! (copied from `../shared/manifests`, taken from the original code).

use moeseg::cli::model_tools::manifest;
use moeseg::cli::model_tools::ModelArgs;
use std::path::PathBuf;

fn args(model: &str) -> ModelArgs {
    ModelArgs {
        model: model.parse().unwrap_or_else(|e| panic!("{model}: {e}")),
        num_classes: None,
        img_size: None,
        num_experts: None,
        slots_per_expert: None,
        moe_layer_index: None,
        backbone_depth: 50,
        pspnet_dilation: Default::default(),
        moe: Vec::new(),
        experts: 8,
        k: 2,
        grid: 3,
        patch_size: None,
        gate: moeseg::moe::GateKind::TwoConvGap,
        gate_kernel: None,
        loss: moeseg::moe::BalanceLoss::Entropy,
        alpha: 1.0,
        routing: "sparse".to_string(),
    }
}

fn assert_same_manifest(model: &str) {
    let ours = manifest(&args(model)).unwrap_or_else(|e| panic!("{model}: {e}"));
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/manifests")
        .join(format!("{model}.tsv"));
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (i, (a, b)) in ours.lines().zip(expected.lines()).enumerate() {
        assert_eq!(a, b, "{model} line {}", i + 1);
    }
    assert_eq!(
        ours.lines().count(),
        expected.lines().count(),
        "{model}: lines"
    );
}

#[test]
fn dynamic16_manifest() {
    assert_same_manifest("dynamic16");
}

#[test]
fn dynamic33_manifest() {
    assert_same_manifest("dynamic33");
}

/// 5 gate tensors per node: 61 + 1 nodes in Layer16, 129 + 1 in Layer33 (the spec's 310/650).
#[test]
fn gate_parameter_counts() {
    for (model, expected) in [("dynamic16", 310), ("dynamic33", 650)] {
        let text = manifest(&args(model)).unwrap_or_else(|e| panic!("{model}: {e}"));
        let gates = text
            .lines()
            .filter(|l| {
                l.contains("gate_conv") && !l.contains("running_") && !l.contains("num_batches")
            })
            .count();
        assert_eq!(gates, expected, "{model}");
    }
}
