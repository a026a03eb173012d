//! State-dict loading and saving against PyTorch checkpoints (`scripts/fixtures/state_dict.py`):
//! strict loads with eval outputs matched, byte-compatible saving, f16 / bf16 files, key
//! remapping, strict errors and corrupt files (errors, never panics, module unchanged).

use moeseg::io::safetensors::{self as st, SafetensorsFile};
use moeseg::nn::state_dict::{
    load_state_dict, save_checkpoint, save_state_dict, state_dict, LoadOptions,
};
use moeseg::nn::ConvOptions;
use moeseg::nn::{
    named_tensors, set_training, ActivationLayer, BatchNorm2d, Conv2d, ConvTranspose2d, Module,
    PReLU, Sequential,
};
use moeseg::ops::conv::ConvTranspose2dParams;
use moeseg::testing::{assert_close, Fixtures};
use moeseg::{DType, Rng, Tensor};
use std::any::Any;
use std::collections::BTreeMap;
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

/// The Rust twin of the fixture script's `net()`.
fn net() -> Sequential {
    let conv = |i, o, k, p| Conv2d::new(i, o, k, ConvOptions::new().padding(p)).unwrap();
    let up = ConvTranspose2d::new(4, 2, 2, ConvTranspose2dParams::new(2, 0, 0, 1, 1), true);
    Sequential::default()
        .push(conv(3, 8, 3, 1))
        .push(BatchNorm2d::new(8).unwrap())
        .push(ActivationLayer::relu())
        .push(Sequential::default().push(conv(8, 4, 1, 0)))
        .push(PReLU::new(4, 0.25).unwrap())
        .push(up.unwrap())
}

/// A backbone (the net's first three layers) with a head: keys `backbone.*` and `head.*`.
struct Segmenter {
    backbone: Sequential,
    head: Conv2d,
}

impl Segmenter {
    fn new() -> Self {
        Segmenter {
            backbone: Sequential::default()
                .push(Conv2d::new(3, 8, 3, ConvOptions::new().padding(1)).unwrap())
                .push(BatchNorm2d::new(8).unwrap())
                .push(ActivationLayer::relu()),
            head: Conv2d::new(8, 5, 1, ConvOptions::new()).unwrap(),
        }
    }
}

impl Module for Segmenter {
    fn type_name(&self) -> &'static str {
        "Segmenter"
    }

    fn forward(&self, input: &Tensor) -> moeseg::Result<Tensor> {
        self.head.forward(&self.backbone.forward(input)?)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("backbone".to_string(), &self.backbone),
            ("head".to_string(), &self.head),
        ]
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("state_dict_{name}.safetensors"))
}

/// A fresh scratch directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("state_dict-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every value of the module by key, to check that a failed load changed nothing.
fn snapshot(module: &dyn Module) -> Vec<(String, Vec<f32>)> {
    named_tensors(module)
        .into_iter()
        .map(|(k, t, _)| (k, t.to_host()))
        .collect()
}

/// The message of an error result, after checking it names every needle.
fn error_mentions<T: std::fmt::Debug>(result: moeseg::Result<T>, needles: &[&str]) -> String {
    let message = result.unwrap_err().to_string();
    for needle in needles {
        assert!(message.contains(needle), "`{message}` lacks `{needle}`");
    }
    message
}

/// Asserts two safetensors files hold the same names, shapes, dtypes and values.
fn assert_same_file(actual: &Path, expected: &Path) {
    let (a, e) = (
        SafetensorsFile::open(actual).unwrap(),
        SafetensorsFile::open(expected).unwrap(),
    );
    let sorted = |f: &SafetensorsFile| {
        let mut names = f.names().to_vec();
        names.sort();
        names
    };
    assert_eq!(sorted(&a), sorted(&e));
    for name in e.names() {
        assert_eq!(a.shape(name).unwrap(), e.shape(name).unwrap(), "{name}");
        assert_eq!(a.dtype(name).unwrap(), e.dtype(name).unwrap(), "{name}");
        assert_eq!(
            a.tensor(name).unwrap().to_host(),
            e.tensor(name).unwrap().to_host(),
            "{name}"
        );
    }
}

