//! Modules and layers: state-dict names and order, train / eval, replacement by path, layer
//! behaviour, and an end-to-end conv net step checked against PyTorch.

use moeseg::nn::ConvOptions;
use moeseg::nn::{
    get_module, named_parameters, named_tensors, parameter_count, replace_module, set_training,
    ActivationLayer, BatchNorm2d, Conv2d, MaxPool2d, Module, Role, Sequential, Upsample,
};
use moeseg::ops::interpolate::{InterpolateMode, Resize};
use moeseg::ops::loss::CrossEntropyOptions;
use moeseg::ops::pool::MaxPool2dParams;
use moeseg::optim::{Optimizer, Sgd, SgdOptions};
use moeseg::testing::{assert_close, Fixtures};
use moeseg::{DType, Tensor};

/// The elements on the host; a failed copy fails the test.
trait ToHost {
    fn to_host(&self) -> Vec<f32>;
}

impl ToHost for Tensor {
    fn to_host(&self) -> Vec<f32> {
        self.try_to_vec().unwrap()
    }
}

/// The net of `scripts/fixtures/convnet.py`, with the same child indices.
fn convnet() -> Sequential {
    Sequential::default()
        .push(Conv2d::new(3, 8, 3, ConvOptions::new().padding(1)).unwrap())
        .push(BatchNorm2d::new(8).unwrap())
        .push(ActivationLayer::relu())
        .push(MaxPool2d(MaxPool2dParams::new(2)))
        .push(Conv2d::new(8, 8, 3, ConvOptions::new().padding(2).dilation(2)).unwrap())
        .push(BatchNorm2d::new(8).unwrap())
        .push(ActivationLayer::relu())
        .push(Upsample {
            resize: Resize::Scale([2.0, 2.0]),
            mode: InterpolateMode::Bilinear {
                align_corners: false,
            },
        })
        .push(Conv2d::new(8, 5, 1, ConvOptions::new()).unwrap())
}

#[test]
fn state_dict_names_order_and_roles_match_pytorch() {
    let net = convnet();
    let names: Vec<(String, Role)> = named_tensors(&net)
        .into_iter()
        .map(|(n, _, r)| (n, r))
        .collect();
    // PyTorch's order: each module's parameters, then its buffers, children in order.
    let expected = [
        ("0.weight", Role::Parameter),
        ("0.bias", Role::Parameter),
        ("1.weight", Role::Parameter),
        ("1.bias", Role::Parameter),
        ("1.running_mean", Role::Buffer(DType::F32)),
        ("1.running_var", Role::Buffer(DType::F32)),
        ("1.num_batches_tracked", Role::Buffer(DType::I64)),
        ("4.weight", Role::Parameter),
        ("4.bias", Role::Parameter),
        ("5.weight", Role::Parameter),
        ("5.bias", Role::Parameter),
        ("5.running_mean", Role::Buffer(DType::F32)),
        ("5.running_var", Role::Buffer(DType::F32)),
        ("5.num_batches_tracked", Role::Buffer(DType::I64)),
        ("8.weight", Role::Parameter),
        ("8.bias", Role::Parameter),
    ];
    let expected: Vec<(String, Role)> = expected.iter().map(|(n, r)| (n.to_string(), *r)).collect();
    assert_eq!(names, expected);
    // 3·8·9+8 + 16 + 8·8·9+8 + 16 + 8·5+5 = 224 + 16 + 584 + 16 + 45
    assert_eq!(parameter_count(&net), 885);
    let fx = Fixtures::load("convnet").unwrap();
    for (name, tensor, _) in named_tensors(&net) {
        let reference = fx.get(&format!("init.{name}")).unwrap();
        assert_eq!(tensor.shape(), reference.shape(), "{name}");
    }
}

