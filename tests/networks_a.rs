//! ERFNet, U-Net and LR-ASPP: state-dict keys, shapes, order and dtypes against the manifests
//! (`tests/manifests/<net>{,-moe}.tsv`, written from the PyTorch originals), and the eval
//! logits of each network (or, where the whole net's weights are too large for a fixture, of
//! its blocks) against PyTorch with the same weights (`scripts/fixtures/nets_a.py`).

use moeseg::models::erfnet::{downsampler_block, non_bottleneck_1d, upsampler_block, Erfnet};
use moeseg::models::lraspp::{Lraspp, LrasppHead};
use moeseg::models::mobilenetv3::{inverted_residual, make_divisible, InvertedResidualConfig};
use moeseg::models::unet::{double_conv, down, Unet, Up};
use moeseg::models::{self, ModelConfig, ModelName};
use moeseg::moe::patch_conv_moe::{balance_loss, replace_conv_with_moe, PatchConvMoeConfig};
use moeseg::nn::state_dict::{load_state_dict, LoadOptions};
use moeseg::nn::{named_parameters, named_tensors, set_training, Module, Sequential};
use moeseg::testing::{assert_close, Fixtures};
use moeseg::{Rng, Tensor};
use std::path::{Path, PathBuf};

/// The elements on the host; a failed copy fails the test.
trait ToHost {
    fn to_host(&self) -> Vec<f32>;
}

impl ToHost for Tensor {
    fn to_host(&self) -> Vec<f32> {
        self.try_to_vec().unwrap()
    }
}

/// The default MoE variant of `net` trains: logits `[2, 19, H, W]` in training mode, the
/// balancing loss present, gradients reaching the gate and the experts.
fn check_moe_variant_trains(net: ModelName, size: [usize; 2]) {
    let mut model = models::build(net, &ModelConfig::default()).unwrap();
    let path = net.default_moe_path();
    replace_conv_with_moe(model.as_mut(), path, PatchConvMoeConfig::default()).unwrap();
    set_training(model.as_ref(), true);
    let input = Tensor::randn([2, 3, size[0], size[1]], 0.0, 1.0, &mut Rng::new(5)).unwrap();
    let output = model.forward_seg(&input).unwrap();
    assert_eq!(output.logits.dims(), &[2, 19, size[0], size[1]], "{net}");
    let balance = balance_loss(model.as_ref())
        .unwrap()
        .expect("a balancing loss");
    let loss = output.logits.square().unwrap().mean_all().unwrap();
    loss.add(&balance).unwrap().backward().unwrap();
    let moe_grads: Vec<(String, f32)> = named_parameters(model.as_ref())
        .into_iter()
        .filter(|(key, _)| key.starts_with(path))
        .map(|(key, p)| {
            let largest = p.grad().map_or(0.0, |g| {
                g.to_host().iter().fold(0f32, |m, v| m.max(v.abs()))
            });
            (key, largest)
        })
        .collect();
    let nonzero = |part: &str| {
        moe_grads
            .iter()
            .any(|(key, g)| key.contains(part) && *g > 0.0)
    };
    assert!(
        nonzero(".gate."),
        "{net}: no gradient reaches the gate: {moe_grads:?}"
    );
    assert!(
        nonzero(".experts."),
        "{net}: no gradient reaches an expert: {moe_grads:?}"
    );
}

#[test]
fn moe_variants_train() {
    check_moe_variant_trains(ModelName::Erfnet, [48, 80]);
    check_moe_variant_trains(ModelName::Lraspp, [65, 97]);
    check_moe_variant_trains(ModelName::Unet, [32, 32]);
}

// ---- parity with PyTorch (scripts/fixtures/nets_a.py) ------------------------------------

/// Eval-mode outputs: relative error bound (of the norm and of the largest element).
const EVAL_REL: f32 = 1e-4;
/// Train-mode outputs, gradients and running statistics.
const TRAIN_REL: f32 = 1e-3;

fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nets_a.safetensors")
}