/// A safetensors file from raw parts: `(name, dtype, shape, [begin, end])` and the data bytes,
/// so tests can write headers that lie.
fn raw_file(entries: &[(&str, &str, Vec<usize>, [usize; 2])], data: &[u8]) -> Vec<u8> {
    let fields: Vec<String> = entries
        .iter()
        .map(|(name, dtype, shape, [b, e])| {
            format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{b},{e}]}}"#)
        })
        .collect();
    let header = format!("{{{}}}", fields.join(","));
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// The fixture checkpoint as a map, for building modified versions.
fn checkpoint() -> BTreeMap<String, (Tensor, DType)> {
    st::load(fixture("model")).unwrap()
}

fn write_map(path: &Path, map: &BTreeMap<String, (Tensor, DType)>) {
    st::save(path, map.iter().map(|(k, (t, d))| (k.as_str(), t, *d))).unwrap();
}

#[test]
fn pytorch_checkpoint_loads_strictly_and_matches_eval_output() {
    let model = net();
    let report = load_state_dict(&model, fixture("model"), LoadOptions::default()).unwrap();
    assert_eq!(report.loaded.len(), 12);
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.to_string(), "loaded 12 of 12 tensors");
    let bn = named_tensors(&model);
    let count = bn.iter().find(|(k, _, _)| k == "1.num_batches_tracked");
    assert_eq!(count.unwrap().1.item().unwrap(), 2.0);

    set_training(&model, false);
    let expected = Fixtures::load("state_dict").unwrap();
    let out = model.forward(&expected.get("input").unwrap()).unwrap();
    assert_close("eval out", &out, &expected.get("out").unwrap(), 1e-4, 1e-5).unwrap();
}

#[test]
fn saved_file_equals_the_pytorch_file_key_by_key() {
    let model = net();
    load_state_dict(&model, fixture("model"), LoadOptions::default()).unwrap();
    let dir = scratch("save");
    let path = dir.join("model.safetensors");
    save_state_dict(&model, &path).unwrap();
    assert_same_file(&path, &fixture("model"));
    let saved = SafetensorsFile::open(&path).unwrap();
    assert_eq!(saved.dtype("1.num_batches_tracked").unwrap(), DType::I64);
    assert_eq!(
        saved.shape("1.num_batches_tracked").unwrap(),
        &[] as &[usize]
    );
    assert_eq!(saved.metadata().unwrap()["format"], "pt");
    let names: Vec<String> = state_dict(&model).into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(names[..3], ["0.weight", "0.bias", "1.weight"]);
}

/// Step one of the round trip into PyTorch (see `scripts/fixtures/state_dict.py`): writes the
/// state dict of a Rust-initialised, Rust-trained-mode net and its eval output.
#[test]
#[ignore = "regenerates tests/fixtures/state_dict_rust*.safetensors"]
fn write_rust_fixture() {
    moeseg::tensor::manual_seed(11);
    let model = net();
    let mut rng = Rng::new(5);
    for _ in 0..3 {
        let x = Tensor::randn([4, 3, 6, 6], 0.3, 1.5, &mut rng).unwrap();
        model.forward(&x).unwrap();
    }
    set_training(&model, false);
    let input = Tensor::randn([2, 3, 6, 6], 0.0, 1.0, &mut rng).unwrap();
    let out = model.forward(&input).unwrap();
    save_state_dict(&model, fixture("rust")).unwrap();
    let pair = [("input", &input, DType::F32), ("out", &out, DType::F32)];
    st::save(fixture("rust_out"), pair).unwrap();
}

