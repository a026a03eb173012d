//! ResNet backbone, DeepLabv3+ and PSPNet (their manifests are checked in `models.rs`): forward
//! shapes, backbone geometry, ImageNet backbone loading. Block parity with PyTorch is in
//! `networks_b_parity.rs`.

use moeseg::io::safetensors;
use moeseg::models::deeplabv3plus::DeepLabV3Plus;
use moeseg::models::load_imagenet_backbone;
use moeseg::models::pspnet::{PspDilation, PspNet, AUX_WEIGHT};
use moeseg::models::resnet::{Bottleneck, ResNetConfig};
use moeseg::models::{build, ModelConfig, ModelName, SegNet};
use moeseg::moe::patch_conv_moe::{replace_conv_with_moe, PatchConvMoeConfig};
use moeseg::nn::{get_module, named_tensors, set_training, Conv2d, Module};
use moeseg::train::config::Config;
use moeseg::train::setup::build_model;
use moeseg::{no_grad, DType, Rng, Tensor};

fn net(name: ModelName) -> Box<dyn SegNet> {
    build(name, &ModelConfig::default()).unwrap()
}

#[test]
fn moe_variants_run_at_odd_sizes() {
    for name in [ModelName::Deeplabv3plus, ModelName::Pspnet] {
        let mut model = net(name);
        replace_conv_with_moe(
            model.as_mut(),
            name.default_moe_path(),
            PatchConvMoeConfig::default(),
        )
        .unwrap();
        set_training(model.as_ref(), false);
        let input = random_input([1, 3, 33, 41], 5);
        let out = no_grad(|| model.forward_seg(&input)).unwrap();
        assert_eq!(out.logits.dims(), &[1, 19, 33, 41], "{name} with MoE");
    }
}

#[test]
fn resnet101_has_23_blocks_in_layer3() {
    let config = ModelConfig {
        backbone_depth: 101,
        ..ModelConfig::default()
    };
    let model = build(ModelName::Deeplabv3plus, &config).unwrap();
    let keys: Vec<String> = named_tensors(model.as_ref())
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert!(keys.contains(&"backbone.layer3.22.conv3.weight".to_string()));
    assert!(!keys.iter().any(|k| k.starts_with("backbone.layer3.23.")));
    assert!(keys.contains(&"backbone.layer4.2.bn3.running_var".to_string()));
    let bad = ModelConfig {
        backbone_depth: 34,
        ..ModelConfig::default()
    };
    assert!(build(ModelName::Deeplabv3plus, &bad).is_err());
}

/// `(stride, padding, dilation)` of the conv at `path`.
fn conv_geometry(net: &dyn Module, path: &str) -> (usize, usize, usize) {
    let conv = get_module(net, path)
        .unwrap()
        .as_any()
        .downcast_ref::<Conv2d>()
        .unwrap();
    let p = conv.params;
    assert_eq!(p.stride[0], p.stride[1]);
    (p.stride[0], p.padding[0], p.dilation[0])
}

#[test]
fn backbones_have_the_references_strides_and_dilations() {
    let deeplab = DeepLabV3Plus::new(50, 19).unwrap();
    // jfzhang95: layer4 stride 1, multi-grid 2, 4, 8 from its first block; downsample undilated.
    for (path, geometry) in [
        ("backbone.conv1", (2, 3, 1)),
        ("backbone.layer2.0.conv2", (2, 1, 1)),
        ("backbone.layer3.0.conv2", (2, 1, 1)),
        ("backbone.layer3.0.downsample.0", (2, 0, 1)),
        ("backbone.layer4.0.conv2", (1, 2, 2)),
        ("backbone.layer4.0.downsample.0", (1, 0, 1)),
        ("backbone.layer4.1.conv2", (1, 4, 4)),
        ("backbone.layer4.2.conv2", (1, 8, 8)),
        ("aspp.aspp1.atrous_conv", (1, 0, 1)),
        ("aspp.aspp4.atrous_conv", (1, 18, 18)),
        ("decoder.last_conv.4", (1, 1, 1)),
    ] {
        assert_eq!(
            conv_geometry(&deeplab, path),
            geometry,
            "deeplabv3plus {path}"
        );
    }
    // hszhao: every conv2 of layer3 dilated 2 and of layer4 dilated 4, downsample stride 1.
    let psp = PspNet::new(50, 19).unwrap();
    for (path, geometry) in [
        ("backbone.layer2.0.conv2", (2, 1, 1)),
        ("backbone.layer3.0.conv2", (1, 2, 2)),
        ("backbone.layer3.0.downsample.0", (1, 0, 1)),
        ("backbone.layer3.5.conv2", (1, 2, 2)),
        ("backbone.layer4.0.conv2", (1, 4, 4)),
        ("backbone.layer4.2.conv2", (1, 4, 4)),
        ("cls.0", (1, 1, 1)),
    ] {
        assert_eq!(conv_geometry(&psp, path), geometry, "pspnet {path}");
    }
}

