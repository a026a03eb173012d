//! ERFNet, U-Net and LR-ASPP: state-dict keys, shapes, order and dtypes against the manifests
//! (`tests/manifests/<net>{,-moe}.tsv`, written from the PyTorch originals), and the eval
//! logits of each network (or, where the whole net's weights are too large for a fixture, of
//! its blocks) against PyTorch with the same weights (`scripts/fixtures/nets_a.py`).

use moeseg::models::{self, ModelConfig, ModelName};
use moeseg::moe::patch_conv_moe::{replace_conv_with_moe, PatchConvMoeConfig};
use moeseg::nn::{named_tensors, parameter_count, Module, Role};
use moeseg::DType;
use std::path::Path;

/// One manifest row: key, shape, dtype name (`float32`, `int64`).
type Row = (String, Vec<usize>, String);

/// The rows and the `# total_params` line of `tests/manifests/<name>.tsv`.
fn manifest(name: &str) -> (Vec<Row>, usize) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/manifests")
        .join(format!("{name}.tsv"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut rows = Vec::new();
    let mut total = None;
    for line in text.lines() {
        if let Some(count) = line.strip_prefix("# total_params ") {
            total = Some(count.trim().parse().unwrap());
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 3, "{name}: bad row `{line}`");
        let dims = fields[1].trim_matches(|c| c == '[' || c == ']');
        let shape = dims
            .split(',')
            .filter(|d| !d.is_empty())
            .map(|d| d.parse().unwrap())
            .collect();
        rows.push((fields[0].to_string(), shape, fields[2].to_string()));
    }
    (rows, total.unwrap())
}

/// The module's state dict as manifest rows.
fn rows_of(module: &dyn Module) -> Vec<Row> {
    named_tensors(module)
        .into_iter()
        .map(|(key, tensor, role)| {
            let dtype = match role {
                Role::Parameter | Role::Buffer(DType::F32) => "float32",
                Role::Buffer(DType::I64) => "int64",
                Role::Buffer(other) => other.name(),
            };
            (key, tensor.dims().to_vec(), dtype.to_string())
        })
        .collect()
}

/// Asserts the module's rows equal the manifest's, naming the first difference.
fn assert_matches_manifest(module: &dyn Module, name: &str) {
    let (expected, total) = manifest(name);
    let actual = rows_of(module);
    for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
        assert_eq!(a, e, "{name}: entry {i} differs");
    }
    assert_eq!(actual.len(), expected.len(), "{name}: entry count");
    assert_eq!(parameter_count(module), total, "{name}: total_params");
}

/// Builds `net` at 19 classes and checks it and its default MoE variant against the manifests.
fn check_manifests(net: ModelName) {
    let mut model = models::build(net, &ModelConfig::default()).unwrap();
    assert_matches_manifest(model.as_ref(), net.as_str());
    replace_conv_with_moe(
        model.as_mut(),
        net.default_moe_path(),
        PatchConvMoeConfig::default(),
    )
    .unwrap();
    assert_matches_manifest(model.as_ref(), &format!("{}-moe", net.as_str()));
}

#[test]
fn erfnet_state_dict_matches_manifest() {
    check_manifests(ModelName::Erfnet);
}

#[test]
fn unet_state_dict_matches_manifest() {
    check_manifests(ModelName::Unet);
}

#[test]
fn lraspp_state_dict_matches_manifest() {
    check_manifests(ModelName::Lraspp);
}
