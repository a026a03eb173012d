//! Shared helpers of the Soft-MoE layer and ViT parity tests: the fixtures of
//! `scripts/fixtures/soft_moe_vit.py`, a strict state-dict load of a case's weights through a
//! safetensors file, and error measures.

use moeseg::io::safetensors;
use moeseg::nn::state_dict::{load_state_dict, LoadOptions};
use moeseg::nn::{named_parameters, Module};
use moeseg::{DType, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// Every tensor of `tests/fixtures/soft_moe_vit.safetensors`, as f32.
pub fn fixtures() -> BTreeMap<String, Tensor> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/soft_moe_vit.safetensors");
    safetensors::load(path)
        .unwrap()
        .into_iter()
        .map(|(k, (t, _))| (k, t))
        .collect()
}

/// The fixture tensor `key`.
pub fn get(fx: &BTreeMap<String, Tensor>, key: &str) -> Tensor {
    fx.get(key)
        .unwrap_or_else(|| panic!("fixture has no `{key}`"))
        .clone()
}

/// Writes `<case>.w.*` to a safetensors file under the state-dict names and loads it into
/// `module` with the strict loader (every key of both sides, with its shape).
pub fn load_strict(fx: &BTreeMap<String, Tensor>, case: &str, module: &dyn Module) {
    let prefix = format!("{case}.w.");
    let entries: Vec<(String, Tensor)> = fx
        .iter()
        .filter_map(|(k, t)| Some((k.strip_prefix(prefix.as_str())?.to_string(), t.clone())))
        .collect();
    assert!(!entries.is_empty(), "{case}: no weights in the fixture");
    let dir = std::env::temp_dir().join(format!("moeseg-soft-moe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{case}.safetensors"));
    safetensors::save(
        &path,
        entries.iter().map(|(k, t)| (k.as_str(), t, DType::F32)),
    )
    .unwrap();
    let report = load_state_dict(module, &path, LoadOptions::default());
    std::fs::remove_file(&path).ok();
    report.unwrap_or_else(|e| panic!("{case}: strict load failed: {e}"));
}

/// Relative-norm error `‖a − e‖ / ‖e‖` and max-abs error relative to `max |e|`; both must be
/// at most `tol`.
pub fn compare(what: &str, actual: &Tensor, expected: &Tensor, tol: f64) {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shape");
    let (a, e) = (actual.try_to_vec().unwrap(), expected.try_to_vec().unwrap());
    let (mut diff_sq, mut ref_sq, mut max_abs, mut ref_max) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(&e) {
        let d = (x as f64 - y as f64).abs();
        assert!(d.is_finite(), "{what}: non-finite value {x} (expected {y})");
        diff_sq += d * d;
        ref_sq += (y as f64) * (y as f64);
        max_abs = max_abs.max(d);
        ref_max = ref_max.max((y as f64).abs());
    }
    let rel_norm = diff_sq.sqrt() / ref_sq.sqrt().max(1e-30);
    let rel_max = max_abs / ref_max.max(1e-30);
    println!("{what}: relative-norm error {rel_norm:.2e}, relative max error {rel_max:.2e}");
    assert!(
        rel_norm <= tol && rel_max <= tol,
        "{what}: relative-norm error {rel_norm:e}, relative max error {rel_max:e} over {tol:e}"
    );
}

/// Compares every parameter's gradient with `<case>.grad.<key>`; the fixture must hold a
/// gradient for exactly the module's parameters.
pub fn check_grads(fx: &BTreeMap<String, Tensor>, case: &str, module: &dyn Module, tol: f64) {
    let prefix = format!("{case}.grad.");
    let expected: Vec<&str> = fx
        .keys()
        .filter_map(|k| k.strip_prefix(prefix.as_str()))
        .collect();
    let params = named_parameters(module);
    let mut names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(names, sorted, "{case}: parameter names");
    for (name, param) in &params {
        let grad = param
            .grad()
            .unwrap_or_else(|| panic!("{case}: `{name}` has no gradient"));
        compare(
            &format!("{case} grad {name}"),
            &grad,
            &get(fx, &format!("{prefix}{name}")),
            tol,
        );
    }
}
