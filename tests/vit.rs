//! The (Soft-MoE) Vision Transformer: parity with the reference packages' own models
//! (`soft_moe.SoftMoEVisionTransformer` 0.0.1 and `timm` 1.0.31 `VisionTransformer`, random
//! weights, fixtures from `scripts/fixtures/soft_moe_vit.py`: strict state-dict load, logits
//! within 1e-4, one training step's gradients within 1e-3), and the package's own tests
//! (`tests/test_vision_transformer.py`).

mod soft_moe_fixtures;

use moeseg::models::vit::{
    soft_moe_vit, GlobalPool, MoeLayers, VisionTransformer, VitConfig, VitMoeConfig, VitSize,
};
use moeseg::moe::SlotSource;
use moeseg::nn::{named_parameters, named_tensors, set_training, Module};
use moeseg::tensor::{manual_seed, with_default_rng};
use moeseg::Tensor;
use soft_moe_fixtures::{check_grads, compare, fixtures, get, load_strict};

/// The fixture models' configuration: `img` input, `patch`, D 48, 3 heads.
fn small(depth: usize, patch: usize, classes: usize, moe: Option<VitMoeConfig>) -> VitConfig {
    VitConfig {
        img_size: [32, 32],
        patch_size: patch,
        num_classes: classes,
        embed_dim: 48,
        depth,
        num_heads: 3,
        moe,
        ..VitConfig::vit(VitSize::Tiny)
    }
}

fn moe(num_experts: usize, slots_per_expert: usize, layers: MoeLayers) -> Option<VitMoeConfig> {
    Some(VitMoeConfig {
        num_experts,
        slots_per_expert,
        layers,
        slot_source: SlotSource::Normalized,
    })
}

/// Strict load, train-mode forward, cross-entropy on the fixture's labels, backward; logits
/// within 1e-4 and gradients within 1e-3 of the package's float64 computation.
fn check_case(case: &str, config: VitConfig) {
    let fx = fixtures();
    let model = VisionTransformer::new(config).unwrap();
    load_strict(&fx, case, &model);
    set_training(&model, true);
    let logits = model.forward(&get(&fx, &format!("{case}.input"))).unwrap();
    compare(
        &format!("{case} logits"),
        &logits,
        &get(&fx, &format!("{case}.out")),
        1e-4,
    );
    let loss = logits
        .cross_entropy(&get(&fx, &format!("{case}.target")), Default::default())
        .unwrap();
    compare(
        &format!("{case} loss"),
        &loss.reshape_to([1]).unwrap(),
        &get(&fx, &format!("{case}.loss")),
        1e-4,
    );
    loss.backward().unwrap();
    check_grads(&fx, case, &model, 1e-3);
}

#[test]
fn soft_moe_vit_matches_the_package() {
    check_case("vit_moe", small(3, 8, 10, moe(4, 2, MoeLayers::From(1))));
}

#[test]
fn soft_moe_vit_with_average_pooling_and_a_layer_list_matches_the_package() {
    let config = VitConfig {
        global_pool: GlobalPool::Avg,
        ..small(3, 16, 7, moe(3, 1, MoeLayers::List(vec![0, 2])))
    };
    check_case("vit_avg", config);
}

#[test]
fn plain_vit_matches_timm() {
    check_case("vit_plain", small(2, 8, 10, None));
}

#[test]
fn state_dict_names_follow_timm_and_the_package() {
    manual_seed(1);
    let model = VisionTransformer::new(small(3, 8, 10, moe(2, 1, MoeLayers::From(2)))).unwrap();
    let names: Vec<String> = named_tensors(&model).into_iter().map(|(n, ..)| n).collect();
    let expected_head = [
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "blocks.0.norm1.weight",
        "blocks.0.norm1.bias",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.qkv.bias",
        "blocks.0.attn.proj.weight",
        "blocks.0.attn.proj.bias",
        "blocks.0.norm2.weight",
        "blocks.0.norm2.bias",
        "blocks.0.mlp.fc1.weight",
    ];
    assert_eq!(&names[..expected_head.len()], expected_head);
    for key in [
        "blocks.2.mlp.phi",
        "blocks.2.mlp.scale",
        "blocks.2.mlp.experts.1.fc2.bias",
        "norm.weight",
        "head.bias",
    ] {
        assert!(names.iter().any(|n| n == key), "missing {key}");
    }
    assert_eq!(
        model.pos_embed.dims(),
        &[1, 17, 48],
        "1 + (32/8)² positions"
    );
    assert_eq!(model.soft_moe_layers().len(), 1);
}

