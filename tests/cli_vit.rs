//! `moeseg inspect` and `moeseg forward` with the Vision Transformers: the flags build the
//! package's factory with the given overrides, `forward` loads the weights strictly and writes
//! the logits (and, with `--train`, the loss and gradients) the library computes for the same
//! model and input.

use moeseg::io::safetensors::{save, SafetensorsFile};
use moeseg::models::vit::{soft_moe_vit, MoeLayers, VitSize};
use moeseg::nn::state_dict::save_state_dict;
use moeseg::nn::{named_parameters, set_training, Module};
use moeseg::tensor::{manual_seed, with_default_rng};
use moeseg::{DType, Tensor};
use std::process::Command;

fn moeseg(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_moeseg"))
        .args(args)
        .output()
        .expect("run moeseg");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const FLAGS: [&str; 10] = [
    "--model",
    "soft_moe_vit_tiny",
    "--num-classes",
    "10",
    "--img-size",
    "32",
    "--num-experts",
    "3",
    "--moe-layer-index",
    "0,11",
];

#[test]
fn inspect_lists_the_packages_keys_for_the_flags() {
    let (ok, stdout, stderr) = moeseg(&[&["inspect"], &FLAGS[..]].concat());
    assert!(ok, "{stderr}");
    for line in [
        "pos_embed\t[1,5,192]\tfloat32",
        "blocks.0.mlp.phi\t[192,3,1]\tfloat32",
        "blocks.0.mlp.scale\t[1]\tfloat32",
        "blocks.0.mlp.experts.2.fc2.weight\t[192,768]\tfloat32",
        "blocks.1.mlp.fc1.weight\t[768,192]\tfloat32",
        "blocks.11.mlp.experts.0.fc1.bias\t[768]\tfloat32",
        "head.weight\t[10,192]\tfloat32",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no `{line}` in\n{stdout}"
        );
    }
    assert!(!stdout.contains("blocks.5.mlp.phi"));
    // The defaults: 128 experts from block 6 on, 1000 classes, 224² (197 positions).
    let (ok, stdout, _) = moeseg(&["inspect", "--model", "soft_moe_vit_tiny"]);
    assert!(ok);
    assert!(stdout.contains("blocks.6.mlp.experts.127.fc1.weight"));
    assert!(!stdout.contains("blocks.5.mlp.phi"));
    assert!(stdout.contains("pos_embed\t[1,197,192]"));
    assert!(stdout.contains("head.weight\t[1000,192]"));
    assert!(
        stdout.contains("# total_params 231319342"),
        "the package's count"
    );
    let (ok, _, stderr) = moeseg(&["inspect", "--model", "vit_small", "--num-experts", "4"]);
    assert!(!ok && stderr.contains("soft_moe_vit"), "{stderr}");
    let (ok, _, stderr) = moeseg(&[
        "inspect",
        "--model",
        "soft_moe_vit_tiny",
        "--moe-layer-index",
        "12",
    ]);
    assert!(!ok && stderr.contains("12"), "{stderr}");
}

