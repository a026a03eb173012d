//! Gated ensembles (issue 18, `moe.md` §6): exactness of the combination, top-k execution,
//! frozen experts, the gate's gradient against finite differences, the class-map projection,
//! bad input, and one training step on the emulated CUDA device against the CPU.

mod common;

use common::{ok, TINY};
use moeseg::backend::Device;
use moeseg::data::ClassMap;
use moeseg::ensemble::experts::project;
use moeseg::ensemble::train::{build, step_loss};
use moeseg::ensemble::{Ensemble, Mode};
use moeseg::nn::{named_parameters, named_tensors, Module};
use moeseg::tensor::{manual_seed, Rng, Tensor};
use moeseg::train::config::Config;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Trains a tiny expert run (ENet unless `--set model.name=...`) into `dir/name`.
fn expert_run(dir: &Path, name: &str, sets: &[&str]) -> PathBuf {
    let run = dir.join(name);
    let mut args = vec![
        "train",
        "--preset",
        TINY,
        "--device",
        "cpu",
        "--quiet",
        "--run-dir",
        run.to_str().unwrap(),
        "--set",
        "model.moe.enabled=false",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    ok(&args);
    run
}

/// Three experts shared by the tests: urban ENet, highway ENet, and a superclass ENet
/// (vehicles / persons / other).
fn experts() -> &'static [PathBuf] {
    static RUNS: OnceLock<(tempfile::TempDir, Vec<PathBuf>)> = OnceLock::new();
    let (_, runs) = RUNS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let runs = vec![
            expert_run(dir.path(), "urban", &["data.scene=urban", "train.seed=1"]),
            expert_run(
                dir.path(),
                "highway",
                &["data.scene=highway", "train.seed=2"],
            ),
            expert_run(
                dir.path(),
                "vehicles",
                &[
                    "train.seed=3",
                    "data.class_map=[\"car+truck+bus+train\", \"person+rider\"]",
                    "data.class_map_rest=other",
                    "model.num_classes=3",
                ],
            ),
        ];
        (dir, runs)
    });
    runs
}