#[test]
fn committed_rust_fixture_loads_back_and_reproduces_its_output() {
    let model = net();
    load_state_dict(&model, fixture("rust"), LoadOptions::default()).unwrap();
    let count = SafetensorsFile::open(fixture("rust")).unwrap();
    assert_eq!(count.dtype("1.num_batches_tracked").unwrap(), DType::I64);
    assert_eq!(
        count
            .tensor("1.num_batches_tracked")
            .unwrap()
            .item()
            .unwrap(),
        3.0
    );
    set_training(&model, false);
    let reference = st::load(fixture("rust_out")).unwrap();
    let out = model.forward(&reference["input"].0).unwrap();
    assert_close("rust out", &out, &reference["out"].0, 1e-5, 1e-6).unwrap();
}

#[test]
fn half_precision_checkpoints_load_the_rounded_values() {
    let full = checkpoint();
    for (name, dtype) in [("f16", DType::F16), ("bf16", DType::BF16)] {
        let model = net();
        let report = load_state_dict(&model, fixture(name), LoadOptions::default()).unwrap();
        assert!(report.is_complete(), "{name}: {report}");
        for (key, tensor, stored) in state_dict(&model) {
            let original = &full[&key].0;
            let expected = if stored == DType::I64 {
                original.clone()
            } else {
                Tensor::from_bytes(
                    &original.to_bytes(dtype).unwrap(),
                    dtype,
                    original.dims().to_vec(),
                )
                .unwrap()
            };
            assert_eq!(tensor.to_host(), expected.to_host(), "{name} {key}");
        }
    }
}

#[test]
fn lightning_prefixes_are_stripped_and_extra_keys_skipped_on_request() {
    let model = net();
    let before = snapshot(&model);
    let strip = LoadOptions {
        strip_prefixes: vec!["model.".into()],
        ..LoadOptions::default()
    };
    let result = load_state_dict(&model, fixture("lightning"), strip.clone());
    error_mentions(
        result,
        &["unexpected keys (1)", "criterion.weight: found [5]"],
    );
    let result = load_state_dict(&model, fixture("lightning"), LoadOptions::default());
    error_mentions(
        result,
        &[
            "missing keys (11)",
            "unexpected keys (13)",
            "model.0.weight",
        ],
    );
    assert_eq!(snapshot(&model), before);

    let options = LoadOptions {
        skip_unexpected_prefixes: vec!["criterion.".into()],
        ..strip
    };
    let report = load_state_dict(&model, fixture("lightning"), options).unwrap();
    assert_eq!(report.loaded.len(), 12);
    assert_eq!(report.skipped, ["criterion.weight"]);
    let reference = net();
    load_state_dict(&reference, fixture("model"), LoadOptions::default()).unwrap();
    assert_eq!(snapshot(&model), snapshot(&reference));
}

#[test]
fn bare_backbone_loads_into_a_larger_module_with_add_prefix() {
    let model = Segmenter::new();
    let head_before = model.head.weight.to_host();
    let options = LoadOptions {
        strict: false,
        add_prefix: Some("backbone.".into()),
        ..LoadOptions::default()
    };
    let report = load_state_dict(&model, fixture("backbone"), options.clone()).unwrap();
    assert_eq!(report.loaded.len(), 7);
    assert_eq!(report.missing, ["head.weight", "head.bias"]);
    assert!(report.unexpected.is_empty() && report.mismatched.is_empty());
    assert!(report
        .to_string()
        .contains("missing 2 (head.weight, head.bias)"));
    assert_eq!(model.head.weight.to_host(), head_before);
    let full = checkpoint();
    assert_eq!(model.backbone.layers.len(), 3);
    let loaded = named_tensors(&model);
    let weight = loaded.iter().find(|(k, _, _)| k == "backbone.0.weight");
    assert_eq!(weight.unwrap().1.to_host(), full["0.weight"].0.to_host());

    let strict = LoadOptions {
        strict: true,
        ..options
    };
    let result = load_state_dict(&model, fixture("backbone"), strict);
    error_mentions(
        result,
        &["missing keys (2)", "head.weight: expected [5, 8, 1, 1]"],
    );
}