#[test]
fn forward_and_train_step_equal_the_library() {
    manual_seed(9);
    let model = soft_moe_vit(
        VitSize::Tiny,
        Some(3),
        None,
        Some(MoeLayers::List(vec![0, 11])),
        |c| {
            c.num_classes = 10;
            c.img_size = [32, 32];
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    save_state_dict(&model, path("w.safetensors")).unwrap();
    let input = with_default_rng(|rng| Tensor::randn([2, 3, 32, 32], 0.0, 1.0, rng)).unwrap();
    let target = Tensor::from_vec(vec![3.0, 7.0], [2]).unwrap();
    save(path("in.safetensors"), [("input", &input, DType::F32)]).unwrap();
    save(path("t.safetensors"), [("target", &target, DType::F32)]).unwrap();

    let (w, i, o, t, g) = (
        path("w.safetensors"),
        path("in.safetensors"),
        path("out.safetensors"),
        path("t.safetensors"),
        path("g.safetensors"),
    );
    let io = ["--weights", &w, "--input", &i, "--output", &o];
    let (ok, _, stderr) = moeseg(&[&["forward"], &FLAGS[..], &io[..]].concat());
    assert!(ok, "{stderr}");
    set_training(&model, false);
    let expected = moeseg::no_grad(|| model.forward(&input)).unwrap();
    let logits = SafetensorsFile::open(&o).unwrap().tensor("output").unwrap();
    assert_eq!(logits.dims(), &[2, 10]);
    assert_eq!(logits.try_to_vec().unwrap(), expected.try_to_vec().unwrap());

    let train = ["--train", "--target", &t, "--grads", &g];
    let (ok, _, stderr) = moeseg(&[&["forward"], &FLAGS[..], &io[..], &train[..]].concat());
    assert!(ok, "{stderr}");
    set_training(&model, true);
    let loss = model
        .forward(&input)
        .unwrap()
        .cross_entropy(&target, Default::default())
        .unwrap();
    loss.backward().unwrap();
    let grads = SafetensorsFile::open(&g).unwrap();
    assert_eq!(
        grads.tensor("loss").unwrap().try_to_vec().unwrap(),
        loss.try_to_vec().unwrap()
    );
    for (name, p) in named_parameters(&model) {
        let written = grads.tensor(&name).unwrap().try_to_vec().unwrap();
        assert_eq!(written, p.grad().unwrap().try_to_vec().unwrap(), "{name}");
    }

    // Weights of another configuration do not load (strict).
    let (ok, _, stderr) = moeseg(
        &[
            &[
                "forward",
                "--model",
                "soft_moe_vit_tiny",
                "--img-size",
                "32",
            ],
            &io[..],
        ]
        .concat(),
    );
    assert!(!ok && stderr.contains("w.safetensors"), "{stderr}");
}

/// The segmentation ViT preset trains (a few steps on tiny synthetic images), and
/// `routing-stats` reports the diagnostics of its two Soft-MoE layers.
#[test]
fn synthetic_vit_preset_trains_and_reports_soft_routing() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_arg = run.to_str().unwrap();
    let (ok, _, stderr) = moeseg(&[
        "train",
        "--preset",
        "synthetic-vit/soft_moe",
        "--device",
        "cpu",
        "--quiet",
        "--run-dir",
        run_arg,
        "--set",
        "data.synthetic.train_len=4",
        "--set",
        "data.synthetic.val_len=2",
        "--set",
        "data.batch_size=2",
        "--set",
        "data.val_batch_size=2",
        "--set",
        "data.synthetic.height=32",
        "--set",
        "data.synthetic.width=64",
        "--set",
        "train.epochs=1",
        "--set",
        "train.eval_interval=1",
    ]);
    assert!(ok, "{stderr}");
    let out = dir.path().join("stats");
    let (ok, stdout, stderr) = moeseg(&[
        "routing-stats",
        "--run",
        run_arg,
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("blocks.2.mlp: soft, 16 slots"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("routing_stats.json")).unwrap())
            .unwrap();
    let soft = &json["soft_layers"];
    for layer in ["blocks.2.mlp", "blocks.3.mlp"] {
        let d = &soft[layer];
        // 32x64 images (built for 64x128: positions resampled) in 8x8 patches: 4x8 tokens.
        assert_eq!(d["tokens"], 32, "{d}");
        assert_eq!(d["images"], 2, "{d}");
        let min = d["dispatch_min_mean"].as_f64().unwrap();
        let max = d["dispatch_max_mean"].as_f64().unwrap();
        // A softmax over 32 tokens: the smallest weight is at most and the largest at least
        // the uniform 1/32.
        let uniform = 1.0 / 32.0;
        assert!(
            (0.0..=uniform).contains(&min) && (uniform..1.0).contains(&max),
            "{d}"
        );
    }
    assert!(soft.get("blocks.1.mlp").is_none());
}

/// `cityscapes-vit/soft_moe` builds ViT-Tiny's encoder with 32-expert Soft-MoE MLPs in blocks
/// 6-11 and positions for 512x1024 crops, and segments an image of another size.
#[test]
fn cityscapes_vit_preset_builds_a_size_flexible_segmenter() {
    use moeseg::models::vit_seg::SegVit;
    use moeseg::train::config::Config;
    use moeseg::train::{presets, setup};
    let (text, origin) = presets::resolve("cityscapes-vit/soft_moe").unwrap();
    let config = Config::from_toml(&text, &origin).unwrap();
    manual_seed(1);
    let net = setup::build_model(&config.model).unwrap();
    let seg = net.as_any().downcast_ref::<SegVit>().unwrap();
    assert_eq!(seg.vit.soft_moe_layers().len(), 6);
    assert_eq!(
        seg.vit.pos_embed.dims(),
        &[1, 32 * 64, 192],
        "no class token"
    );
    let names: Vec<String> = moeseg::nn::named_tensors(net.as_ref())
        .into_iter()
        .map(|(n, ..)| n)
        .collect();
    assert!(names.contains(&"blocks.6.mlp.experts.31.fc2.bias".to_string()));
    assert!(names.contains(&"head.weight".to_string()) && !names.contains(&"cls_token".into()));
    set_training(net.as_ref(), false);
    let x = with_default_rng(|rng| Tensor::randn([1, 3, 48, 80], 0.0, 1.0, rng)).unwrap();
    let logits = moeseg::no_grad(|| net.forward(&x)).unwrap();
    assert_eq!(logits.dims(), &[1, 19, 48, 80]);
    assert!(logits.try_to_vec().unwrap().iter().all(|v| v.is_finite()));
}