/// `test_soft_moe_vit_num_experts`: D 96, 2 heads, 4 blocks at 224², experts 1 / 4, slots
/// 1 / 2, `moe_layer_index` 2 and [0, 2]: shape and no NaN.
#[test]
fn package_test_num_experts_and_layer_index() {
    manual_seed(4);
    let x = with_default_rng(|rng| Tensor::randn([1, 3, 224, 224], 0.0, 1.0, rng)).unwrap();
    for num_experts in [1, 4] {
        for slots in [1, 2] {
            for layers in [MoeLayers::From(2), MoeLayers::List(vec![0, 2])] {
                let config = VitConfig {
                    img_size: [224, 224],
                    num_heads: 2,
                    embed_dim: 96,
                    depth: 4,
                    num_classes: 10,
                    moe: moe(num_experts, slots, layers.clone()),
                    ..VitConfig::vit(VitSize::Tiny)
                };
                let model = VisionTransformer::new(config).unwrap();
                let expected_moe = match &layers {
                    MoeLayers::From(_) => 2,
                    MoeLayers::List(list) => list.len(),
                };
                assert_eq!(model.soft_moe_layers().len(), expected_moe);
                set_training(&model, false);
                let out = moeseg::no_grad(|| model.forward(&x)).unwrap();
                assert_eq!(out.dims(), &[1, 10]);
                assert!(out.try_to_vec().unwrap().iter().all(|v| v.is_finite()));
            }
        }
    }
}

/// `test_soft_moe_vit_moe_layer_index`: out-of-range indices are errors.
#[test]
fn package_test_moe_layer_index_is_checked() {
    for layers in [
        MoeLayers::From(12),
        MoeLayers::List(vec![0, 1, 12]),
        MoeLayers::List(vec![]),
    ] {
        let config = VitConfig {
            img_size: [32, 32],
            moe: moe(2, 1, layers.clone()),
            ..VitConfig::vit(VitSize::Tiny)
        };
        let err = VisionTransformer::new(config).err();
        assert!(err.is_some(), "{layers:?} accepted for 12 blocks");
    }
    assert!(MoeLayers::parse("-1").is_err());
    assert!(MoeLayers::parse("[-2]").is_err());
    assert_eq!(MoeLayers::parse("6").unwrap(), MoeLayers::From(6));
    assert_eq!(
        MoeLayers::parse("[0, 2]").unwrap(),
        MoeLayers::List(vec![0, 2])
    );
    assert_eq!(MoeLayers::parse("3,").ok(), None);
}

/// The five factories' hyper-parameters, as `soft_moe/vision_transformer.py` and timm's
/// `vit_*_patch16_224` / `vit_huge_patch14_224` define them.
#[test]
fn factories_use_the_packages_defaults() {
    let expected = [
        (VitSize::Tiny, 192, 12, 3, 6),
        (VitSize::Small, 384, 12, 6, 6),
        (VitSize::Base, 768, 12, 12, 6),
        (VitSize::Large, 1024, 24, 16, 12),
        (VitSize::Huge, 1280, 32, 16, 16),
    ];
    for (size, d, depth, heads, first_moe) in expected {
        let c = VitConfig::soft_moe_vit(size);
        assert_eq!((c.embed_dim, c.depth, c.num_heads), (d, depth, heads));
        assert_eq!(
            (c.patch_size, c.img_size, c.num_classes),
            (16, [224, 224], 1000)
        );
        let m = c.moe.unwrap();
        assert_eq!((m.num_experts, m.slots_per_expert), (128, 1));
        assert_eq!(m.layers, MoeLayers::From(first_moe));
        let plain = VitConfig::vit(size);
        assert!(plain.moe.is_none());
        let patch = if size == VitSize::Huge { 14 } else { 16 };
        assert_eq!(plain.patch_size, patch);
    }
}

/// `test_soft_moe_vit_forward` and `test_soft_moe_vit_backward` on the tiny factory (128
/// experts, Soft-MoE blocks 6-11) at 224² with 10 classes: shapes, no NaN, a gradient for
/// every parameter after `out.mean().backward()`; 1 input channel at 128².
#[test]
fn package_test_tiny_forward_and_backward() {
    manual_seed(6);
    let model = soft_moe_vit(VitSize::Tiny, None, None, None, |c| c.num_classes = 10).unwrap();
    assert_eq!(model.soft_moe_layers().len(), 6);
    let x = with_default_rng(|rng| Tensor::randn([1, 3, 224, 224], 0.0, 1.0, rng)).unwrap();
    set_training(&model, true);
    let out = model.forward(&x).unwrap();
    assert_eq!(out.dims(), &[1, 10]);
    assert!(out.try_to_vec().unwrap().iter().all(|v| v.is_finite()));
    out.mean_all().unwrap().backward().unwrap();
    for (name, p) in named_parameters(&model) {
        let grad = p.grad().unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(grad.dims(), p.dims(), "{name}");
    }
    drop(model);
    let gray = soft_moe_vit(VitSize::Tiny, Some(4), None, None, |c| {
        c.num_classes = 10;
        c.in_chans = 1;
        c.img_size = [128, 128];
    })
    .unwrap();
    set_training(&gray, false);
    let x = with_default_rng(|rng| Tensor::randn([1, 1, 128, 128], 0.0, 1.0, rng)).unwrap();
    let out = moeseg::no_grad(|| gray.forward(&x)).unwrap();
    assert_eq!(out.dims(), &[1, 10]);
    assert!(out.try_to_vec().unwrap().iter().all(|v| v.is_finite()));
}