#[test]
fn strict_errors_list_every_offending_key_and_change_nothing() {
    let dir = scratch("strict");
    let path = dir.join("bad.safetensors");
    let mut map = checkpoint();
    map.remove("3.0.bias");
    let extra = Tensor::from_vec(vec![1.0; 3], [3]).unwrap();
    map.insert("extra.weight".into(), (extra, DType::F32));
    let wide = Tensor::from_vec(vec![0.5; 8 * 3 * 25], [8, 3, 5, 5]).unwrap();
    map.insert("0.weight".into(), (wide, DType::F32));
    map.insert(
        "5.bias".into(),
        (Tensor::from_vec(vec![0.5; 3], [3]).unwrap(), DType::F32),
    );
    write_map(&path, &map);

    let model = net();
    let before = snapshot(&model);
    let result = load_state_dict(&model, &path, LoadOptions::default());
    let message = error_mentions(
        result,
        &[
            "bad.safetensors",
            "nothing was changed",
            "3.0.bias: expected [4], not in the file",
            "extra.weight: found [3], not in the module",
            "0.weight: expected [8, 3, 3, 3], found [8, 3, 5, 5]",
            "5.bias: expected [2], found [3]",
        ],
    );
    assert!(message.contains("shape mismatches (2)"), "{message}");
    assert_eq!(snapshot(&model), before);

    let options = LoadOptions {
        strict: false,
        ..LoadOptions::default()
    };
    let report = load_state_dict(&model, &path, options).unwrap();
    assert_eq!(report.loaded.len(), 9);
    assert_eq!(report.missing, ["3.0.bias"]);
    assert_eq!(report.unexpected, ["extra.weight"]);
    let mismatched: Vec<&str> = report.mismatched.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(mismatched, ["0.weight", "5.bias"]);
    let good = checkpoint();
    for ((key, old), (_, new)) in before.iter().zip(&snapshot(&model)) {
        let skipped = ["0.weight", "3.0.bias", "5.bias"].contains(&key.as_str());
        let expected = if skipped { old } else { &good[key].0.to_host() };
        assert_eq!(new, expected, "{key}");
    }
    let summary = report.to_string();
    assert!(
        summary.starts_with("loaded 9 of 12 tensors; missing 1 (3.0.bias)"),
        "{summary}"
    );
}

#[test]
fn missing_num_batches_tracked_keeps_its_value_as_in_pytorch() {
    let dir = scratch("nbt");
    let path = dir.join("no_count.safetensors");
    let mut map = checkpoint();
    map.remove("1.num_batches_tracked");
    write_map(&path, &map);
    let model = net();
    let report = load_state_dict(&model, &path, LoadOptions::default()).unwrap();
    assert_eq!(report.kept, ["1.num_batches_tracked"]);
    assert_eq!(report.loaded.len(), 11);
}

#[test]
fn checkpoint_with_extra_tensors_round_trips() {
    let dir = scratch("checkpoint");
    let path = dir.join("ckpt.safetensors");
    let model = net();
    load_state_dict(&model, fixture("model"), LoadOptions::default()).unwrap();
    let step = Tensor::scalar(1234.0);
    let moment = Tensor::from_vec(vec![0.25; 8], [8]).unwrap();
    let extra = [
        ("optimizer.step".to_string(), step, DType::I64),
        (
            "optimizer.exp_avg.0.bias".to_string(),
            moment.clone(),
            DType::F32,
        ),
    ];
    save_checkpoint(&path, &model, &extra).unwrap();
    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(
        file.tensor("optimizer.step").unwrap().item().unwrap(),
        1234.0
    );
    assert_eq!(file.dtype("optimizer.step").unwrap(), DType::I64);

    let fresh = net();
    let options = LoadOptions {
        skip_unexpected_prefixes: vec!["optimizer.".into()],
        ..LoadOptions::default()
    };
    let report = load_state_dict(&fresh, &path, options).unwrap();
    assert_eq!(report.skipped.len(), 2);
    assert_eq!(snapshot(&fresh), snapshot(&model));

    let clash = [("0.bias".to_string(), moment, DType::F32)];
    error_mentions(
        save_checkpoint(&path, &model, &clash),
        &["`0.bias`", "twice"],
    );
}

