//! ENet (davidtvs/PyTorch-ENet): state-dict keys, shapes, order and dtypes against
//! `tests/manifests/enet.tsv` and `enet-moe.tsv`.

use moeseg::models::{self, ModelConfig, ModelName};
use moeseg::moe::patch_conv_moe::{replace_conv_with_moe, PatchConvMoeConfig};
use moeseg::nn::{named_tensors, Module, Role};
use moeseg::{DType, Tensor};
use std::path::Path;

/// `(key, shape, dtype)` rows of a manifest, in order.
fn manifest(name: &str) -> Vec<(String, Vec<usize>, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/manifests")
        .join(format!("{name}.tsv"));
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 3, "{}: bad line `{line}`", path.display());
            let dims = fields[1].trim_matches(|c| c == '[' || c == ']');
            let shape = dims
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.parse().unwrap())
                .collect();
            (fields[0].to_string(), shape, fields[2].to_string())
        })
        .collect()
}

/// The module's `(key, shape, dtype)` rows in state-dict order.
fn entries(module: &dyn Module) -> Vec<(String, Vec<usize>, String)> {
    named_tensors(module)
        .into_iter()
        .map(|(key, tensor, role)| {
            let dtype = match role {
                Role::Buffer(DType::I64) => "int64",
                Role::Buffer(DType::F32) | Role::Parameter => "float32",
                Role::Buffer(other) => panic!("{key}: unexpected buffer dtype {other:?}"),
            };
            (key, tensor.dims().to_vec(), dtype.to_string())
        })
        .collect()
}

fn assert_matches_manifest(module: &dyn Module, name: &str) {
    let expected = manifest(name);
    let actual = entries(module);
    for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
        assert_eq!(a, e, "{name}: entry {i} differs");
    }
    assert_eq!(actual.len(), expected.len(), "{name}: number of entries");
}

fn enet() -> Box<dyn models::SegNet> {
    models::build(ModelName::Enet, &ModelConfig::default()).unwrap()
}

#[test]
fn state_dict_matches_manifest() {
    assert_matches_manifest(enet().as_ref(), "enet");
}

#[test]
fn moe_state_dict_matches_manifest() {
    let mut net = enet();
    let path = ModelName::Enet.default_moe_path();
    replace_conv_with_moe(net.as_mut(), path, PatchConvMoeConfig::default()).unwrap();
    assert_matches_manifest(net.as_ref(), "enet-moe");
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
    moeseg::nn::set_training(net.as_ref(), false);
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
