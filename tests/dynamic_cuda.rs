//! One training step of a reduced dynamic routing network on the emulated CUDA device
//! (`cuda-emu:0`: the CUDA kernels compiled by the host C++ compiler and run on the CPU), or on
//! CUDA device 0 when there is one, against the same step on the CPU: logits, expected FLOPs,
//! loss (cross-entropy + budget), every gradient, the SGD update with the gate LR multiplier
//! and gradient clipping, and the skipping eval forward.

use moeseg::models::dynamic::{BudgetConfig, DynamicConfig, DynamicNet4Seg};
use moeseg::nn::{named_parameters, set_training, to_device};
use moeseg::ops::loss::CrossEntropyOptions;
use moeseg::optim::clip_grad_norm;
use moeseg::testing::assert_close;
use moeseg::train::config::OptimConfig;
use moeseg::train::setup::build_optimizer;
use moeseg::{Device, Rng, Tensor};

fn device_or_skip(test: &str) -> Option<Device> {
    if let Ok((device, _)) = Device::select("cuda:0") {
        return Some(device);
    }
    match Device::select("cuda-emu:0") {
        Ok((device, _)) => Some(device),
        Err(e) => {
            assert!(
                std::env::var_os("MOESEG_REQUIRE_EMU").is_none(),
                "{test}: MOESEG_REQUIRE_EMU is set but the emulated device cannot run: {e}"
            );
            println!("skipped: {test}: no GPU and no emulated CUDA device ({e})");
            None
        }
    }
}

fn net_on(device: &Device) -> DynamicNet4Seg {
    moeseg::tensor::manual_seed(21);
    let net = DynamicNet4Seg::new(DynamicConfig {
        layers: 3,
        channels: 8,
        num_classes: 4,
        small_gate: true,
        gate_bias: 1.5,
    })
    .unwrap();
    to_device(&net, device).unwrap();
    net
}

/// Host copies of what a step produced: logits, expected FLOPs, loss, gradients, updated
/// parameters.
type StepResult = (
    Tensor,
    Tensor,
    f32,
    Vec<(String, Tensor)>,
    Vec<(String, Tensor)>,
);

/// Forward, loss, backward and one SGD step (gate lr × 2.5, clip at 0.5); returns the logits,
/// the expected FLOPs, the loss, the gradients and the updated parameters, on the host.
fn step(device: &Device) -> StepResult {
    let net = net_on(device);
    set_training(&net, true);
    let mut rng = Rng::new(8);
    let input = Tensor::randn([2, 3, 64, 64], 0.0, 1.0, &mut rng).unwrap();
    let labels: Vec<f32> = (0..2 * 64 * 64).map(|i| ((i / 7) % 4) as f32).collect();
    let target = Tensor::from_vec(labels, [2, 64, 64]).unwrap();
    let (logits, record) = net
        .forward_routed(&input.to_device(device).unwrap())
        .unwrap();
    let budget = BudgetConfig {
        constrain: true,
        flops_all: 2.0,
        ..BudgetConfig::default()
    };
    let loss = logits
        .cross_entropy(
            &target.to_device(device).unwrap(),
            CrossEntropyOptions::default(),
        )
        .unwrap()
        .add(&budget.loss(&record.expected, 0.5).unwrap().unwrap())
        .unwrap();
    let params = named_parameters(&net);
    let mut optimizer = build_optimizer(
        &OptimConfig {
            lr: 0.1,
            gate_lr_multi: 2.5,
            ..OptimConfig::default()
        },
        params.clone(),
    )
    .unwrap();
    loss.backward().unwrap();
    // A copy (on the CPU `to_device` shares the storage, which clipping then changes).
    let host = |t: &Tensor| Tensor::from_vec(t.try_to_vec().unwrap(), t.shape().clone()).unwrap();
    let grads = params
        .iter()
        .map(|(n, p)| (n.clone(), host(&p.grad().unwrap())))
        .collect();
    clip_grad_norm(&params, 0.5).unwrap();
    optimizer.step().unwrap();
    let updated = params.iter().map(|(n, p)| (n.clone(), host(p))).collect();
    (
        host(&logits),
        host(&record.expected),
        loss.item().unwrap(),
        grads,
        updated,
    )
}

fn try_close(what: &str, actual: &Tensor, expected: &Tensor, rel: f32) -> Result<(), String> {
    let scale = expected
        .try_to_vec()
        .unwrap()
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()));
    assert_close(what, actual, expected, rel, rel * scale + 1e-6)
}

fn close_scaled(what: &str, actual: &Tensor, expected: &Tensor, rel: f32) {
    try_close(what, actual, expected, rel).unwrap();
}

#[test]
fn a_training_step_on_the_cuda_device_matches_the_cpu() {
    let Some(device) = device_or_skip("a_training_step_on_the_cuda_device_matches_the_cpu") else {
        return;
    };
    let cpu = step(&Device::Cpu);
    let dev = step(&device);
    close_scaled("logits", &dev.0, &cpu.0, 1e-4);
    close_scaled("expected FLOPs", &dev.1, &cpu.1, 1e-5);
    assert!(
        (dev.2 - cpu.2).abs() <= 1e-4 * cpu.2.abs(),
        "loss {} vs {}",
        dev.2,
        cpu.2
    );
    let mut failed = Vec::new();
    for ((name, d), (_, c)) in dev.3.iter().zip(&cpu.3) {
        if let Err(e) = try_close(&format!("grad {name}"), d, c, 1e-3) {
            failed.push(e);
        }
    }
    assert!(
        failed.is_empty(),
        "{} gradients differ:\n{}",
        failed.len(),
        failed.join("\n")
    );
    for ((name, d), (_, c)) in dev.4.iter().zip(&cpu.4) {
        close_scaled(&format!("updated {name}"), d, c, 1e-4);
    }
}

#[test]
fn the_skipping_eval_forward_on_the_cuda_device_matches_the_cpu() {
    let Some(device) =
        device_or_skip("the_skipping_eval_forward_on_the_cuda_device_matches_the_cpu")
    else {
        return;
    };
    let mut rng = Rng::new(3);
    let input = Tensor::randn([3, 3, 64, 64], 0.0, 1.0, &mut rng).unwrap();
    let logits = |device: &Device| {
        let net = net_on(device);
        set_training(&net, false);
        // Biases around 0: per-image routes differ.
        let mut rng = Rng::new(4);
        for (name, tensor) in named_parameters(&net) {
            if name.ends_with("gate_conv_beta.2.bias") {
                let n = tensor.numel();
                let values: Vec<f32> = (0..n).map(|_| rng.uniform(-0.6, 0.4)).collect();
                tensor
                    .replace_data(
                        &Tensor::from_vec(values, [n])
                            .unwrap()
                            .to_device(device)
                            .unwrap(),
                    )
                    .unwrap();
            }
        }
        let out = net.forward(&input.to_device(device).unwrap()).unwrap();
        out.to_device(&Device::Cpu).unwrap()
    };
    use moeseg::nn::Module;
    close_scaled(
        "skipping eval logits",
        &logits(&device),
        &logits(&Device::Cpu),
        1e-4,
    );
}
