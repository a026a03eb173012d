//! Optimizers and lr schedules: PyTorch fixtures (`scripts/fixtures/optim.py`), bit-identical
//! resume through a safetensors checkpoint, and argument / checkpoint errors.

use moeseg::io::safetensors;
use moeseg::optim::{
    Adam, AdamOptions, GroupOptimizer, GroupOptions, LrSchedule, LrScheduler, Optimizer,
    ParamGroup, Sgd, SgdOptions,
};
use moeseg::testing::{assert_close, Fixtures};
use moeseg::{DType, Rng, Tensor};
use std::collections::BTreeMap;

/// The elements on the host; a failed copy fails the test.
trait ToHost {
    fn to_host(&self) -> Vec<f32>;
}

impl ToHost for Tensor {
    fn to_host(&self) -> Vec<f32> {
        self.try_to_vec().unwrap()
    }
}

/// Parameters of the fixture cases, by group (as in the Python script).
const GROUPS: [&[&str]; 2] = [&["w", "b"], &["c"]];
const STEPS: usize = 5;

fn fixtures() -> Fixtures {
    Fixtures::load("optim").unwrap()
}

/// Sets each parameter's gradient to exactly `g` by back-propagating `Σ (p ⊙ g).sum()`.
fn set_grads(grads: &[(&Tensor, Tensor)]) {
    let mut loss: Option<Tensor> = None;
    for (p, g) in grads {
        let term = p.mul(g).unwrap().sum_all().unwrap();
        loss = Some(match loss {
            None => term,
            Some(l) => l.add(&term).unwrap(),
        });
    }
    if let Some(loss) = loss {
        loss.backward().unwrap();
    }
}

/// Replays a fixture case: the same initial values and per-step gradients (some parameters
/// get none on some steps), comparing every parameter after every step.
fn replay<O: GroupOptions>(fx: &Fixtures, case: &str, options: [O; 2]) {
    let get = |key: String| fx.get(&key).unwrap();
    let params: BTreeMap<&str, Tensor> = GROUPS
        .iter()
        .flat_map(|g| g.iter())
        .map(|&n| (n, get(format!("{case}.init.{n}")).with_requires_grad(true)))
        .collect();
    let groups = GROUPS
        .iter()
        .zip(options)
        .map(|(names, o)| {
            let named = names
                .iter()
                .map(|&n| (n.to_string(), params[n].clone()))
                .collect();
            ParamGroup::new(named, o)
        })
        .collect();
    let mut opt = GroupOptimizer::new(groups).unwrap();
    for step in 1..=STEPS {
        opt.zero_grad();
        let grads: Vec<(&Tensor, Tensor)> = params
            .iter()
            .filter(|(n, _)| fx.has(&format!("{case}.step{step}.grad.{n}")))
            .map(|(n, p)| (p, get(format!("{case}.step{step}.grad.{n}"))))
            .collect();
        set_grads(&grads);
        for (p, g) in &grads {
            assert_eq!(
                p.grad().unwrap().to_host(),
                g.to_host(),
                "{case}: grad is not g"
            );
        }
        opt.step().unwrap();
        for (n, p) in &params {
            let key = format!("{case}.step{step}.{n}");
            assert_close(&key, p, &get(key.clone()), 1e-6, 1e-7).unwrap();
        }
    }
    assert_eq!(opt.param_step("w"), Some(STEPS as u64));
    assert_eq!(
        opt.param_step("b"),
        Some(STEPS as u64 - 1),
        "b has no grad at step 2"
    );
}

fn sgd(lr: f64, weight_decay: f64, momentum: f64, dampening: f64, nesterov: bool) -> SgdOptions {
    SgdOptions {
        lr,
        weight_decay,
        momentum,
        dampening,
        nesterov,
    }
}

#[test]
fn sgd_matches_pytorch() {
    let fx = fixtures();
    replay(
        &fx,
        "sgd_plain",
        [SgdOptions::new(0.1), SgdOptions::new(0.03)],
    );
    replay(
        &fx,
        "sgd_momentum",
        [
            sgd(0.05, 1e-2, 0.9, 0.1, false),
            sgd(0.02, 1e-3, 0.9, 0.1, false),
        ],
    );
    replay(
        &fx,
        "sgd_nesterov",
        [
            sgd(0.05, 1e-3, 0.9, 0.0, true),
            sgd(0.01, 0.0, 0.9, 0.0, true),
        ],
    );
}

