//! Per-image path skipping in the dynamic network's eval forward: with paths forced off, the
//! skipping forward equals the dense computation (every path computed, times its α); a node
//! whose α are all 0 passes its input through; a batch gives what its images give one by one
//! (images with different routes are grouped per path); and the budget loss's ramp.

use moeseg::models::dynamic::{BudgetConfig, Cell, DynamicConfig, DynamicNet4Seg};
use moeseg::nn::{named_tensors, set_training};
use moeseg::optim::clip_grad_norm;
use moeseg::testing::assert_close;
use moeseg::{Rng, Tensor};

fn net() -> DynamicNet4Seg {
    moeseg::tensor::manual_seed(5);
    let net = DynamicNet4Seg::new(DynamicConfig {
        layers: 4,
        channels: 8,
        num_classes: 3,
        small_gate: false,
        gate_bias: 1.5,
    })
    .unwrap();
    set_training(&net, false);
    net
}

/// Sets the last gate conv of node `prefix` to weight 0 and the given biases (α = relu(tanh)).
fn force_gate(net: &DynamicNet4Seg, prefix: &str, biases: &[f32]) {
    let tensors = named_tensors(net);
    let find = |suffix: &str| {
        tensors
            .iter()
            .find(|(n, _, _)| n == &format!("{prefix}.gate_conv_beta.2.{suffix}"))
            .map(|(_, t, _)| t.clone())
            .unwrap_or_else(|| panic!("{prefix}: no gate {suffix}"))
    };
    let weight = find("weight");
    weight
        .replace_data(&Tensor::zeros(weight.shape().clone(), &weight.device()).unwrap())
        .unwrap();
    find("bias")
        .replace_data(&Tensor::from_vec(biases.to_vec(), [biases.len()]).unwrap())
        .unwrap();
}

fn input(batch: usize) -> Tensor {
    let mut rng = Rng::new(11);
    Tensor::randn([batch, 3, 64, 64], 0.0, 1.0, &mut rng).unwrap()
}

fn forward(net: &DynamicNet4Seg, x: &Tensor, skip: bool) -> Tensor {
    net.set_skip_in_eval(skip);
    net.forward_routed(x).unwrap().0
}

#[test]
fn forced_off_paths_match_the_dense_forward() {
    let net = net();
    // Node 2.1 (keep, up, down) all off: passes its input through; its up and down receivers
    // also get a keep path. Some single paths off elsewhere.
    force_gate(&net, "backbone.all_cell_list.2.1", &[-20.0, -20.0, -20.0]);
    force_gate(&net, "backbone.all_cell_list.1.1", &[20.0, -20.0, 20.0]);
    force_gate(&net, "backbone.all_cell_list.1.0", &[20.0, -20.0]);
    force_gate(&net, "backbone.all_cell_list.0.1", &[20.0, 20.0, -20.0]);
    let x = input(2);
    let dense = forward(&net, &x, false);
    let skipped = forward(&net, &x, true);
    assert_close("skip vs dense", &skipped, &dense, 1e-5, 1e-5).unwrap();
    let record = net.last_record().unwrap();
    assert!(record.skipped);
    let node = record
        .alphas
        .iter()
        .find(|a| a.layer == Some(2) && a.scale == 1)
        .unwrap();
    assert!(node.alphas.try_to_vec().unwrap().iter().all(|&a| a == 0.0));
    // The same real FLOPs as the dense forward's accounting, under the full space's.
    net.set_skip_in_eval(false);
    let dense_real = net.forward_routed(&x).unwrap().1.real;
    let full: f64 = net.full_space_flops([64, 64]).iter().map(|p| p.1).sum();
    for (s, d) in record.real.iter().zip(&dense_real) {
        assert!(
            (s - d).abs() < 1e-6 * d,
            "skipping real FLOPs {s}, dense accounting {d}"
        );
        assert!(*s < 0.95 * full, "real {s} not under the full space {full}");
    }
}

#[test]
fn a_node_with_all_alphas_zero_passes_its_input_through() {
    moeseg::tensor::manual_seed(9);
    let cell = Cell::new(8, true, true, 1.5, false).unwrap();
    moeseg::nn::set_training(&cell, false);
    let bias = named_tensors(&cell)
        .into_iter()
        .find(|(n, _, _)| n == "gate_conv_beta.2.bias")
        .unwrap()
        .1;
    bias.replace_data(&Tensor::full([3], -50.0, &bias.device()).unwrap())
        .unwrap();
    let mut rng = Rng::new(2);
    let x = Tensor::randn([2, 8, 8, 8], 0.0, 1.0, &mut rng).unwrap();
    let out = cell.forward_dense(&x).unwrap();
    assert_close("keep = input", &out.keep.value, &x, 0.0, 0.0).unwrap();
    for branch in [out.up.unwrap(), out.down.unwrap()] {
        let zeros = branch.value.zeros_like().unwrap();
        assert_close("up/down = 0", &branch.value, &zeros, 0.0, 0.0).unwrap();
    }
}