#[test]
fn pspnet_dilation_rule_is_configurable() {
    assert_eq!(PspDilation::default(), PspDilation::Hszhao);
    assert_eq!(ModelConfig::default().pspnet_dilation, PspDilation::Hszhao);
    assert_eq!(
        "torchvision".parse::<PspDilation>().unwrap(),
        PspDilation::Torchvision
    );
    assert!("dilated".parse::<PspDilation>().is_err());
    assert!(PspDilation::Hszhao.describe().contains("pspnet_dilation"));
    let config = ModelConfig {
        pspnet_dilation: PspDilation::Torchvision,
        ..ModelConfig::default()
    };
    let tv = build(ModelName::Pspnet, &config).unwrap();
    let hs = build(ModelName::Pspnet, &ModelConfig::default()).unwrap();
    for (path, geometry) in [
        ("backbone.layer3.0.conv2", (1, 1, 1)),
        ("backbone.layer3.1.conv2", (1, 2, 2)),
        ("backbone.layer4.0.conv2", (1, 2, 2)),
        ("backbone.layer4.1.conv2", (1, 4, 4)),
    ] {
        assert_eq!(
            conv_geometry(tv.as_ref(), path),
            geometry,
            "torchvision {path}"
        );
    }
    assert_eq!(
        conv_geometry(hs.as_ref(), "backbone.layer3.0.conv2"),
        (1, 2, 2)
    );
    // Same parameters under both rules.
    let keys = |net: &dyn Module| -> Vec<(String, Vec<usize>)> {
        named_tensors(net)
            .into_iter()
            .map(|(k, t, _)| (k, t.dims().to_vec()))
            .collect()
    };
    assert_eq!(keys(tv.as_ref()), keys(hs.as_ref()));
    // The training config's key: `[model] pspnet_dilation` (`--set model.pspnet_dilation=...`).
    let mut run = Config::default();
    assert_eq!(run.model.pspnet_dilation, "hszhao");
    run.apply_overrides(&[
        "model.name=pspnet".to_string(),
        "model.pspnet_dilation=torchvision".to_string(),
    ])
    .unwrap();
    let from_config = build_model(&run.model).unwrap();
    assert_eq!(
        conv_geometry(from_config.as_ref(), "backbone.layer3.0.conv2"),
        (1, 1, 1)
    );
    run.model.pspnet_dilation = "dilated".into();
    assert!(build_model(&run.model).is_err());
}

#[test]
fn torchvision_dilation_keeps_the_previous_dilation_in_first_blocks() {
    let config = ResNetConfig::torchvision_dilated(50, [false, true, true]).unwrap();
    assert_eq!(config.strides, [1, 2, 1, 1]);
    assert_eq!(config.dilations[2], vec![1, 2, 2, 2, 2, 2]);
    assert_eq!(config.dilations[3], vec![2, 4, 4]);
    let os16 = ResNetConfig::torchvision_dilated(101, [false, false, true]).unwrap();
    assert_eq!(os16.strides, [1, 2, 2, 1]);
    assert_eq!(os16.dilations[2], vec![1; 23]);
    assert_eq!(os16.dilations[3], vec![1, 2, 2]);
    assert!(Bottleneck::new(64, 0, 1, 1).is_err());
}

