//! The six networks against the spec's manifests: state-dict keys, shapes, dtypes and order
//! (`moeseg inspect` output equals `tests/manifests/<net>[-moe].tsv`, copied from
//! `../shared/manifests`), and parameter / MAC counts equal `tests/manifests/summary.md`.

use moeseg::cli::model_tools::{manifest, ModelArgs};
use moeseg::models::{build, complexity, place_moe, ModelConfig, ModelName, MoePlacement};
use moeseg::moe::{BalanceLoss, GateKind};
use std::path::PathBuf;

fn args(model: ModelName, moe: bool) -> ModelArgs {
    ModelArgs {
        model: model.into(),
        num_classes: None,
        img_size: None,
        num_experts: None,
        slots_per_expert: None,
        moe_layer_index: None,
        backbone_depth: 50,
        pspnet_dilation: Default::default(),
        moe: if moe {
            vec!["default".to_string()]
        } else {
            Vec::new()
        },
        experts: 8,
        k: 2,
        grid: 3,
        patch_size: None,
        gate: GateKind::TwoConvGap,
        gate_kernel: None,
        loss: BalanceLoss::Entropy,
        alpha: 1.0,
        routing: "sparse".to_string(),
    }
}

fn manifest_file(model: ModelName, moe: bool) -> String {
    let name = format!("{}{}.tsv", model, if moe { "-moe" } else { "" });
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/manifests")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Compares line by line so a failure names the first differing key.
fn assert_same_manifest(model: ModelName, moe: bool) {
    let ours = manifest(&args(model, moe)).unwrap_or_else(|e| panic!("{model}: {e}"));
    let expected = manifest_file(model, moe);
    for (i, (a, b)) in ours.lines().zip(expected.lines()).enumerate() {
        assert_eq!(a, b, "{model} (moe: {moe}) line {}", i + 1);
    }
    assert_eq!(
        ours.lines().count(),
        expected.lines().count(),
        "{model} (moe: {moe}): number of lines"
    );
}

macro_rules! manifest_tests {
    ($($name:ident: $model:expr,)*) => {$(
        #[test]
        fn $name() {
            assert_same_manifest($model, false);
            assert_same_manifest($model, true);
        }
    )*};
}

manifest_tests! {
    enet_manifest: ModelName::Enet,
    erfnet_manifest: ModelName::Erfnet,
    unet_manifest: ModelName::Unet,
    lraspp_manifest: ModelName::Lraspp,
    deeplabv3plus_manifest: ModelName::Deeplabv3plus,
    pspnet_manifest: ModelName::Pspnet,
}

/// `(total, active, MACs)` at 1×3×512×1024 from summary.md: baseline, then with the default MoE.
fn check_counts(model: ModelName, baseline: (u64, u64), with_moe: (u64, u64, u64)) {
    let config = ModelConfig::default();
    let net = build(model, &config).unwrap();
    let counts = complexity(net.as_ref(), [1, 3, 512, 1024]).unwrap();
    assert_eq!(
        (counts.total_params, counts.active_params, counts.macs),
        (baseline.0, baseline.0, baseline.1),
        "{model} baseline (total params, active params, MACs)"
    );
    let mut net = build(model, &config).unwrap();
    place_moe(net.as_mut(), &[MoePlacement::default_for(model)]).unwrap();
    let counts = complexity(net.as_ref(), [1, 3, 512, 1024]).unwrap();
    assert_eq!(
        (counts.total_params, counts.active_params, counts.macs),
        with_moe,
        "{model} with the default MoE (total params, active params, MACs)"
    );
}

#[test]
fn enet_counts() {
    check_counts(
        ModelName::Enet,
        (351_660, 4_037_410_816),
        (352_780, 351_916, 4_069_807_936),
    );
}

#[test]
fn erfnet_counts() {
    check_counts(
        ModelName::Erfnet,
        (2_066_642, 26_604_339_200),
        (2_072_338, 2_067_634, 26_732_680_832),
    );
}

#[test]
fn unet_counts() {
    check_counts(
        ModelName::Unet,
        (31_038_803, 385_943_076_864),
        (31_297_443, 31_076_259, 405_730_082_304),
    );
}

#[test]
fn lraspp_counts() {
    check_counts(
        ModelName::Lraspp,
        (3_221_198, 3_944_947_584),
        (3_239_459, 3_224_753, 3_975_699_968),
    );
}

#[test]
fn deeplabv3plus_counts() {
    check_counts(
        ModelName::Deeplabv3plus,
        (40_351_667, 138_429_333_504),
        (44_482_563, 40_943_619, 158_438_297_088),
    );
}

#[test]
fn pspnet_counts() {
    check_counts(
        ModelName::Pspnet,
        (48_956_262, 354_089_435_136),
        (49_028_667, 48_970_185, 354_210_809_984),
    );
}

#[test]
fn unknown_network_and_bad_path_are_clear_errors() {
    let err = "resnet".parse::<ModelName>().unwrap_err().to_string();
    assert!(
        err.contains("resnet") && err.contains("deeplabv3plus"),
        "{err}"
    );
}
