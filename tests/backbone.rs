//! Loading torchvision ImageNet weights into a network's `backbone.`: MobileNetV3-Large's
//! `features.*` keys map onto LR-ASPP's `backbone.*`, the classifier is skipped, and the report
//! says what was loaded and what the file lacked.

use moeseg::io::safetensors::save;
use moeseg::models::{build, load_imagenet_backbone, ModelConfig, ModelName};
use moeseg::nn::{named_tensors, Role};
use moeseg::{DType, Device, Tensor};

#[test]
fn mobilenet_features_load_into_the_lraspp_backbone() {
    let source = build(ModelName::Lraspp, &ModelConfig::default()).unwrap();
    // A torchvision-style file: `features.{i}…` for every backbone tensor, plus the classifier.
    let mut entries: Vec<(String, Tensor, DType)> = named_tensors(source.as_ref())
        .into_iter()
        .filter_map(|(name, tensor, role)| {
            let key = name.strip_prefix("backbone.")?;
            let dtype = match role {
                Role::Parameter => DType::F32,
                Role::Buffer(d) => d,
            };
            Some((format!("features.{key}"), tensor, dtype))
        })
        .collect();
    let backbone_count = entries.len();
    assert!(backbone_count > 100);
    let classifier = Tensor::ones([1000, 1280], &Device::Cpu).unwrap();
    entries.push(("classifier.3.weight".to_string(), classifier, DType::F32));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mobilenet_v3_large.safetensors");
    save(&path, entries.iter().map(|(n, t, d)| (n.as_str(), t, *d))).unwrap();

    let target = build(ModelName::Lraspp, &ModelConfig::default()).unwrap();
    let report = load_imagenet_backbone(target.as_ref(), &path).unwrap();
    assert_eq!(report.loaded.len(), backbone_count, "{report}");
    assert!(report.loaded.iter().all(|k| k.starts_with("backbone.")));
    assert_eq!(report.skipped, vec!["classifier.3.weight".to_string()]);
    assert!(report.unexpected.is_empty() && report.mismatched.is_empty());
    // The head is not in the file: reported missing, not an error.
    assert!(!report.missing.is_empty());
    assert!(report.missing.iter().all(|k| k.starts_with("classifier.")));
    // Values arrived: a backbone conv of the target now equals the source's.
    let get = |net: &dyn moeseg::models::SegNet, key: &str| {
        named_tensors(net)
            .into_iter()
            .find(|(n, _, _)| n == key)
            .map(|(_, t, _)| t.try_to_vec().unwrap())
            .unwrap()
    };
    let key = "backbone.0.0.weight";
    assert_eq!(get(source.as_ref(), key), get(target.as_ref(), key));
}