fn random_input(shape: [usize; 4], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, &mut Rng::new(seed)).unwrap()
}

#[test]
fn eval_forward_gives_input_sized_logits() {
    let input = random_input([1, 3, 65, 97], 7);
    for name in [ModelName::Deeplabv3plus, ModelName::Pspnet] {
        let model = net(name);
        set_training(model.as_ref(), false);
        let out = no_grad(|| model.forward_seg(&input)).unwrap();
        assert_eq!(out.logits.dims(), &[1, 19, 65, 97], "{name}");
        assert!(out.aux.is_empty(), "{name}: no auxiliary output in eval");
        assert!(
            out.logits
                .try_to_vec()
                .unwrap()
                .iter()
                .all(|v| v.is_finite()),
            "{name}: finite logits"
        );
    }
}

#[test]
fn pspnet_returns_the_aux_head_only_in_training() {
    let model = PspNet::new(50, 5).unwrap();
    let input = random_input([2, 3, 33, 41], 11);
    let out = no_grad(|| model.forward_seg(&input)).unwrap();
    assert_eq!(out.logits.dims(), &[2, 5, 33, 41]);
    assert_eq!(out.aux.len(), 1);
    assert_eq!(out.aux[0].name, "aux");
    assert_eq!(out.aux[0].weight, AUX_WEIGHT);
    assert_eq!(out.aux[0].logits.dims(), &[2, 5, 33, 41]);
}

#[test]
fn imagenet_backbone_loads_into_backbone_and_skips_fc() {
    let model = net(ModelName::Deeplabv3plus);
    let own: Vec<(String, Tensor)> = named_tensors(model.as_ref())
        .into_iter()
        .map(|(k, t, _)| (k, t))
        .collect();
    let find = |key: &str| own.iter().find(|(k, _)| k == key).unwrap().1.clone();
    // A few backbone tensors under torchvision names, with new values, plus the classifier.
    let mut rng = Rng::new(3);
    let keys = [
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.downsample.0.weight",
        "layer4.2.bn3.bias",
    ];
    let file_tensors: Vec<(String, Tensor, DType)> = keys
        .iter()
        .map(|key| {
            let shape = find(&format!("backbone.{key}")).shape().clone();
            let t = Tensor::randn(shape, 0.0, 1.0, &mut rng).unwrap();
            (key.to_string(), t, DType::F32)
        })
        .chain([
            (
                "fc.weight".to_string(),
                Tensor::zeros([1000, 2048], &moeseg::Device::Cpu).unwrap(),
                DType::F32,
            ),
            (
                "fc.bias".to_string(),
                Tensor::zeros([1000], &moeseg::Device::Cpu).unwrap(),
                DType::F32,
            ),
        ])
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet50.safetensors");
    safetensors::save(
        &path,
        file_tensors.iter().map(|(k, t, d)| (k.as_str(), t, *d)),
    )
    .unwrap();

    let report = load_imagenet_backbone(model.as_ref(), &path).unwrap();
    let loaded: Vec<String> = keys.iter().map(|k| format!("backbone.{k}")).collect();
    assert_eq!(report.loaded, loaded);
    assert_eq!(report.skipped, vec!["fc.bias", "fc.weight"]);
    assert!(report.unexpected.is_empty() && report.mismatched.is_empty());
    assert!(report.missing.contains(&"aspp.conv1.weight".to_string()));
    assert!(report
        .missing
        .contains(&"backbone.layer2.0.conv1.weight".to_string()));
    for (key, tensor, _) in &file_tensors[..keys.len()] {
        assert_eq!(
            find(&format!("backbone.{key}")).try_to_vec().unwrap(),
            tensor.try_to_vec().unwrap(),
            "{key} loaded"
        );
    }

    // A file with no backbone key is an error, not an empty success.
    let other = dir.path().join("other.safetensors");
    let t = Tensor::zeros([3], &moeseg::Device::Cpu).unwrap();
    safetensors::save(&other, [("head.weight", &t, DType::F32)]).unwrap();
    assert!(load_imagenet_backbone(model.as_ref(), &other).is_err());
}
