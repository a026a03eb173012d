//! Bad input, property-tested: thousands of seeded random corruptions (truncations, bit flips,
//! edited headers) of a checkpoint's weights, its optimizer state and `state.json`, a label PNG
//! and a preset TOML, each fed through the real loader. Every outcome must be `Ok` (a flip in
//! tensor data or a digit still parses) or an `Err` whose message names the file; a panic
//! fails the test with the seed and the corruption. Truncations and header edits of the binary
//! files must be errors.

use moeseg::data::{write_cityscapes, Cityscapes, Dataset, Split, Synthetic, SyntheticConfig};
use moeseg::nn::{named_parameters, Module};
use moeseg::optim::LrScheduler;
use moeseg::tensor::Rng;
use moeseg::train::checkpoint::{self, TrainState};
use moeseg::train::config::Config;
use moeseg::train::{presets, setup};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Corruptions per file.
const CASES: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Truncate,
    FlipBits,
    EditHeader,
}

/// One corruption of `bytes`, described for the failure message; `header` is the length of
/// the file's header region (safetensors' length + JSON, PNG's signature + IHDR, a text's
/// first line).
fn corrupt(bytes: &[u8], header: usize, rng: &mut Rng) -> (Kind, Vec<u8>, String) {
    let mut out = bytes.to_vec();
    match rng.below(3) {
        0 => {
            let len = rng.below(bytes.len());
            out.truncate(len);
            (Kind::Truncate, out, format!("truncated to {len} bytes"))
        }
        1 => {
            let flips = 1 + rng.below(8);
            let mut at = Vec::new();
            for _ in 0..flips {
                let pos = rng.below(bytes.len());
                out[pos] ^= 1 << rng.below(8);
                at.push(pos);
            }
            (Kind::FlipBits, out, format!("bits flipped at bytes {at:?}"))
        }
        _ => {
            const BYTES: &[u8] = b"{}[]\",:0123456789-.eE \n\x00\xffabcxyzF_";
            let edits = 1 + rng.below(4);
            let mut at = Vec::new();
            for _ in 0..edits {
                let pos = rng.below(header.min(bytes.len()));
                out[pos] = BYTES[rng.below(BYTES.len())];
                at.push(pos);
            }
            (
                Kind::EditHeader,
                out,
                format!("header bytes replaced at {at:?}"),
            )
        }
    }
}

/// Runs `load` on `CASES` corruptions of `path` (restored afterwards); returns how many
/// truncations and header edits, and how many of those were errors.
fn fuzz(
    name: &str,
    path: &Path,
    header: usize,
    seed: u64,
    mut load: impl FnMut() -> moeseg::Result<()>,
) -> (usize, usize) {
    let original = std::fs::read(path).unwrap();
    load().unwrap_or_else(|e| panic!("{name}: the intact file must load: {e}"));
    let file_name = path.file_name().unwrap().to_string_lossy().to_string();
    let mut rng = Rng::new(seed);
    let (mut structural, mut structural_errors) = (0, 0);
    for case in 0..CASES {
        let (kind, bytes, what) = corrupt(&original, header, &mut rng);
        std::fs::write(path, &bytes).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(&mut load));
        let result = outcome.unwrap_or_else(|_| {
            panic!("{name} case {case} (seed {seed}): {what}: the loader panicked")
        });
        if kind != Kind::FlipBits {
            structural += 1;
        }
        if let Err(e) = result {
            let message = e.to_string();
            assert!(
                message.contains(&file_name),
                "{name} case {case}: {what}: the error does not name {file_name}: {message}"
            );
            if kind != Kind::FlipBits {
                structural_errors += 1;
            }
        }
    }
    std::fs::write(path, &original).unwrap();
    (structural, structural_errors)
}

fn tiny_config() -> Config {
    let (text, origin) = presets::resolve("synthetic-enet/tiny").unwrap();
    Config::from_toml(&text, &origin).unwrap()
}

/// A real checkpoint of the tiny network: weights, Adam state, state.json.
fn checkpoint_dir(run: &Path) -> PathBuf {
    let config = tiny_config();
    let model = setup::build_model(&config.model).unwrap();
    let optimizer =
        setup::build_optimizer(&config.optim, named_parameters(&*model as &dyn Module)).unwrap();
    let mut optimizer = optimizer;
    let scheduler = LrScheduler::new(
        setup::build_schedule(&config.optim, 4).unwrap(),
        optimizer.as_mut(),
    )
    .unwrap();
    let state = TrainState {
        total_steps: 4,
        step: 2,
        ..TrainState::default()
    };
    checkpoint::save(run, "last", &*model, optimizer.as_ref(), &scheduler, &state).unwrap();
    checkpoint::find(run, "last").unwrap()
}

/// safetensors' header: 8 bytes of length, then that many bytes of JSON.
fn safetensors_header(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

#[test]
fn corrupted_checkpoints_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let last = checkpoint_dir(tmp.path());
    let config = tiny_config();
    let model = setup::build_model(&config.model).unwrap();
    let model_file = last.join(checkpoint::MODEL_FILE);
    let (n, errors) = fuzz(
        "model.safetensors",
        &model_file,
        safetensors_header(&model_file),
        1,
        || checkpoint::load_model(&last, &*model as &dyn Module),
    );
    assert!(
        errors * 10 >= n * 9,
        "only {errors} of {n} truncations/header edits failed"
    );

    let mut optimizer =
        setup::build_optimizer(&config.optim, named_parameters(&*model as &dyn Module)).unwrap();
    let mut scheduler = LrScheduler::new(
        setup::build_schedule(&config.optim, 4).unwrap(),
        optimizer.as_mut(),
    )
    .unwrap();
    let opt_file = last.join(checkpoint::OPTIMIZER_FILE);
    let (n, errors) = fuzz(
        "optimizer.safetensors",
        &opt_file,
        safetensors_header(&opt_file),
        2,
        || checkpoint::load_optimizer(&last, optimizer.as_mut(), &mut scheduler),
    );
    assert!(
        errors * 10 >= n * 9,
        "only {errors} of {n} truncations/header edits failed"
    );

    let state_file = last.join(checkpoint::STATE_FILE);
    let len = std::fs::read(&state_file).unwrap().len();
    fuzz("state.json", &state_file, len, 3, || {
        checkpoint::read_state(&last).map(drop)
    });
}

#[test]
fn corrupted_label_pngs_and_presets_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cityscapes");
    let synthetic = Synthetic::new(SyntheticConfig {
        len: 1,
        height: 16,
        width: 32,
        seed: 0,
    });
    write_cityscapes(&synthetic, &root, Split::Val, "aachen").unwrap();
    let dataset = Cityscapes::open(&root, Split::Val).unwrap();
    let label = std::fs::read_dir(root.join("gtFine/val/aachen"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("_gtFine_labelIds.png"))
        .unwrap();
    // PNG signature (8) + IHDR chunk (25).
    let (n, errors) = fuzz("label PNG", &label, 33, 4, || dataset.get(0).map(drop));
    assert!(
        errors * 2 >= n,
        "only {errors} of {n} truncations/header edits failed"
    );

    let preset = tmp.path().join("preset.toml");
    let (text, _) = presets::resolve("synthetic-enet/tiny").unwrap();
    std::fs::write(&preset, &text).unwrap();
    let path = preset.to_str().unwrap().to_string();
    fuzz("preset TOML", &preset, text.len(), 5, || {
        let (text, origin) = presets::resolve(&path)?;
        Config::from_toml(&text, &origin).map(drop)
    });
}