#[test]
fn adam_and_adamw_match_pytorch() {
    let fx = fixtures();
    replay(
        &fx,
        "adam",
        [AdamOptions::new(1e-2), AdamOptions::new(3e-3)],
    );
    let adam_wd = |lr, weight_decay| AdamOptions {
        betas: (0.8, 0.99),
        eps: 1e-6,
        weight_decay,
        ..AdamOptions::new(lr)
    };
    replay(&fx, "adam_wd", [adam_wd(1e-2, 1e-2), adam_wd(2e-2, 0.1)]);
    let adamw = |lr, weight_decay| AdamOptions {
        weight_decay,
        ..AdamOptions::adamw(lr)
    };
    replay(&fx, "adamw", [adamw(1e-2, 1e-2), adamw(5e-3, 0.1)]);
    let amsgrad = |lr, weight_decay| AdamOptions {
        amsgrad: true,
        weight_decay,
        ..AdamOptions::new(lr)
    };
    replay(
        &fx,
        "adam_amsgrad",
        [amsgrad(1e-2, 0.0), amsgrad(3e-3, 1e-2)],
    );
}

#[test]
fn schedules_match_pytorch() {
    let fx = fixtures();
    let cases = [
        ("constant", LrSchedule::Constant),
        ("poly", LrSchedule::poly(10)),
        ("cosine", LrSchedule::cosine(12, 1e-3)),
        ("warmup_poly", LrSchedule::poly(9).with_warmup(3, 0.1)),
        (
            "warmup_cosine",
            LrSchedule::cosine(8, 1e-3).with_warmup(4, 0.25),
        ),
    ];
    for (case, schedule) in cases {
        let expected = fx.get(&format!("sched_{case}.lr")).unwrap();
        let p = |v: f32| Tensor::full([1], v, &Default::default()).unwrap();
        let groups = vec![
            ParamGroup::new(vec![("a".into(), p(0.0))], SgdOptions::new(0.1)),
            ParamGroup::new(vec![("b".into(), p(0.0))], SgdOptions::new(0.02)),
        ];
        let mut opt = Sgd::new(groups).unwrap();
        let mut sched = LrScheduler::new(schedule, &mut opt).unwrap();
        let mut rows = opt.lrs();
        for _ in 0..expected.dims()[0] - 1 {
            sched.step(&mut opt).unwrap();
            assert_eq!(sched.lrs(), opt.lrs());
            rows.extend(opt.lrs());
        }
        let actual = Tensor::from_vec(
            rows.iter().map(|&x| x as f32).collect(),
            expected.shape().clone(),
        )
        .unwrap();
        assert_close(case, &actual, &expected, 1e-6, 1e-9).unwrap();
    }
    // Past T the cosine stays at its minimum (PyTorch's would rise again).
    assert_eq!(LrSchedule::cosine(4, 0.01).lr(1.0, 9), 0.01);
    assert_eq!(LrSchedule::poly(4).lr(1.0, 9), 0.0);
}

/// Fresh parameters from a seed, in a model-like named list.
fn model(seed: u64) -> Vec<(String, Tensor)> {
    let mut rng = Rng::new(seed);
    [
        ("backbone.conv.weight", vec![3, 2, 3]),
        ("head.bias", vec![4]),
    ]
    .into_iter()
    .map(|(n, s)| {
        let t = Tensor::randn(s, 0.0, 1.0, &mut rng).unwrap();
        (n.to_string(), t.with_requires_grad(true))
    })
    .collect()
}

/// Deterministic gradients for step `step`; the bias gets none on step 2.
fn train_step(
    params: &[(String, Tensor)],
    opt: &mut dyn Optimizer,
    sched: &mut LrScheduler,
    step: u64,
) {
    let mut rng = Rng::new(100 + step);
    let grads: Vec<(&Tensor, Tensor)> = params
        .iter()
        .filter(|(n, _)| !(step == 2 && n == "head.bias"))
        .map(|(_, p)| {
            let g = Tensor::randn(p.shape().clone(), 0.0, 1.0, &mut rng).unwrap();
            (p, g)
        })
        .collect();
    opt.zero_grad();
    set_grads(&grads);
    opt.step().unwrap();
    sched.step(opt).unwrap();
}

fn two_groups<O: GroupOptions>(params: &[(String, Tensor)], options: [O; 2]) -> GroupOptimizer<O> {
    let [a, b] = options;
    GroupOptimizer::new(vec![
        ParamGroup::new(params[..1].to_vec(), a),
        ParamGroup::new(params[1..].to_vec(), b),
    ])
    .unwrap()
}

