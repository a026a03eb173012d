//! The model commands of the real binary: `inspect` prints the manifest, `flops` the summary's
//! exact counts, `forward` reads and writes safetensors with clear errors on bad files.

use moeseg::io::safetensors::{save, SafetensorsFile};
use moeseg::models::{build, ModelConfig, ModelName};
use moeseg::nn::state_dict::save_state_dict;
use moeseg::{DType, Device, Tensor};
use std::path::PathBuf;
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

#[test]
fn inspect_prints_the_manifest() {
    let (ok, stdout, stderr) = moeseg(&["inspect", "--model", "enet", "--moe", "default"]);
    assert!(ok, "{stderr}");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/enet-moe.tsv");
    let expected = std::fs::read_to_string(path).unwrap();
    assert_eq!(stdout.trim_end(), expected.trim_end());
}

#[test]
fn inspect_names_pspnets_dilation_rule_and_how_to_switch() {
    let (ok, stdout, stderr) = moeseg(&["inspect", "--model", "pspnet"]);
    assert!(ok, "{stderr}");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/pspnet.tsv");
    let expected = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        stdout.trim_end(),
        expected.trim_end(),
        "stdout stays the manifest"
    );
    for needle in ["dilation: hszhao", "--pspnet-dilation", "pspnet_dilation"] {
        assert!(stderr.contains(needle), "missing `{needle}` in:\n{stderr}");
    }
    let (ok, _, stderr) = moeseg(&[
        "inspect",
        "--model",
        "pspnet",
        "--pspnet-dilation",
        "torchvision",
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("dilation: torchvision"), "{stderr}");
}

#[test]
fn flops_prints_exact_counts_with_and_without_moe() {
    let (ok, stdout, stderr) = moeseg(&["flops", "--model", "enet", "--moe", "default"]);
    assert!(ok, "{stderr}");
    // summary.md: baseline 351,660 params and 4,037,410,816 MACs; MoE 352,780 / 351,916
    // params and 4,069,807,936 MACs.
    for needle in [
        "params_total  351660",
        "macs          4037410816",
        "params_total  352780",
        "params_active 351916",
        "macs          4069807936",
    ] {
        assert!(stdout.contains(needle), "missing `{needle}` in:\n{stdout}");
    }
}

#[test]
fn bad_model_and_bad_moe_path_are_clear_errors() {
    let (ok, _, stderr) = moeseg(&["inspect", "--model", "segformer"]);
    assert!(!ok);
    assert!(
        stderr.contains("segformer") && stderr.contains("enet"),
        "{stderr}"
    );
    let (ok, _, stderr) = moeseg(&["inspect", "--model", "enet", "--moe", "no.such.layer"]);
    assert!(!ok);
    assert!(stderr.contains("no.such.layer"), "{stderr}");
    // A stride-2 conv cannot become a PatchConvMoE.
    let (ok, _, stderr) = moeseg(&[
        "inspect",
        "--model",
        "enet",
        "--moe",
        "downsample1_0.ext_conv1.0",
    ]);
    assert!(!ok);
    assert!(stderr.contains("downsample1_0.ext_conv1.0"), "{stderr}");
}

#[test]
fn forward_writes_logits_and_names_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("enet.safetensors");
    let net = build(ModelName::Enet, &ModelConfig::default()).unwrap();
    save_state_dict(net.as_ref(), &weights).unwrap();
    let input_path = dir.path().join("input.safetensors");
    let input = Tensor::ones([1, 3, 32, 48], &Device::Cpu).unwrap();
    save(&input_path, [("input", &input, DType::F32)]).unwrap();
    let output = dir.path().join("out.safetensors");
    let run = |input: &PathBuf, weights: &PathBuf| {
        moeseg(&[
            "forward",
            "--model",
            "enet",
            "--weights",
            weights.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ])
    };
    let (ok, _, stderr) = run(&input_path, &weights);
    assert!(ok, "{stderr}");
    let logits = SafetensorsFile::open(&output)
        .unwrap()
        .tensor("output")
        .unwrap();
    assert_eq!(logits.dims(), &[1, 19, 32, 48]);
    assert!(logits.try_to_vec().unwrap().iter().all(|v| v.is_finite()));

    // The input file lacks `input`: the error names the file and the tensor.
    let (ok, _, stderr) = run(&weights, &weights);
    assert!(!ok);
    assert!(
        stderr.contains("`input`") && stderr.contains("enet.safetensors"),
        "{stderr}"
    );
    // Weights of another network: strict loading names the keys.
    let other = dir.path().join("erfnet.safetensors");
    let erfnet = build(ModelName::Erfnet, &ModelConfig::default()).unwrap();
    save_state_dict(erfnet.as_ref(), &other).unwrap();
    let (ok, _, stderr) = run(&input_path, &other);
    assert!(!ok);
    assert!(stderr.contains("initial_block"), "{stderr}");
}
