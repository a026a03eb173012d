//! Block parity of the ResNet bottleneck, DeepLabv3+'s ASPP and decoder and PSPNet's PPM and
//! heads against PyTorch (`scripts/fixtures/nets_b.py`: torchvision's own ResNet stem,
//! `_make_layer` stages and Bottleneck, and the reference heads checked against
//! jfzhang95/pytorch-deeplab-xception and hszhao/semseg, at small widths, f16-rounded weights
//! with non-trivial BN statistics).

use moeseg::io::safetensors;
use moeseg::models::deeplabv3plus::{Aspp, Decoder, DeepLabV3Plus};
use moeseg::models::pspnet::{psp_head, Ppm, PspNet};
use moeseg::models::resnet::{Bottleneck, ResNet, ResNetConfig};
use moeseg::models::SegNet;
use moeseg::nn::{named_parameters, named_tensors, set_training, Module, Role};
use moeseg::{no_grad, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// Every tensor of `tests/fixtures/nets_b.safetensors`, as f32.
fn fixtures() -> BTreeMap<String, Tensor> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nets_b.safetensors");
    safetensors::load(path)
        .unwrap()
        .into_iter()
        .map(|(k, (t, _))| (k, t))
        .collect()
}

fn get(fx: &BTreeMap<String, Tensor>, key: &str) -> Tensor {
    fx.get(key)
        .unwrap_or_else(|| panic!("fixture has no `{key}`"))
        .clone()
}

/// Copies `<case>.w.<key>` into every tensor of `block`, checking that the fixture has exactly
/// the block's keys (so the names match PyTorch's too).
fn load_block(fx: &BTreeMap<String, Tensor>, case: &str, block: &dyn Module) {
    let prefix = format!("{case}.w.");
    let mut expected: Vec<&str> = fx
        .keys()
        .filter_map(|k| k.strip_prefix(prefix.as_str()))
        .collect();
    let mut actual: Vec<String> = Vec::new();
    for (key, tensor, _) in named_tensors(block) {
        tensor
            .replace_data(&get(fx, &format!("{prefix}{key}")))
            .unwrap();
        actual.push(key);
    }
    actual.sort();
    expected.sort();
    assert_eq!(actual, expected, "{case}: state-dict keys");
}

/// Relative-norm error `‖a − e‖ / ‖e‖` and max-abs error relative to `max |e|`; both must be
/// at most `tol`. Returns them for the report.
fn compare(what: &str, actual: &Tensor, expected: &Tensor, tol: f64) -> (f64, f64) {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shape");
    let (a, e) = (actual.try_to_vec().unwrap(), expected.try_to_vec().unwrap());
    let mut diff_sq = 0.0f64;
    let mut ref_sq = 0.0f64;
    let mut max_abs = 0.0f64;
    let mut ref_max = 0.0f64;
    for (&x, &y) in a.iter().zip(&e) {
        let d = (x as f64 - y as f64).abs();
        assert!(d.is_finite(), "{what}: non-finite value {x} (expected {y})");
        diff_sq += d * d;
        ref_sq += (y as f64) * (y as f64);
        max_abs = max_abs.max(d);
        ref_max = ref_max.max((y as f64).abs());
    }
    let rel_norm = diff_sq.sqrt() / ref_sq.sqrt().max(1e-30);
    let rel_max = max_abs / ref_max.max(1e-30);
    println!("{what}: relative-norm error {rel_norm:.2e}, max-abs error {max_abs:.2e} (max |expected| {ref_max:.3})");
    assert!(
        rel_norm <= tol && rel_max <= tol,
        "{what}: relative-norm error {rel_norm:e}, max-abs error {max_abs:e} (relative {rel_max:e}) over {tol:e}"
    );
    (rel_norm, rel_max)
}

/// Loads the case's weights into `block`, runs it in eval mode on `<case>.input` through
/// `run` and compares with `<case>.out` at 1e-4.
fn check_eval(case: &str, block: &dyn Module, run: impl Fn(&BTreeMap<String, Tensor>) -> Tensor) {
    let fx = fixtures();
    load_block(&fx, case, block);
    set_training(block, false);
    let out = no_grad(|| run(&fx));
    compare(case, &out, &get(&fx, &format!("{case}.out")), 1e-4);
}