/// `scripts/fixtures/soft_moe_vit_tiny.py`'s weight of element `i` of the tensor `key`
/// (position `k` among the sorted keys) with shape `dims`.
fn formula_value(k: u64, i: u64, key: &str, dims: &[usize]) -> f32 {
    let mut z = (k << 40).wrapping_add(i);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let u = (z >> 40) as f64 / (1u64 << 24) as f64 - 0.5;
    let numel: usize = dims.iter().product();
    let value = if key.ends_with(".scale") {
        1.3
    } else if dims.len() >= 2 {
        u * (2.0 / ((numel / dims[0]) as f64).sqrt())
    } else if key.ends_with(".weight") {
        1.0 + 0.2 * u
    } else {
        0.2 * u
    };
    value as f32
}

/// The full `soft_moe_vit_tiny` (231 M parameters, 128 experts in blocks 6-11) at 32x32 with
/// 10 classes, weights from the fixture script's formula: logits within 1e-4 and the stored
/// gradients within 1e-3 of the package's float64 run.
#[test]
fn tiny_configuration_matches_the_package() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/soft_moe_vit_tiny.safetensors");
    let fx: std::collections::BTreeMap<String, Tensor> = moeseg::io::safetensors::load(path)
        .unwrap()
        .into_iter()
        .map(|(k, (t, _))| (k, t))
        .collect();
    manual_seed(0);
    let model = soft_moe_vit(VitSize::Tiny, None, None, None, |c| {
        c.img_size = [32, 32];
        c.num_classes = 10;
    })
    .unwrap();
    let mut tensors = named_tensors(&model);
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, (key, tensor, _)) in tensors.iter().enumerate() {
        let values: Vec<f32> = (0..tensor.numel() as u64)
            .map(|i| formula_value(k as u64, i, key, tensor.dims()))
            .collect();
        tensor
            .replace_data(&Tensor::from_vec(values, tensor.dims().to_vec()).unwrap())
            .unwrap();
    }
    set_training(&model, true);
    let logits = model.forward(&get(&fx, "input")).unwrap();
    compare("tiny logits", &logits, &get(&fx, "out"), 1e-4);
    let loss = logits
        .cross_entropy(&get(&fx, "target"), Default::default())
        .unwrap();
    compare(
        "tiny loss",
        &loss.reshape_to([1]).unwrap(),
        &get(&fx, "loss"),
        1e-4,
    );
    loss.backward().unwrap();
    let params: std::collections::BTreeMap<String, Tensor> =
        named_parameters(&model).into_iter().collect();
    let mut checked = 0;
    for (key, expected) in fx.iter().filter(|(k, _)| k.starts_with("grad.")) {
        let name = &key["grad.".len()..];
        let grad = params[name].grad().unwrap();
        compare(&format!("tiny grad {name}"), &grad, expected, 1e-3);
        checked += 1;
    }
    assert!(checked > 100, "only {checked} gradients in the fixture");
}

/// The segmentation ViT (SETR-naive) against the package's Soft-MoE ViT without class token
/// and pooling, its token logits resized bilinearly by PyTorch: per-pixel logits within 1e-4,
/// gradients of the per-pixel cross-entropy within 1e-3.
#[test]
fn segmentation_vit_matches_the_package_with_setr_naive_upsampling() {
    use moeseg::models::vit_seg::SegVit;
    let fx = fixtures();
    let case = "seg_moe";
    let model = SegVit::new(small(2, 8, 5, moe(2, 2, MoeLayers::From(1)))).unwrap();
    load_strict(&fx, case, &model);
    set_training(&model, true);
    let logits = model.forward(&get(&fx, &format!("{case}.input"))).unwrap();
    compare(
        "seg logits",
        &logits,
        &get(&fx, &format!("{case}.out")),
        1e-4,
    );
    let loss = logits
        .cross_entropy(&get(&fx, &format!("{case}.target")), Default::default())
        .unwrap();
    compare(
        "seg loss",
        &loss.reshape_to([1]).unwrap(),
        &get(&fx, &format!("{case}.loss")),
        1e-4,
    );
    loss.backward().unwrap();
    check_grads(&fx, case, &model, 1e-3);
}