/// 5 steps straight vs 3 steps, checkpoint (model + optimizer + scheduler in one file), fresh
/// objects, load, 2 steps: parameters and state must be bit-identical.
fn check_resume<O: GroupOptions>(name: &str, options: [O; 2]) {
    let schedule = LrSchedule::cosine(6, 1e-4).with_warmup(2, 0.2);
    let run = |params: &[(String, Tensor)], steps: std::ops::Range<u64>, load: Option<&_>| {
        let mut opt = two_groups(params, options.clone());
        let mut sched = LrScheduler::new(schedule.clone(), &mut opt).unwrap();
        if let Some(tensors) = load {
            opt.load_state(tensors).unwrap();
            sched.load_state(tensors).unwrap();
        }
        for step in steps {
            train_step(params, &mut opt, &mut sched, step);
        }
        (opt, sched)
    };
    let straight = model(1);
    let (opt_a, _) = run(&straight, 1..6, None);

    let first = model(1);
    let (opt_b, sched_b) = run(&first, 1..4, None);
    let dir = std::env::temp_dir().join(format!("moeseg-optim-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("checkpoint.safetensors");
    let mut named = first.clone();
    named.extend(opt_b.state_tensors());
    named.extend(sched_b.state_tensors());
    safetensors::save(
        &path,
        named.iter().map(|(n, t)| (n.as_str(), t, DType::F32)),
    )
    .unwrap();
    let loaded: BTreeMap<String, Tensor> = safetensors::load(&path)
        .unwrap()
        .into_iter()
        .map(|(k, (t, _))| (k, t))
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    let resumed: Vec<(String, Tensor)> = model(99)
        .into_iter()
        .map(|(n, t)| {
            t.replace_data(&loaded[&n]).unwrap();
            (n, t)
        })
        .collect();
    let (opt_c, _) = run(&resumed, 4..6, Some(&loaded));

    for ((n, a), (_, c)) in straight.iter().zip(&resumed) {
        assert_eq!(
            a.to_host(),
            c.to_host(),
            "{name}: parameter {n} differs after resuming"
        );
    }
    let (state_a, state_c) = (opt_a.state_tensors(), opt_c.state_tensors());
    assert_eq!(state_a.len(), state_c.len());
    for ((ka, a), (kc, c)) in state_a.iter().zip(&state_c) {
        assert_eq!(ka, kc);
        assert_eq!(
            a.to_host(),
            c.to_host(),
            "{name}: {ka} differs after resuming"
        );
    }
    assert_eq!(opt_a.lrs(), opt_c.lrs());
}

#[test]
fn resuming_from_a_checkpoint_is_bit_identical() {
    let momentum = SgdOptions {
        momentum: 0.9,
        dampening: 0.1,
        weight_decay: 1e-2,
        ..SgdOptions::new(0.1)
    };
    check_resume("sgd", [momentum, SgdOptions::new(0.037)]);
    let amsgrad = AdamOptions {
        amsgrad: true,
        weight_decay: 1e-2,
        ..AdamOptions::new(1e-2)
    };
    check_resume("adam", [amsgrad, AdamOptions::adamw(3.3e-3)]);
}

#[test]
fn invalid_hyper_parameters_are_rejected_with_their_name() {
    let params = model(3);
    let sgd_err = |o: SgdOptions| {
        Sgd::with_params(params.clone(), o)
            .err()
            .unwrap()
            .to_string()
    };
    assert!(sgd_err(SgdOptions::new(-0.1)).contains("lr"));
    let bad_momentum = SgdOptions {
        momentum: -0.5,
        ..SgdOptions::new(0.1)
    };
    assert!(sgd_err(bad_momentum).contains("momentum"));
    let nesterov = SgdOptions {
        nesterov: true,
        ..SgdOptions::new(0.1)
    };
    assert!(sgd_err(nesterov).contains("Nesterov"));
    let damped = SgdOptions {
        nesterov: true,
        momentum: 0.9,
        dampening: 0.1,
        ..SgdOptions::new(0.1)
    };
    assert!(sgd_err(damped).contains("dampening"));

    let adam_err = |o: AdamOptions| {
        Adam::with_params(params.clone(), o)
            .err()
            .unwrap()
            .to_string()
    };
    let beta = AdamOptions {
        betas: (0.9, 1.0),
        ..AdamOptions::new(1e-3)
    };
    assert!(adam_err(beta).contains("index 1"));
    let eps = AdamOptions {
        eps: -1.0,
        ..AdamOptions::new(1e-3)
    };
    assert!(adam_err(eps).contains("eps"));

    let mut twice = params.clone();
    twice.push(("again".into(), params[0].1.clone()));
    let err = Sgd::with_params(twice, SgdOptions::new(0.1)).err().unwrap();
    assert!(err.to_string().contains("`again`"), "{err}");
    let non_leaf = vec![("x".to_string(), params[0].1.mul_scalar(2.0).unwrap())];
    let err = Sgd::with_params(non_leaf, SgdOptions::new(0.1))
        .err()
        .unwrap();
    assert!(err.to_string().contains("leaf"), "{err}");

    let mut opt = Sgd::with_params(params.clone(), SgdOptions::new(0.1)).unwrap();
    assert!(opt.set_lr(f64::NAN).is_err());
    assert!(opt
        .set_group_lr(1, 0.1)
        .unwrap_err()
        .to_string()
        .contains("group 1"));
    assert!(LrScheduler::new(LrSchedule::poly(0), &mut opt).is_err());
    assert!(LrScheduler::new(LrSchedule::Constant.with_warmup(3, 0.0), &mut opt).is_err());
}

#[test]
fn step_skips_parameters_without_grad_and_zero_grad_clears() {
    let params = model(4);
    let before: Vec<Vec<f32>> = params.iter().map(|(_, t)| t.to_host()).collect();
    let mut opt = Adam::with_params(params.clone(), AdamOptions::new(0.1)).unwrap();
    let g = Tensor::ones(params[0].1.shape().clone(), &Default::default()).unwrap();
    set_grads(&[(&params[0].1, g)]);
    opt.step().unwrap();
    assert_ne!(params[0].1.to_host(), before[0]);
    assert_eq!(params[1].1.to_host(), before[1]);
    assert_eq!(opt.param_step("head.bias"), Some(0));
    assert!(params[0].1.requires_grad() && params[0].1.is_leaf());
    let names: Vec<String> = opt.state_tensors().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"optim.state.backbone.conv.weight.exp_avg".to_string()));
    assert!(!names.contains(&"optim.state.head.bias.exp_avg".to_string()));
    opt.zero_grad();
    assert!(params.iter().all(|(_, p)| p.grad().is_none()));
}