/// A single-input block's eval parity.
fn check_eval_forward(case: &str, block: &dyn Module) {
    check_eval(case, block, |fx| {
        block.forward(&get(fx, &format!("{case}.input"))).unwrap()
    });
}

#[test]
fn bottleneck_with_stride_2_and_downsample_matches_torchvision() {
    check_eval_forward("bottleneck_down", &Bottleneck::new(16, 8, 2, 1).unwrap());
}

#[test]
fn dilated_bottleneck_with_downsample_matches_torchvision() {
    check_eval_forward("bottleneck_dilated", &Bottleneck::new(16, 8, 1, 2).unwrap());
}

#[test]
fn dilated_bottleneck_with_identity_matches_torchvision() {
    let block = Bottleneck::new(32, 8, 1, 4).unwrap();
    assert!(block.downsample.is_none());
    check_eval_forward("bottleneck_identity", &block);
}

#[test]
fn aspp_matches_pytorch() {
    check_eval_forward("aspp", &Aspp::new(16, 8, [6, 12, 18]).unwrap());
}

#[test]
fn deeplab_decoder_matches_pytorch() {
    let decoder = Decoder::new(16, 6, 8, 12, 5).unwrap();
    check_eval("decoder", &decoder, |fx| {
        decoder
            .forward_features(&get(fx, "decoder.input"), &get(fx, "decoder.low"))
            .unwrap()
    });
}

#[test]
fn pyramid_pooling_matches_pytorch() {
    check_eval_forward("ppm", &Ppm::new(16, 4, &[1, 2, 3, 6]).unwrap());
}

#[test]
fn pspnet_heads_match_pytorch() {
    check_eval_forward("cls", &psp_head(32, 8, 5).unwrap());
    check_eval_forward("aux", &psp_head(16, 8, 5).unwrap());
}

/// The narrow backbone of the whole-network cases: torchvision's stem (64 channels), widths 4,
/// 4, 8, 8 (outputs 16, 16, 32, 32 channels).
fn tiny_resnet(strides: [usize; 4], dilations: [Vec<usize>; 4]) -> ResNet {
    ResNet::new(&ResNetConfig {
        stem_channels: 64,
        widths: [4, 4, 8, 8],
        strides,
        dilations,
    })
    .unwrap()
}

#[test]
fn narrow_deeplabv3plus_matches_pytorch() {
    let net = DeepLabV3Plus {
        backbone: tiny_resnet(
            [1, 2, 2, 1],
            [vec![1, 1], vec![1], vec![1, 1], vec![2, 4, 8]],
        ),
        aspp: Aspp::new(32, 8, [6, 12, 18]).unwrap(),
        decoder: Decoder::new(16, 6, 8, 12, 5).unwrap(),
    };
    check_eval_forward("deeplab_tiny", &net);
}

#[test]
fn narrow_pspnet_matches_pytorch() {
    let net = PspNet::from_parts(
        tiny_resnet([1, 2, 1, 1], [vec![1], vec![1, 1], vec![2, 2], vec![4, 4]]),
        Ppm::new(32, 8, &[1, 2, 3, 6]).unwrap(),
        psp_head(64, 8, 5).unwrap(),
        psp_head(32, 8, 5).unwrap(),
    );
    check_eval_forward("pspnet_tiny", &net);
    let out = no_grad(|| net.forward_seg(&get(&fixtures(), "pspnet_tiny.input"))).unwrap();
    assert!(out.aux.is_empty(), "no auxiliary output in eval mode");
}

#[test]
fn narrow_pspnet_with_the_torchvision_dilation_rule_matches_torchvision() {
    // `replace_stride_with_dilation=[False, True, True]` on blocks 1, 2, 2, 2.
    let net = PspNet::from_parts(
        tiny_resnet([1, 2, 1, 1], [vec![1], vec![1, 1], vec![1, 2], vec![2, 4]]),
        Ppm::new(32, 8, &[1, 2, 3, 6]).unwrap(),
        psp_head(64, 8, 5).unwrap(),
        psp_head(32, 8, 5).unwrap(),
    );
    check_eval_forward("pspnet_tiny_tv", &net);
}