/// Checks `‖a − e‖₂ ≤ rel·‖e‖₂` and `max|a − e| ≤ rel·max|e|` (and equal shapes); prints and
/// returns the two relative errors.
fn assert_rel_close(what: &str, actual: &Tensor, expected: &Tensor, rel: f32) -> (f64, f64) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shape");
    let (a, e) = (actual.to_host(), expected.to_host());
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let diff_norm = norm(&mut a.iter().zip(&e).map(|(&x, &y)| (x - y) as f64));
    let ref_norm = norm(&mut e.iter().map(|&y| y as f64));
    let max_diff = a
        .iter()
        .zip(&e)
        .map(|(&x, &y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    let max_ref = e.iter().map(|&y| y.abs() as f64).fold(0.0, f64::max);
    let (rel_norm, rel_max) = (diff_norm / ref_norm, max_diff / max_ref);
    eprintln!("{what}: relative norm error {rel_norm:.2e}, max error {max_diff:.2e} ({rel_max:.2e} of max)");
    assert!(ref_norm > 0.0, "{what}: the reference is all zeros");
    assert!(
        rel_norm <= rel as f64 && rel_max <= rel as f64,
        "{what}: relative norm error {rel_norm:e} or max error {rel_max:e} above {rel:e}"
    );
    (rel_norm, rel_max)
}

/// Gives `module` the weights of fixture case `case`: `<case>.sd.<key>` through the state-dict
/// loader, and every key the file lacks as a window of the stored pool
/// (`<case>.expand.<key> = [offset, scale]`, see the fixture script).
fn load_case_weights(module: &dyn Module, fixtures: &Fixtures, case: &str) {
    let prefix = format!("{case}.sd.");
    let options = LoadOptions {
        strict: false,
        strip_prefixes: vec![prefix.clone()],
        ..LoadOptions::default()
    };
    let report = load_state_dict(module, fixture_path(), options).unwrap();
    assert!(report.mismatched.is_empty(), "{case}: {report}");
    let unused: Vec<&String> = report
        .unexpected
        .iter()
        .filter(|k| k.starts_with(&prefix))
        .collect();
    assert!(
        unused.is_empty(),
        "{case}: file keys not in the module: {unused:?}"
    );
    if report.missing.is_empty() {
        return;
    }
    let pool = fixtures.get("pool").unwrap().to_host();
    let tensors: std::collections::HashMap<String, Tensor> = named_tensors(module)
        .into_iter()
        .map(|(k, t, _)| (k, t))
        .collect();
    for key in &report.missing {
        let plan = fixtures
            .get(&format!("{case}.expand.{key}"))
            .unwrap()
            .to_host();
        let (offset, scale) = (plan[0] as usize, plan[1]);
        let target = &tensors[key];
        let values: Vec<f32> = (0..target.numel())
            .map(|i| pool[(offset + i) % pool.len()] * scale)
            .collect();
        let value = Tensor::from_vec(values, target.shape().clone()).unwrap();
        target.replace_data(&value).unwrap();
    }
}

/// Loads a case's weights into `module`, puts it in eval mode and returns the fixtures.
fn eval_case(module: &dyn Module, case: &str) -> Fixtures {
    let fixtures = Fixtures::load("nets_a").unwrap();
    load_case_weights(module, &fixtures, case);
    set_training(module, false);
    fixtures
}

/// Eval-mode single-input case: `module(<case>.input)` against `<case>.out`.
fn check_eval(module: &dyn Module, case: &str) {
    let fixtures = eval_case(module, case);
    let input = fixtures.get(&format!("{case}.input")).unwrap();
    let out = module.forward(&input).unwrap();
    assert_rel_close(
        case,
        &out,
        &fixtures.get(&format!("{case}.out")).unwrap(),
        EVAL_REL,
    );
}

#[test]
fn erfnet_blocks_match_pytorch() {
    check_eval(&downsampler_block(16, 64).unwrap(), "erf_down");
    check_eval(&non_bottleneck_1d(32, 0.3, 4).unwrap(), "erf_nb1d");
    check_eval(&non_bottleneck_1d(16, 0.3, 16).unwrap(), "erf_nb1d_d16");
    check_eval(&upsampler_block(64, 16).unwrap(), "erf_up");
}

#[test]
fn erfnet_matches_pytorch() {
    let net = Erfnet::new(4).unwrap();
    check_eval(&net, "erfnet");
    let fixtures = Fixtures::load("nets_a").unwrap();
    let encoder_out = net
        .forward_encoder_only(&fixtures.get("erfnet.input").unwrap())
        .unwrap();
    let expected = fixtures.get("erfnet.encoder_out").unwrap();
    assert_rel_close("erfnet encoder only", &encoder_out, &expected, EVAL_REL);
    // Heights and widths must divide by 8: an error, not a panic.
    let odd = Tensor::zeros([1, 3, 44, 80], &moeseg::Device::Cpu).unwrap();
    let message = net.forward(&odd).unwrap_err().to_string();
    assert!(message.contains("divisible by 8"), "{message}");
}

#[test]
fn unet_blocks_match_pytorch() {
    let up = Up::new(64, 32).unwrap();
    let fixtures = eval_case(&up, "unet_up");
    let out = up
        .forward_with_skip(
            &fixtures.get("unet_up.input").unwrap(),
            &fixtures.get("unet_up.skip").unwrap(),
        )
        .unwrap();
    assert_rel_close(
        "unet_up",
        &out,
        &fixtures.get("unet_up.out").unwrap(),
        EVAL_REL,
    );
    // Its single-input forward and a skip smaller than the upsampled map are errors.
    let x = fixtures.get("unet_up.input").unwrap();
    assert!(up.forward(&x).is_err());
    let small = Tensor::zeros([1, 32, 9, 15], &moeseg::Device::Cpu).unwrap();
    assert!(up.forward_with_skip(&x, &small).is_err());

    let inc_down = Sequential::default()
        .push(double_conv(3, 16).unwrap())
        .push(down(16, 32).unwrap());
    check_eval(&inc_down, "unet_inc_down");
}

#[test]
fn unet_matches_pytorch() {
    check_eval(&Unet::new(3).unwrap(), "unet");
}

#[test]
fn mobilenetv3_blocks_match_torchvision() {
    let block = |input, kernel, expanded, out, se, hs, stride, dilation| {
        inverted_residual(&InvertedResidualConfig {
            input_channels: input,
            kernel,
            expanded_channels: expanded,
            out_channels: out,
            use_se: se,
            use_hardswish: hs,
            stride,
            dilation,
        })
        .unwrap()
    };
    check_eval(&block(16, 3, 16, 16, false, false, 1, 1), "mnv3_noexpand");
    check_eval(&block(16, 5, 48, 24, true, false, 2, 1), "mnv3_se_s2");
    check_eval(&block(24, 5, 72, 24, true, true, 1, 2), "mnv3_dilated");
}

#[test]
fn make_divisible_matches_torchvision() {
    // The SE widths of MobileNetV3-Large: expanded / 4 rounded (72 → 18 → 24).
    for (value, rounded) in [
        (18, 24),
        (30, 32),
        (120, 120),
        (168, 168),
        (240, 240),
        (3, 8),
    ] {
        assert_eq!(make_divisible(value, 8), rounded, "{value}");
    }
}

#[test]
fn lraspp_head_matches_torchvision() {
    let head = LrasppHead::new(24, 96, 4, 32).unwrap();
    let fixtures = eval_case(&head, "lraspp_head");
    let out = head
        .forward_features(
            &fixtures.get("lraspp_head.low").unwrap(),
            &fixtures.get("lraspp_head.high").unwrap(),
        )
        .unwrap();
    let expected = fixtures.get("lraspp_head.out").unwrap();
    assert_rel_close("lraspp_head", &out, &expected, EVAL_REL);
}

#[test]
fn lraspp_matches_torchvision() {
    check_eval(&Lraspp::new(4).unwrap(), "lraspp");
}

/// Train-mode case: output, input and parameter gradients of `sum(out · grad_out)`, and the
/// running statistics after the forward. `zero_grad` lists the biases of convs that feed a
/// train-mode BN: their exact gradient is 0 (BN removes any per-channel shift), so both sides
/// hold only rounding noise, checked to stay below 1e-3 of the largest input gradient.
fn check_train(module: &dyn Module, case: &str, zero_grad: &[&str]) {
    let fixtures = Fixtures::load("nets_a").unwrap();
    load_case_weights(module, &fixtures, case);
    set_training(module, true);
    let get = |name: &str| fixtures.get(&format!("{case}.{name}")).unwrap();
    let input = get("input").with_requires_grad(true);
    let out = module.forward(&input).unwrap();
    assert_rel_close(&format!("{case}.out"), &out, &get("out"), TRAIN_REL);
    out.mul(&get("grad_out"))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grad = input.grad().unwrap();
    assert_rel_close(
        &format!("{case}.grad_input"),
        &grad,
        &get("grad_input"),
        TRAIN_REL,
    );
    let noise = 1e-3
        * get("grad_input")
            .to_host()
            .iter()
            .fold(0f32, |m, g| m.max(g.abs()));
    for (key, param) in named_parameters(module) {
        let grad = param.grad().unwrap();
        let what = format!("{case}.grad.{key}");
        let expected = get(&format!("grad.{key}"));
        if zero_grad.contains(&key.as_str()) {
            for (side, values) in [("moeseg", grad.to_host()), ("PyTorch", expected.to_host())] {
                let largest = values.iter().fold(0f32, |m, g| m.max(g.abs()));
                assert!(largest <= noise, "{what}: {side} gives {largest:e}, not ~0");
            }
        } else {
            assert_rel_close(&what, &grad, &expected, TRAIN_REL);
        }
    }
    for (key, tensor, _) in named_tensors(module) {
        if key.contains("running") {
            let what = format!("{case}.after.{key}");
            // Running statistics: elementwise, as their scales differ per channel.
            assert_close(
                &what,
                &tensor,
                &get(&format!("after.{key}")),
                TRAIN_REL,
                1e-6,
            )
            .unwrap();
        }
    }
}

#[test]
fn erfnet_blocks_train_mode_match_pytorch() {
    let nb1d = non_bottleneck_1d(32, 0.0, 2).unwrap();
    check_train(
        &nb1d,
        "erf_nb1d_train",
        &["conv1x3_1.bias", "conv1x3_2.bias"],
    );
    let down = downsampler_block(16, 32).unwrap();
    check_train(&down, "erf_down_train", &["conv.bias"]);
}