#[test]
fn loading_a_bad_checkpoint_names_the_key_and_changes_nothing() {
    let params = model(5);
    let options = SgdOptions {
        momentum: 0.9,
        ..SgdOptions::new(0.1)
    };
    let mut opt = Sgd::with_params(params.clone(), options).unwrap();
    let grads: Vec<(&Tensor, Tensor)> = params
        .iter()
        .map(|(_, p)| (p, p.ones_like().unwrap()))
        .collect();
    set_grads(&grads);
    opt.step().unwrap();
    let good: BTreeMap<String, Tensor> = opt.state_tensors().into_iter().collect();
    let load_err = |tensors: &BTreeMap<String, Tensor>| {
        let mut fresh = Sgd::with_params(params.clone(), options).unwrap();
        let err = fresh.load_state(tensors).unwrap_err().to_string();
        assert_eq!(
            fresh.param_step("head.bias"),
            Some(0),
            "state changed on error"
        );
        err
    };

    let mut missing = good.clone();
    missing.remove("optim.state.head.bias.momentum_buffer");
    let err = load_err(&missing);
    assert!(
        err.contains("optim.state.head.bias.momentum_buffer"),
        "{err}"
    );

    let mut misshaped = good.clone();
    misshaped.insert(
        "optim.state.head.bias.momentum_buffer".into(),
        Tensor::zeros([5], &Default::default()).unwrap(),
    );
    let err = load_err(&misshaped);
    assert!(
        err.contains("head.bias.momentum_buffer") && err.contains("[5]"),
        "{err}"
    );

    let mut extra = good.clone();
    extra.insert(
        "optim.state.decoder.weight.step".into(),
        Tensor::scalar(1.0),
    );
    let err = load_err(&extra);
    assert!(err.contains("optim.state.decoder.weight.step"), "{err}");

    let mut no_group = good.clone();
    no_group.remove("optim.group.0.lr");
    let err = load_err(&no_group);
    assert!(err.contains("optim.group.0.lr"), "{err}");

    let adam_err = Adam::with_params(params.clone(), AdamOptions::new(1e-3))
        .unwrap()
        .load_state(&good)
        .unwrap_err()
        .to_string();
    assert!(adam_err.contains("optim.group.0.beta1"), "{adam_err}");

    let mut fresh = Sgd::with_params(params.clone(), options).unwrap();
    fresh.load_state(&good).unwrap();
    assert_eq!(fresh.param_step("head.bias"), Some(1));
}