#[test]
fn one_training_step_matches_pytorch() {
    let fx = Fixtures::load("convnet").unwrap();
    let net = convnet();
    for (name, tensor, _) in named_tensors(&net) {
        tensor
            .replace_data(&fx.get(&format!("init.{name}")).unwrap())
            .unwrap();
    }
    let (input, target) = (fx.get("input").unwrap(), fx.get("target").unwrap());
    let loss = net
        .forward(&input)
        .unwrap()
        .cross_entropy(&target, CrossEntropyOptions::default())
        .unwrap();
    assert_close(
        "loss",
        &loss.reshape(&[1]).unwrap(),
        &fx.get("loss").unwrap(),
        1e-5,
        1e-6,
    )
    .unwrap();
    loss.backward().unwrap();
    for (name, p) in named_parameters(&net) {
        let grad = p.grad().unwrap();
        assert_close(
            &format!("grad.{name}"),
            &grad,
            &fx.get(&format!("grad.{name}")).unwrap(),
            1e-4,
            1e-6,
        )
        .unwrap();
    }
    let options = SgdOptions {
        momentum: 0.9,
        weight_decay: 1e-4,
        ..SgdOptions::new(0.1)
    };
    let mut sgd = Sgd::with_params(named_parameters(&net), options).unwrap();
    sgd.step().unwrap();
    for (name, t, _) in named_tensors(&net) {
        assert_close(
            &format!("after.{name}"),
            &t,
            &fx.get(&format!("after.{name}")).unwrap(),
            1e-4,
            1e-6,
        )
        .unwrap();
    }
}