/// Random gates (biases around 0, so α is 0 for some images and paths and not for others): a
/// batch through the skipping forward equals each image through it alone.
#[test]
fn grouped_batch_equals_images_one_by_one() {
    let net = net();
    let mut rng = Rng::new(4);
    for (name, tensor, _) in named_tensors(&net) {
        if name.ends_with("gate_conv_beta.2.bias") {
            let n = tensor.numel();
            let values: Vec<f32> = (0..n).map(|_| rng.uniform(-0.6, 0.4)).collect();
            tensor
                .replace_data(&Tensor::from_vec(values, [n]).unwrap())
                .unwrap();
        }
    }
    let x = input(4);
    let batch = forward(&net, &x, true);
    let alphas = net.last_record().unwrap().alphas;
    let zeros = alphas
        .iter()
        .flat_map(|a| a.alphas.try_to_vec().unwrap())
        .filter(|&v| v == 0.0)
        .count();
    let total: usize = alphas.iter().map(|a| a.alphas.numel()).sum();
    assert!(
        zeros > 0 && zeros < total,
        "{zeros} of {total} alphas are 0"
    );
    for b in 0..4 {
        let one = forward(&net, &x.narrow(0, b, 1).unwrap(), true);
        assert_close(
            &format!("image {b}"),
            &batch.narrow(0, b, 1).unwrap(),
            &one,
            1e-5,
            1e-5,
        )
        .unwrap();
    }
}

#[test]
fn budget_ramp_and_loss() {
    let budget = BudgetConfig {
        constrain: true,
        loss_weight: 0.8,
        mu: 0.1,
        flops_all: 100.0,
        unupdate_rate: 0.4,
        warm_up: true,
    };
    assert_eq!(budget.ramp(0.39), None);
    assert!((budget.ramp(0.41).unwrap() - 0.5).abs() < 1e-6);
    assert_eq!(budget.ramp(0.9), Some(1.0));
    let expected = Tensor::from_vec(vec![40.0, 60.0], [2]).unwrap();
    // 0.8 · 0.5 · (50/100 − 0.1)² = 0.064.
    let loss = budget
        .loss(&expected, 0.41)
        .unwrap()
        .unwrap()
        .item()
        .unwrap();
    assert!((loss - 0.064).abs() < 1e-6, "{loss}");
    let off = BudgetConfig {
        constrain: false,
        ..budget
    };
    assert!(off.loss(&expected, 0.9).unwrap().is_none());
}

/// clip_grad_norm against a hand computation: gradients (3, 4) and (12) have norm 13.
#[test]
fn clip_grad_norm_scales_to_the_max_norm() {
    let a = Tensor::from_vec(vec![1.0, 2.0], [2])
        .unwrap()
        .with_requires_grad(true);
    let b = Tensor::from_vec(vec![1.0], [1])
        .unwrap()
        .with_requires_grad(true);
    let weights_a = Tensor::from_vec(vec![3.0, 4.0], [2]).unwrap();
    let weights_b = Tensor::from_vec(vec![12.0], [1]).unwrap();
    let loss = a
        .mul(&weights_a)
        .unwrap()
        .sum_all()
        .unwrap()
        .add(&b.mul(&weights_b).unwrap().sum_all().unwrap())
        .unwrap();
    loss.backward().unwrap();
    let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
    let norm = clip_grad_norm(&params, 6.5).unwrap();
    assert!((norm - 13.0).abs() < 1e-5);
    let scale = 6.5 / (13.0 + 1e-6);
    let got_a = a.grad().unwrap().try_to_vec().unwrap();
    let got_b = b.grad().unwrap().try_to_vec().unwrap();
    for (g, e) in got_a.iter().chain(&got_b).zip([3.0, 4.0, 12.0]) {
        assert!(
            (f64::from(*g) - e * scale).abs() < 1e-5,
            "{g} vs {}",
            e * scale
        );
    }
}

/// `input_convention = bgr255`: the network sees BGR 0–255 minus PIXEL_MEAN, computed from the
/// ImageNet-normalised RGB input (checked against the conversion done by hand on the host).
#[test]
fn bgr255_input_convention() {
    use moeseg::models::dynamic::{InputConvention, PIXEL_MEAN_BGR};
    let mut net = net();
    let x = input(1);
    net.input_convention = InputConvention::Bgr255;
    let converted_inside = forward(&net, &x, true);
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    let values = x.try_to_vec().unwrap();
    let plane = 64 * 64;
    let mut bgr = vec![0f32; values.len()];
    for o in 0..3 {
        let c = 2 - o;
        for i in 0..plane {
            bgr[o * plane + i] =
                (values[c * plane + i] * std[c] + mean[c]) * 255.0 - PIXEL_MEAN_BGR[o];
        }
    }
    net.input_convention = InputConvention::Imagenet;
    let by_hand = forward(&net, &Tensor::from_vec(bgr, [1, 3, 64, 64]).unwrap(), true);
    // Rounding differs (the network folds std and mean into one scale and shift), so the
    // tolerance is relative to the logits' scale.
    let scale = by_hand
        .try_to_vec()
        .unwrap()
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()));
    assert_close("bgr255", &converted_inside, &by_hand, 1e-4, 1e-4 * scale).unwrap();
}