/// Integer fixture values (stored int64, loaded as f32).
fn ints(fx: &BTreeMap<String, Tensor>, key: &str) -> Vec<usize> {
    get(fx, key)
        .try_to_vec()
        .unwrap()
        .iter()
        .map(|&v| v as usize)
        .collect()
}

#[test]
fn torchvision_dilated_config_equals_torchvisions_own_resnets() {
    let fx = fixtures();
    for (name, depth, replace) in [
        ("resnet50_l34", 50, [false, true, true]),
        ("resnet101_l4", 101, [false, false, true]),
    ] {
        let config = ResNetConfig::torchvision_dilated(depth, replace).unwrap();
        let mut strides = Vec::new();
        for (stage, dilations) in config.dilations.iter().enumerate() {
            strides.extend((0..dilations.len()).map(|i| {
                if i == 0 {
                    config.strides[stage]
                } else {
                    1
                }
            }));
        }
        let dilations: Vec<usize> = config.dilations.concat();
        assert_eq!(
            dilations,
            ints(&fx, &format!("tv_rule.{name}.dilation")),
            "{name} dilations"
        );
        assert_eq!(
            strides,
            ints(&fx, &format!("tv_rule.{name}.stride")),
            "{name} strides"
        );
    }
}

#[test]
fn narrow_pspnet_training_reaches_every_parameter() {
    let net = PspNet::from_parts(
        tiny_resnet([1, 2, 1, 1], [vec![1], vec![1, 1], vec![2, 2], vec![4, 4]]),
        Ppm::new(32, 8, &[1, 2, 3, 6]).unwrap(),
        psp_head(64, 8, 5).unwrap(),
        psp_head(32, 8, 5).unwrap(),
    );
    set_training(&net, true);
    let input = get(&fixtures(), "pspnet_tiny.input");
    let input = Tensor::cat(&[&input, &input.mul_scalar(0.5).unwrap()], 0).unwrap();
    let out = net.forward_seg(&input).unwrap();
    assert_eq!(out.aux.len(), 1);
    let aux = &out.aux[0];
    assert_eq!(aux.logits.dims(), out.logits.dims());
    let loss = out
        .logits
        .sum_all()
        .unwrap()
        .add(
            &aux.logits
                .sum_all()
                .unwrap()
                .mul_scalar(aux.weight)
                .unwrap(),
        )
        .unwrap();
    loss.backward().unwrap();
    for (key, param) in named_parameters(&net) {
        let grad = param.grad().unwrap_or_else(|| panic!("{key}: no gradient"));
        assert!(
            grad.try_to_vec().unwrap().iter().all(|g| g.is_finite()),
            "{key}: finite gradient"
        );
    }
}

#[test]
fn bottleneck_training_step_matches_pytorch() {
    let case = "bottleneck_train";
    let fx = fixtures();
    let block = Bottleneck::new(16, 8, 2, 1).unwrap();
    load_block(&fx, case, &block);
    set_training(&block, true);
    let input = get(&fx, &format!("{case}.input")).with_requires_grad(true);
    let out = block.forward(&input).unwrap();
    let tol = 1e-3;
    compare(
        &format!("{case}.out"),
        &out,
        &get(&fx, &format!("{case}.out")),
        tol,
    );
    out.mul(&get(&fx, &format!("{case}.grad_out")))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    compare(
        &format!("{case}.grad_input"),
        &input.grad().unwrap(),
        &get(&fx, &format!("{case}.grad_input")),
        tol,
    );
    let params = named_parameters(&block);
    assert_eq!(params.len(), 12);
    for (key, param) in params {
        let grad = param.grad().unwrap_or_else(|| panic!("{key}: no gradient"));
        compare(
            &format!("{case}.grad.{key}"),
            &grad,
            &get(&fx, &format!("{case}.grad.{key}")),
            tol,
        );
    }
    for (key, buffer, role) in named_tensors(&block) {
        if matches!(role, Role::Buffer(_)) {
            compare(
                &format!("{case}.after.{key}"),
                &buffer,
                &get(&fx, &format!("{case}.after.{key}")),
                tol,
            );
        }
    }
}