#[test]
fn training_loop_on_a_tiny_task_lowers_the_loss() {
    moeseg::tensor::manual_seed(1);
    let net = convnet();
    let mut rng = moeseg::Rng::new(5);
    // Task: the class of each pixel is the quadrant of its position; input channels encode
    // the position plus noise, so the net must learn a spatial rule.
    let (h, w) = (8, 8);
    let mut images = vec![0.0; 4 * 3 * h * w];
    let mut labels = vec![0.0; 4 * h * w];
    for b in 0..4 {
        for y in 0..h {
            for x in 0..w {
                let class = (y >= h / 2) as usize * 2 + (x >= w / 2) as usize;
                labels[(b * h + y) * w + x] = class as f32;
                images[((b * 3) * h + y) * w + x] = y as f32 / h as f32 + rng.normal(0.0, 0.05);
                images[((b * 3 + 1) * h + y) * w + x] = x as f32 / w as f32 + rng.normal(0.0, 0.05);
                images[((b * 3 + 2) * h + y) * w + x] = rng.normal(0.0, 0.05);
            }
        }
    }
    let images = Tensor::from_vec(images, [4, 3, h, w]).unwrap();
    let labels = Tensor::from_vec(labels, [4, h, w]).unwrap();
    let mut sgd = Sgd::with_params(named_parameters(&net), SgdOptions::new(0.1)).unwrap();
    let mut losses = Vec::new();
    for _ in 0..30 {
        let loss = net
            .forward(&images)
            .unwrap()
            .cross_entropy(&labels, CrossEntropyOptions::default())
            .unwrap();
        losses.push(loss.item().unwrap());
        loss.backward().unwrap();
        sgd.step().unwrap();
        sgd.zero_grad();
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(
        last < 0.5 * first,
        "loss went from {first} to {last}: {losses:?}"
    );
}

#[test]
fn train_eval_reaches_every_module_and_batch_norm_tracks_batches() {
    let net = convnet();
    let bn = |net: &Sequential| {
        get_module(net, "1")
            .unwrap()
            .as_any()
            .downcast_ref::<BatchNorm2d>()
            .unwrap()
            .is_training()
    };
    assert!(bn(&net));
    set_training(&net, false);
    assert!(!bn(&net));
    let x = Tensor::randn([2, 3, 6, 6], 0.0, 1.0, &mut moeseg::Rng::new(1)).unwrap();
    // Eval: running stats untouched, output deterministic.
    let a = net.forward(&x).unwrap().to_host();
    let b = net.forward(&x).unwrap().to_host();
    assert_eq!(a, b);
    let count = |net: &Sequential| {
        named_tensors(net)
            .into_iter()
            .find(|(n, ..)| n == "1.num_batches_tracked")
            .unwrap()
            .1
            .item()
            .unwrap()
    };
    assert_eq!(count(&net), 0.0);
    set_training(&net, true);
    net.forward(&x).unwrap();
    net.forward(&x).unwrap();
    assert_eq!(count(&net), 2.0);
}

#[test]
fn batch_norm_cumulative_average_when_momentum_is_none() {
    let bn = BatchNorm2d::with_options(1, 1e-5, None, false, true).unwrap();
    let first = Tensor::from_vec(vec![1.0, 3.0], [2, 1, 1, 1]).unwrap();
    let second = Tensor::from_vec(vec![5.0, 7.0], [2, 1, 1, 1]).unwrap();
    bn.forward(&first).unwrap();
    bn.forward(&second).unwrap();
    // Cumulative average of the batch means 2 and 6 (hand-derived), starting from 0 with
    // factor 1 then 1/2.
    assert_eq!(bn.running_mean.as_ref().unwrap().to_host(), vec![4.0]);
    // Unbiased variances 2 and 2.
    assert_eq!(bn.running_var.as_ref().unwrap().to_host(), vec![2.0]);
}

#[test]
fn modules_are_found_and_replaced_by_path_with_clear_errors() {
    let mut net = Sequential::default()
        .push(Conv2d::new(3, 4, 3, ConvOptions::new().padding(1)).unwrap())
        .push(
            Sequential::default()
                .push(Conv2d::new(4, 4, 3, ConvOptions::new().padding(1).no_bias()).unwrap()),
        );
    assert_eq!(get_module(&net, "1.0").unwrap().type_name(), "Conv2d");
    let err = get_module(&net, "1.3").unwrap_err().to_string();
    assert!(
        err.contains("`1.3`") && err.contains("children: 0"),
        "{err}"
    );
    let old = replace_module(&mut net, "1.0", Box::new(ActivationLayer::relu())).unwrap();
    assert_eq!(old.type_name(), "Conv2d");
    assert_eq!(get_module(&net, "1.0").unwrap().type_name(), "ReLU");
    let names: Vec<String> = named_parameters(&net).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["0.weight", "0.bias"]);
    let err = replace_module(&mut net, "0.weight", Box::new(ActivationLayer::relu()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("Conv2d") && err.contains("weight"), "{err}");
    assert!(Conv2d::new(3, 4, 3, ConvOptions::new().padding(1).groups(2)).is_err());
}

/// Trains `net` for the given steps on deterministic per-step batches.
fn train_steps(
    net: &Sequential,
    sgd: &mut Sgd,
    schedule: &mut moeseg::optim::LrScheduler,
    steps: std::ops::Range<u64>,
) {
    for step in steps {
        let mut rng = moeseg::Rng::new(100 + step);
        let x = Tensor::randn([2, 3, 6, 6], 0.0, 1.0, &mut rng).unwrap();
        let labels: Vec<f32> = (0..72).map(|_| rng.below(5) as f32).collect();
        let y = Tensor::from_vec(labels, [2, 6, 6]).unwrap();
        let loss = net
            .forward(&x)
            .unwrap()
            .cross_entropy(&y, CrossEntropyOptions::default())
            .unwrap();
        loss.backward().unwrap();
        sgd.step().unwrap();
        sgd.zero_grad();
        schedule.step(sgd).unwrap();
    }
}

#[test]
fn a_checkpoint_of_model_optimizer_and_schedule_resumes_exactly() {
    use moeseg::nn::state_dict::{load_state_dict, save_checkpoint, LoadOptions};
    use moeseg::optim::{LrSchedule, LrScheduler};
    let options = SgdOptions {
        momentum: 0.9,
        weight_decay: 1e-4,
        ..SgdOptions::new(0.05)
    };
    let fresh = || {
        moeseg::tensor::manual_seed(9);
        let net = convnet();
        let mut sgd = Sgd::with_params(named_parameters(&net), options).unwrap();
        let schedule = LrScheduler::new(LrSchedule::poly(6), &mut sgd).unwrap();
        (net, sgd, schedule)
    };
    // Uninterrupted: 4 steps.
    let (net_a, mut sgd_a, mut sched_a) = fresh();
    train_steps(&net_a, &mut sgd_a, &mut sched_a, 0..4);
    // Interrupted after 2 steps, saved, restored into fresh objects, 2 more steps.
    let (net_b, mut sgd_b, mut sched_b) = fresh();
    train_steps(&net_b, &mut sgd_b, &mut sched_b, 0..2);
    let dir = std::env::temp_dir().join(format!("moeseg-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("last.safetensors");
    let extra: Vec<(String, Tensor, DType)> = sgd_b
        .state_tensors()
        .into_iter()
        .chain(sched_b.state_tensors())
        .map(|(name, t)| (name, t, DType::F32))
        .collect();
    save_checkpoint(&path, &net_b, &extra).unwrap();

    moeseg::tensor::manual_seed(12345); // a different init, overwritten by the checkpoint
    let net_c = convnet();
    let mut sgd_c = Sgd::with_params(named_parameters(&net_c), options).unwrap();
    let mut sched_c = LrScheduler::new(LrSchedule::poly(6), &mut sgd_c).unwrap();
    let load = LoadOptions {
        skip_unexpected_prefixes: vec!["optim.".into(), "scheduler.".into()],
        ..LoadOptions::default()
    };
    load_state_dict(&net_c, &path, load).unwrap();
    let all: std::collections::BTreeMap<String, Tensor> = moeseg::io::safetensors::load(&path)
        .unwrap()
        .into_iter()
        .map(|(k, (t, _))| (k, t))
        .collect();
    sgd_c.load_state(&all).unwrap();
    sched_c.load_state(&all).unwrap();
    train_steps(&net_c, &mut sgd_c, &mut sched_c, 2..4);
    for ((name, a, _), (_, c, _)) in named_tensors(&net_a).into_iter().zip(named_tensors(&net_c)) {
        assert_eq!(a.to_host(), c.to_host(), "{name} differs after resuming");
    }
    assert_eq!(sgd_a.lrs(), sgd_c.lrs());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn simple_layers_follow_pytorch_defaults_and_modes() {
    use moeseg::nn::{ConvTranspose2d, Dropout, Linear, PReLU};
    use moeseg::ops::conv::ConvTranspose2dParams;
    moeseg::tensor::manual_seed(4);
    // Linear(20, 3): weight and bias within 1/√20 (kaiming-uniform a=√5).
    let linear = Linear::new(20, 3, true).unwrap();
    let bound = 1.0 / 20f32.sqrt();
    assert!(linear.weight.to_host().iter().all(|v| v.abs() <= bound));
    assert!(linear
        .bias
        .as_ref()
        .unwrap()
        .to_host()
        .iter()
        .all(|v| v.abs() <= bound));
    let y = linear
        .forward(&Tensor::ones([2, 5, 20], &moeseg::Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(y.dims(), &[2, 5, 3]);
    // ConvTranspose2d(4, 6, 3): weight [4, 6, 3, 3], PyTorch's fan-in is 6·9.
    let params = ConvTranspose2dParams {
        stride: [2, 2],
        padding: [1, 1],
        output_padding: [1, 1],
        ..ConvTranspose2dParams::default()
    };
    let up = ConvTranspose2d::new(4, 6, 3, params, true).unwrap();
    assert_eq!(up.weight.dims(), &[4, 6, 3, 3]);
    let bound = 1.0 / 54f32.sqrt();
    assert!(up.weight.to_host().iter().all(|v| v.abs() <= bound));
    let x = Tensor::ones([1, 4, 5, 7], &moeseg::Device::Cpu).unwrap();
    assert_eq!(up.forward(&x).unwrap().dims(), &[1, 6, 10, 14]);
    // PReLU: default slope 0.25 on negatives.
    let prelu = PReLU::new(1, 0.25).unwrap();
    let v = Tensor::from_vec(vec![-2.0, 3.0], [1, 2]).unwrap();
    assert_eq!(prelu.forward(&v).unwrap().to_host(), vec![-0.5, 3.0]);
    // Dropout: identity in eval, zeros some elements in training.
    let dropout = Dropout::new(0.5).unwrap();
    let ones = Tensor::ones([1000], &moeseg::Device::Cpu).unwrap();
    let trained = dropout.forward(&ones).unwrap().to_host();
    assert!(trained.contains(&0.0) && trained.contains(&2.0));
    set_training(&dropout, false);
    assert_eq!(dropout.forward(&ones).unwrap().to_host(), vec![1.0; 1000]);
    assert!(Dropout::new(1.5).is_err());
}