#[test]
fn corrupt_files_are_errors_naming_the_file_and_change_nothing() {
    let dir = scratch("corrupt");
    let good = std::fs::read(fixture("model")).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut lying_length = good.clone();
    lying_length[..8].copy_from_slice(&((good.len() + 100) as u64).to_le_bytes());
    let mut garbage_header = good.clone();
    garbage_header[8] = b'#';
    let floats = |n: usize| vec![0u8; 4 * n];
    let f64_bias = checkpoint_with("5.bias", "F64", &[0u8; 16]);
    let u8_bias = checkpoint_with("5.bias", "U8", &[7, 9]);
    let huge_count = checkpoint_with("1.num_batches_tracked", "I64", &(1i64 << 40).to_le_bytes());
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("empty", Vec::new(), vec!["truncated"]),
        (
            "in_header",
            good[..header_len / 2].to_vec(),
            vec!["truncated or corrupt"],
        ),
        (
            "in_data",
            good[..good.len() - 10].to_vec(),
            vec!["truncated or corrupt"],
        ),
        ("header_length", lying_length, vec!["header claims"]),
        (
            "not_json",
            garbage_header,
            vec!["not a valid safetensors file"],
        ),
        (
            "past_end",
            raw_file(&[("0.bias", "F32", vec![8], [0, 32])], &floats(4)),
            vec!["do not end at the end of the file"],
        ),
        (
            "overlap",
            raw_file(
                &[
                    ("0.bias", "F32", vec![8], [0, 32]),
                    ("1.bias", "F32", vec![8], [16, 48]),
                ],
                &floats(12),
            ),
            vec!["`1.bias`", "overlap"],
        ),
        (
            "size_lie",
            raw_file(&[("0.bias", "F32", vec![8], [0, 64])], &floats(16)),
            vec!["shape × dtype size"],
        ),
        ("f64", f64_bias, vec!["`5.bias`", "F64", "supported are"]),
        ("u8", u8_bias, vec!["`5.bias`", "U8"]),
        (
            "huge_i64",
            huge_count,
            vec!["`1.num_batches_tracked`", "too large"],
        ),
    ];
    let model = net();
    let before = snapshot(&model);
    for (name, bytes, needles) in cases {
        let path = dir.join(format!("{name}.safetensors"));
        std::fs::write(&path, bytes).unwrap();
        for strict in [true, false] {
            let options = LoadOptions {
                strict,
                ..LoadOptions::default()
            };
            let result = load_state_dict(&model, &path, options);
            let mut all = needles.clone();
            let file_name = format!("{name}.safetensors");
            all.push(&file_name);
            error_mentions(result, &all);
            assert_eq!(snapshot(&model), before, "{name}");
        }
    }
}

/// The good checkpoint as a raw file with tensor `key` stored as `dtype` with `bytes` (its
/// shape kept), so that a load converting tensors in order meets the bad one after good ones.
fn checkpoint_with(key: &str, dtype: &str, bytes: &[u8]) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut data = Vec::new();
    let good = checkpoint();
    for (name, (tensor, stored)) in &good {
        let (dtype, bytes) = if name == key {
            (dtype, bytes.to_vec())
        } else {
            (stored.name(), tensor.to_bytes(*stored).unwrap())
        };
        let span = [data.len(), data.len() + bytes.len()];
        entries.push((name.as_str(), dtype, tensor.dims().to_vec(), span));
        data.extend_from_slice(&bytes);
    }
    raw_file(&entries, &data)
}