/// A configuration over `experts` with `sets` applied.
fn config(experts: &[PathBuf], sets: &[&str]) -> Config {
    let mut config = Config::default();
    config.data.synthetic.height = 32;
    config.data.synthetic.width = 64;
    config.ensemble.experts = experts.iter().map(|p| p.display().to_string()).collect();
    config.ensemble.gate_size = [16, 32];
    config
        .apply_overrides(&sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap();
    config
}

/// A random `[b, 3, 32, 64]` input.
fn input(b: usize, seed: u64) -> Tensor {
    Tensor::randn([b, 3, 32, 64], 0.0, 1.0, &mut Rng::new(seed)).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.try_to_vec().unwrap()
}

fn expert_logits(ensemble: &Ensemble, e: usize, x: &Tensor) -> Vec<f32> {
    values(&ensemble.experts[e].model.forward(x).unwrap())
}

#[test]
fn forced_gate_gives_the_expert_and_uniform_weights_the_mean() {
    let ensemble = build(&config(&experts()[..2], &[]), &Device::Cpu).unwrap();
    let x = input(2, 5);
    let (a, b) = (
        expert_logits(&ensemble, 0, &x),
        expert_logits(&ensemble, 1, &x),
    );
    for (e, want) in [(0, &a), (1, &b)] {
        let mut w = vec![0.0; 2];
        w[e] = 1.0;
        ensemble.set_mode(Mode::Fixed(w)).unwrap();
        ensemble.reset_usage();
        let got = values(&ensemble.forward(&x).unwrap());
        assert!(got == *want, "expert {e} alone is its logits, bit for bit");
        assert_eq!(ensemble.usage().0[1 - e], 0, "the other expert did not run");
    }
    ensemble.set_mode(Mode::Fixed(vec![0.5, 0.5])).unwrap();
    let got = values(&ensemble.forward(&x).unwrap());
    for ((g, p), q) in got.iter().zip(&a).zip(&b) {
        let mean = (*p as f64 + *q as f64) / 2.0;
        assert!(
            (*g as f64 - mean).abs() <= 1e-6 * (1.0 + mean.abs()),
            "{g} vs {mean}"
        );
    }
    // Probabilities: log of the mean softmax, against an f64 reference.
    let probs = build(
        &config(&experts()[..2], &["ensemble.combine=probs"]),
        &Device::Cpu,
    )
    .unwrap();
    probs.set_mode(Mode::Fixed(vec![0.5, 0.5])).unwrap();
    let got = values(&probs.forward(&x).unwrap());
    let (c, hw) = (19, 32 * 64);
    for n in 0..2 {
        for p in (0..hw).step_by(97) {
            let softmax = |l: &[f32]| -> Vec<f64> {
                let v: Vec<f64> = (0..c).map(|k| l[(n * c + k) * hw + p] as f64).collect();
                let m = v.iter().cloned().fold(f64::MIN, f64::max);
                let s: f64 = v.iter().map(|x| (x - m).exp()).sum();
                v.iter().map(|x| (x - m).exp() / s).collect()
            };
            let (pa, pb) = (softmax(&a), softmax(&b));
            for k in 0..c {
                let want = ((pa[k] + pb[k]) / 2.0).ln();
                let g = got[(n * c + k) * hw + p] as f64;
                assert!((g - want).abs() < 1e-4, "class {k}: {g} vs {want}");
            }
        }
    }
}

#[test]
fn top_k_with_k_equal_to_the_experts_is_the_dense_combination() {
    let x = input(3, 8);
    for weights in ["image", "class"] {
        let set = format!("ensemble.weights={weights}");
        let dense = build(&config(&experts()[..2], &[&set]), &Device::Cpu).unwrap();
        let topk = build(
            &config(&experts()[..2], &[&set, "ensemble.k=2"]),
            &Device::Cpu,
        )
        .unwrap();
        let (a, b) = (dense.forward(&x).unwrap(), topk.forward(&x).unwrap());
        assert!(
            values(&a) == values(&b),
            "{weights}: k = K is dense, bit for bit"
        );
    }
    // k = 1: each image runs one expert, whose logits it gets (its weight is 1).
    let top1 = build(&config(&experts()[..2], &["ensemble.k=1"]), &Device::Cpu).unwrap();
    let out = top1.forward_full(&x, false).unwrap();
    assert_eq!(
        top1.usage(),
        (
            vec![
                out.chosen.iter().filter(|c| c[0] == 0).count() as u64,
                out.chosen.iter().filter(|c| c[0] == 1).count() as u64
            ],
            3
        )
    );
    let got = values(&out.logits);
    let per = got.len() / 3;
    for (i, chosen) in out.chosen.iter().enumerate() {
        assert_eq!(chosen.len(), 1);
        let alone = expert_logits(&top1, chosen[0], &x.narrow(0, i, 1).unwrap());
        for (g, w) in got[i * per..(i + 1) * per].iter().zip(&alone) {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "image {i}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn gate_training_leaves_the_experts_bitwise_unchanged() {
    let config = config(
        &experts()[..2],
        &["ensemble.refine=true", "ensemble.weights=class"],
    );
    let ensemble = build(&config, &Device::Cpu).unwrap();
    let snapshot = |e: &Ensemble| -> Vec<(String, Vec<f32>)> {
        e.experts
            .iter()
            .flat_map(|x| named_tensors(&*x.model as &dyn Module))
            .map(|(n, t, _)| (n, values(&t)))
            .collect()
    };
    let before = snapshot(&ensemble);
    assert!(before.iter().any(|(n, _)| n.contains("running_mean")));
    let gate_before: Vec<Vec<f32>> = named_parameters(&ensemble)
        .iter()
        .map(|(_, t)| values(t))
        .collect();
    let mut optimizer =
        moeseg::train::setup::build_optimizer(&config.optim, named_parameters(&ensemble)).unwrap();
    moeseg::nn::set_training(&ensemble, true);
    let labels = Tensor::from_vec(
        (0..2 * 32 * 64).map(|i| (i % 19) as f32).collect(),
        [2, 32, 64],
    )
    .unwrap();
    for step in 0..3 {
        let loss = step_loss(&ensemble, &config, &input(2, step), &labels).unwrap();
        optimizer.zero_grad();
        loss.total.backward().unwrap();
        for x in &ensemble.experts {
            for (n, t) in named_parameters(&*x.model as &dyn Module) {
                assert!(t.grad().is_none(), "expert parameter {n} got a gradient");
            }
        }
        optimizer.step().unwrap();
    }
    assert!(
        before == snapshot(&ensemble),
        "expert weights and BN statistics unchanged"
    );
    let gate_after: Vec<Vec<f32>> = named_parameters(&ensemble)
        .iter()
        .map(|(_, t)| values(t))
        .collect();
    assert!(gate_before != gate_after, "the gate trained");
    assert!(named_parameters(&ensemble)
        .iter()
        .all(|(n, _)| n.starts_with("gate.") || n.starts_with("refine.")));
}

/// Central differences of the loss against the autograd gradient of the gate's last layer.
fn check_gate_gradient(sets: &[&str]) {
    let config = config(&experts()[..2], sets);
    let ensemble = build(&config, &Device::Cpu).unwrap();
    let x = input(2, 21);
    let labels = Tensor::from_vec(
        (0..2 * 32 * 64).map(|i| ((i / 7) % 19) as f32).collect(),
        [2, 32, 64],
    )
    .unwrap();
    let loss = step_loss(&ensemble, &config, &x, &labels).unwrap();
    loss.total.backward().unwrap();
    let params = named_parameters(&ensemble);
    for name in ["gate.fc2.bias", "gate.fc2.weight", "gate.conv1.weight"] {
        let (_, t) = params.iter().find(|(n, _)| n == name).unwrap();
        let grad = values(&t.grad().unwrap());
        let base = values(t);
        let mut checked = 0;
        for i in (0..base.len()).step_by((base.len() / 6).max(1)) {
            let eps = 1e-2f32;
            let at = |d: f32| -> f64 {
                let mut v = base.clone();
                v[i] += d;
                t.replace_data(&Tensor::from_vec(v, t.dims().to_vec()).unwrap())
                    .unwrap();
                let l = moeseg::autograd::no_grad(|| step_loss(&ensemble, &config, &x, &labels))
                    .unwrap();
                l.total.item().unwrap() as f64
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            t.replace_data(&Tensor::from_vec(base.clone(), t.dims().to_vec()).unwrap())
                .unwrap();
            let analytic = grad[i] as f64;
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 0.03 * analytic.abs(),
                "{sets:?} {name}[{i}]: autograd {analytic} vs finite differences {numeric}"
            );
            checked += 1;
        }
        assert!(checked >= base.len().min(3));
    }
}

#[test]
fn gate_gradient_matches_finite_differences() {
    check_gate_gradient(&["ensemble.balance=0"]);
    check_gate_gradient(&[
        "ensemble.combine=probs",
        "ensemble.weights=class",
        "ensemble.balance=0",
    ]);
}

#[test]
fn class_mapped_expert_is_spread_by_the_reference() {
    // 4 classes; groups {0, 1} and {2}; class 3 is the rest.
    let r = [0.1f32, 0.3, 0.2, 0.4];
    let q = [0.5f32, 0.2, 0.3]; // group {0,1}, group {2}, other
    let reference = Tensor::from_vec(r.to_vec(), [1, 4, 1, 1]).unwrap();
    let groups = ["0+1".to_string(), "2".to_string()];
    let other = ClassMap::parse(&groups, "other").unwrap().unwrap();
    let p = values(
        &project(
            &other,
            &Tensor::from_vec(q.to_vec(), [1, 3, 1, 1]).unwrap(),
            Some(&reference),
            4,
        )
        .unwrap(),
    );
    let want = [0.5 * 0.1 / 0.4, 0.5 * 0.3 / 0.4, 0.2, 0.3];
    for (g, w) in p.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{p:?} vs {want:?}");
    }
    // `ignore`: the rest keeps the reference, the groups share r(S) = 0.6.
    let ignore = ClassMap::parse(&groups, "ignore").unwrap().unwrap();
    let q2 = [0.25f32, 0.75];
    let p = values(
        &project(
            &ignore,
            &Tensor::from_vec(q2.to_vec(), [1, 2, 1, 1]).unwrap(),
            Some(&reference),
            4,
        )
        .unwrap(),
    );
    let want = [
        0.6 * 0.25 * 0.1 / 0.4,
        0.6 * 0.25 * 0.3 / 0.4,
        0.6 * 0.75,
        0.4,
    ];
    for (g, w) in p.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{p:?} vs {want:?}");
    }
    assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    // In an ensemble: probabilities sum to one per pixel.
    let ensemble = build(
        &config(experts(), &["ensemble.combine=probs"]),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(ensemble.classes, 19);
    let out = ensemble.forward(&input(1, 3)).unwrap();
    let v = values(&out);
    let hw = 32 * 64;
    for p in (0..hw).step_by(211) {
        let s: f64 = (0..19).map(|k| (v[k * hw + p] as f64).exp()).sum();
        assert!((s - 1.0).abs() < 1e-4, "pixel {p}: Σp = {s}");
    }
}

#[test]
fn feature_gate_reads_the_experts_layer() {
    let config = config(
        &experts()[..2],
        &[
            "ensemble.gate=features",
            "ensemble.feature_layer=regular5_1.ext_conv2.0",
        ],
    );
    let ensemble = build(&config, &Device::Cpu).unwrap();
    let out = ensemble.forward_full(&input(2, 4), false).unwrap();
    assert_eq!(out.logits.dims(), &[2, 19, 32, 64]);
    assert_eq!(out.weights.dims(), &[2, 2]);
    let bad = config_err(&["ensemble.gate=features", "ensemble.feature_layer=nowhere"]);
    assert!(bad.contains("nowhere"), "{bad}");
}

fn config_err(sets: &[&str]) -> String {
    match build(&config(&experts()[..2], sets), &Device::Cpu) {
        Ok(_) => panic!("{sets:?} should fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_input_gets_clear_errors() {
    let runs = experts();
    let one = match build(&config(&runs[..1], &[]), &Device::Cpu) {
        Ok(_) => panic!("an ensemble of one"),
        Err(e) => e.to_string(),
    };
    assert!(one.contains("two experts"), "{one}");
    let missing = match build(
        &config(&[runs[0].clone(), PathBuf::from("/nonexistent/run")], &[]),
        &Device::Cpu,
    ) {
        Ok(_) => panic!("missing run"),
        Err(e) => e.to_string(),
    };
    assert!(missing.contains("/nonexistent/run"), "{missing}");
    // A corrupt weights file, and a changed one against the recorded hash.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy");
    copy_dir(&runs[1], &copy);
    let mut c = config(&[runs[0].clone(), copy.clone()], &[]);
    let weights = copy.join("checkpoints/best/model.safetensors");
    let hash = moeseg::ensemble::weights_hash(&weights).unwrap();
    c.ensemble.expert_hashes = vec![String::new(), "0123456789abcdef".into()];
    let changed = build(&c, &Device::Cpu).err().unwrap().to_string();
    assert!(
        changed.contains("changed") && changed.contains(&hash),
        "{changed}"
    );
    std::fs::write(&weights, b"not a safetensors file").unwrap();
    c.ensemble.expert_hashes.clear();
    let corrupt = build(&c, &Device::Cpu).err().unwrap().to_string();
    assert!(corrupt.contains("model.safetensors"), "{corrupt}");
    // Class sets that cannot be reconciled, and a class-mapped expert under logits.
    let twenty = expert_run(dir.path(), "twenty", &["model.num_classes=20"]);
    let msg = build(&config(&[runs[0].clone(), twenty], &[]), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("different class sets"), "{msg}");
    let outside = expert_run(
        dir.path(),
        "outside",
        &["data.class_map=[\"car\", \"30\"]", "model.num_classes=2"],
    );
    let msg = build(
        &config(&[runs[0].clone(), outside], &["ensemble.combine=probs"]),
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(msg.contains("class 30, outside"), "{msg}");
    let msg = build(
        &config(&[runs[0].clone(), runs[2].clone()], &[]),
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(msg.contains("ensemble.combine=probs"), "{msg}");
    let only_mapped = build(
        &config(
            &[runs[2].clone(), runs[2].clone()],
            &["ensemble.combine=probs"],
        ),
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(only_mapped.contains("full class set"), "{only_mapped}");
    assert!(config_err(&["ensemble.k=3"]).contains("ensemble.k = 3"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// One gate training step on the emulated CUDA device against the CPU: loss and the gate's
/// gradients agree, dense (class-wise, refined, probabilities) and top-1 (images gathered per
/// expert and scattered back, balance term).
#[test]
fn training_step_on_cuda_emu_matches_the_cpu() {
    let emu = match Device::select("cuda-emu:0") {
        Ok((device, _)) => device,
        Err(e) => {
            assert!(
                std::env::var_os("MOESEG_REQUIRE_EMU").is_none(),
                "MOESEG_REQUIRE_EMU is set but the emulated device cannot run: {e}"
            );
            println!("skipped: no emulated CUDA device ({e})");
            return;
        }
    };
    for sets in [
        &[
            "ensemble.weights=class",
            "ensemble.refine=true",
            "ensemble.combine=probs",
        ][..],
        &["ensemble.k=1", "ensemble.balance=0.5"][..],
    ] {
        step_on_both(&emu, &config(&experts()[..2], sets));
    }
}

/// One training step of `config` on the CPU and on `emu`.
fn step_on_both(emu: &Device, config: &Config) {
    let x = input(4, 30);
    let labels = Tensor::from_vec(
        (0..4 * 32 * 64).map(|i| ((i / 5) % 19) as f32).collect(),
        [4, 32, 64],
    )
    .unwrap();
    let run = |device: &Device| {
        manual_seed(0);
        let ensemble = build(config, device).unwrap();
        moeseg::nn::set_training(&ensemble, true);
        let loss = step_loss(
            &ensemble,
            config,
            &x.to_device(device).unwrap(),
            &labels.to_device(device).unwrap(),
        )
        .unwrap();
        loss.total.backward().unwrap();
        let grads: Vec<(String, Vec<f32>)> = named_parameters(&ensemble)
            .into_iter()
            .map(|(n, t)| {
                let g = t.grad().unwrap();
                assert_eq!(g.device(), *device, "{n}'s gradient stays on the device");
                (n, values(&g))
            })
            .collect();
        (loss.total.item().unwrap(), grads)
    };
    let (cpu_loss, cpu_grads) = run(&Device::Cpu);
    let (emu_loss, emu_grads) = run(emu);
    assert!(
        (cpu_loss - emu_loss).abs() <= 1e-4 * cpu_loss.abs(),
        "{cpu_loss} vs {emu_loss}"
    );
    for ((n, a), (_, b)) in cpu_grads.iter().zip(&emu_grads) {
        let norm = a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(diff <= 1e-3 * norm + 1e-6, "{n}: |Δ| {diff} vs |g| {norm}");
    }
}

#[test]
fn an_expert_given_as_preset_and_weights_is_the_run() {
    let runs = experts();
    let spec = format!(
        "{}::{}",
        runs[1].join("config.toml").display(),
        runs[1].join("checkpoints/best/model.safetensors").display()
    );
    let mut c = config(&runs[..2], &[]);
    let from_runs = build(&c, &Device::Cpu).unwrap();
    c.ensemble.experts[1] = spec.clone();
    let from_spec = build(&c, &Device::Cpu).unwrap();
    assert_eq!(from_spec.experts[1].hash, from_runs.experts[1].hash);
    let x = input(1, 9);
    assert!(expert_logits(&from_spec, 1, &x) == expert_logits(&from_runs, 1, &x));
    c.ensemble.experts[1] = format!(
        "{}::/nonexistent/w.safetensors",
        runs[1].join("config.toml").display()
    );
    let err = build(&c, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("/nonexistent/w.safetensors"), "{err}");
}
