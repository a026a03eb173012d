//! Loading and saving a module's state dict as safetensors, with exactly the names, shapes and
//! dtypes of PyTorch's `module.state_dict()` (parameters f32, buffers in their own dtype, e.g.
//! i64 `num_batches_tracked`), so checkpoints move both ways between the two.
//!
//! Loading is all-or-nothing: every key is matched and every tensor converted before the first
//! one is assigned, so a strict load that fails, or a file that turns out corrupt half-way,
//! leaves the module exactly as it was.

use crate::error::{Error, Result};
use crate::io::safetensors::{save_with_metadata, SafetensorsFile};
use crate::nn::{named_tensors, Module, Role};
use crate::tensor::{DType, Tensor};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

/// `module.state_dict()`: every parameter (stored as f32) and buffer (stored as its own dtype)
/// under its full dotted name, in PyTorch's order.
pub fn state_dict(module: &dyn Module) -> Vec<(String, Tensor, DType)> {
    named_tensors(module)
        .into_iter()
        .map(|(name, tensor, role)| {
            let dtype = match role {
                Role::Parameter => DType::F32,
                Role::Buffer(dtype) => dtype,
            };
            (name, tensor, dtype)
        })
        .collect()
}

/// `safetensors.torch.save_file(module.state_dict(), path)`, written atomically (the file
/// appears complete or not at all).
pub fn save_state_dict(module: &dyn Module, path: impl AsRef<Path>) -> Result<()> {
    save_checkpoint(path, module, &[])
}

/// The module's state dict plus `extra` tensors (optimizer state, step counters, ...) in one
/// atomically written file. An extra name equal to a module key is an error.
pub fn save_checkpoint(
    path: impl AsRef<Path>,
    module: &dyn Module,
    extra: &[(String, Tensor, DType)],
) -> Result<()> {
    let entries = state_dict(module);
    let all = entries.iter().chain(extra);
    save_with_metadata(
        path,
        all.map(|(name, tensor, dtype)| (name.as_str(), tensor, *dtype)),
        &[("format", "pt")],
    )
}

/// How [`load_state_dict`] matches file keys to module keys.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Every module key must be in the file with its shape, and every file key in the module
    /// (PyTorch's `strict=True`); otherwise what matches is loaded and the rest reported.
    pub strict: bool,
    /// Prefixes removed from file keys, each in turn where present (`"model."` for Lightning,
    /// `"module."` for DataParallel).
    pub strip_prefixes: Vec<String>,
    /// Prefix put before every file key after stripping (`"backbone."` to load a bare backbone
    /// file into a full network).
    pub add_prefix: Option<String>,
    /// File keys (as written in the file) starting with one of these are ignored, even when
    /// strict (`"optimizer."` in a checkpoint with extra tensors).
    pub skip_unexpected_prefixes: Vec<String>,
}

impl Default for LoadOptions {
    /// Strict, keys used as they are.
    fn default() -> Self {
        LoadOptions {
            strict: true,
            strip_prefixes: Vec::new(),
            add_prefix: None,
            skip_unexpected_prefixes: Vec::new(),
        }
    }
}

impl LoadOptions {
    /// The module key a file key maps to: prefixes stripped, then the prefix added.
    pub fn remap(&self, file_key: &str) -> String {
        let mut key = file_key;
        for prefix in &self.strip_prefixes {
            key = key.strip_prefix(prefix.as_str()).unwrap_or(key);
        }
        match &self.add_prefix {
            Some(prefix) => format!("{prefix}{key}"),
            None => key.to_string(),
        }
    }

    fn skips(&self, file_key: &str) -> bool {
        self.skip_unexpected_prefixes
            .iter()
            .any(|p| file_key.starts_with(p.as_str()))
    }
}

/// What [`load_state_dict`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Module keys whose values were loaded.
    pub loaded: Vec<String>,
    /// Module keys the file lacks (left unchanged).
    pub missing: Vec<String>,
    /// File keys (as written in the file) that match no module key, sorted.
    pub unexpected: Vec<String>,
    /// Module keys whose file tensor has another shape: `(key, expected, found)`.
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// File keys ignored through [`LoadOptions::skip_unexpected_prefixes`].
    pub skipped: Vec<String>,
    /// `num_batches_tracked` buffers absent from the file, which keep their value as in
    /// PyTorch (older checkpoints and some converters omit them).
    pub kept: Vec<String>,
}

impl LoadReport {
    /// True when every module key was loaded and every file key used (or skipped on purpose).
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl fmt::Display for LoadReport {
    /// One line: counts, with the first few keys of each problem.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.loaded.len() + self.missing.len() + self.mismatched.len();
        write!(f, "loaded {} of {total} tensors", self.loaded.len())?;
        let mismatched: Vec<String> = self
            .mismatched
            .iter()
            .map(|(key, expected, found)| format!("{key} {expected:?} vs {found:?}"))
            .collect();
        for (what, keys) in [
            ("missing", &self.missing),
            ("unexpected", &self.unexpected),
            ("shape mismatches", &mismatched),
            ("skipped", &self.skipped),
            ("kept", &self.kept),
        ] {
            if !keys.is_empty() {
                write!(f, "; {what} {} ({})", keys.len(), first_few(keys))?;
            }
        }
        Ok(())
    }
}

/// `a, b, c, d, … (+n)`: the first keys of a list.
fn first_few(keys: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut text = keys
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > SHOWN {
        text.push_str(&format!(", … (+{})", keys.len() - SHOWN));
    }
    text
}

/// `module.load_state_dict(load_file(path), strict)` with key remapping.
///
/// File keys are remapped ([`LoadOptions::remap`]) and matched to the module's keys. Strict:
/// any missing key, unexpected key or shape mismatch is an error listing all of them with their
/// shapes. Non-strict: matching tensors load, the rest is reported. f32, f16 and bf16 values
/// convert to f32 and i64 ones (e.g. `num_batches_tracked`) to exact f32 integers; any other
/// dtype in a tensor to load is an error. Nothing is assigned until every tensor has been
/// read and converted, so on any error the module is unchanged.
pub fn load_state_dict(
    module: &dyn Module,
    path: impl AsRef<Path>,
    options: LoadOptions,
) -> Result<LoadReport> {
    let file = SafetensorsFile::open(path)?;
    let (report, assignments) = match_keys(module, &file, &options)?;
    if options.strict && !report.is_complete() {
        return Err(strict_error(module, &file, &report, &options));
    }
    let values = assignments
        .iter()
        .map(|(target, file_key)| {
            let value = file.tensor(file_key)?;
            if value.device() == target.device() {
                Ok(value)
            } else {
                Tensor::from_vec_on(value.try_to_vec()?, value.shape().clone(), &target.device())
            }
        })
        .collect::<Result<Vec<Tensor>>>()?;
    for ((target, _), value) in assignments.iter().zip(&values) {
        target.replace_data(value)?;
    }
    Ok(report)
}

/// The report and, for each key to load, the module tensor and the file key to read.
type Matched = (LoadReport, Vec<(Tensor, String)>);

/// Pairs module keys with remapped file keys and checks shapes; reads no tensor data.
fn match_keys(
    module: &dyn Module,
    file: &SafetensorsFile,
    options: &LoadOptions,
) -> Result<Matched> {
    let mut by_module_key: HashMap<String, &str> = HashMap::new();
    for file_key in file.names() {
        let key = options.remap(file_key);
        if let Some(other) = by_module_key.insert(key.clone(), file_key) {
            return Err(Error::file(
                file.path(),
                format!("file keys `{other}` and `{file_key}` both map to `{key}`"),
            ));
        }
    }
    let mut report = LoadReport::default();
    let mut assignments = Vec::new();
    let mut module_keys = HashSet::new();
    for (key, target, role) in named_tensors(module) {
        match by_module_key.get(&key) {
            Some(&file_key) => {
                let found = file.shape(file_key)?;
                if found == target.dims() {
                    assignments.push((target, file_key.to_string()));
                    report.loaded.push(key.clone());
                } else {
                    let expected = target.dims().to_vec();
                    report
                        .mismatched
                        .push((key.clone(), expected, found.to_vec()));
                }
            }
            None if role == Role::Buffer(DType::I64) && key.ends_with("num_batches_tracked") => {
                report.kept.push(key.clone())
            }
            None => report.missing.push(key.clone()),
        }
        module_keys.insert(key);
    }
    let mut file_keys: Vec<&String> = file.names().iter().collect();
    file_keys.sort();
    for file_key in file_keys {
        if module_keys.contains(&options.remap(file_key)) {
            continue;
        }
        if options.skips(file_key) {
            report.skipped.push(file_key.clone());
        } else {
            report.unexpected.push(file_key.clone());
        }
    }
    Ok((report, assignments))
}

/// The error of a strict load: every offending key with its expected and found shape.
fn strict_error(
    module: &dyn Module,
    file: &SafetensorsFile,
    report: &LoadReport,
    options: &LoadOptions,
) -> Error {
    let shapes: HashMap<String, Vec<usize>> = named_tensors(module)
        .into_iter()
        .map(|(key, tensor, _)| (key, tensor.dims().to_vec()))
        .collect();
    let mut message = format!(
        "the state dict does not match the {} (strict load; nothing was changed)",
        module.type_name()
    );
    if !report.missing.is_empty() {
        message.push_str(&format!("\n  missing keys ({}):", report.missing.len()));
        for key in &report.missing {
            let shape = shapes.get(key).cloned().unwrap_or_default();
            message.push_str(&format!("\n    {key}: expected {shape:?}, not in the file"));
        }
    }
    if !report.unexpected.is_empty() {
        message.push_str(&format!(
            "\n  unexpected keys ({}):",
            report.unexpected.len()
        ));
        for file_key in &report.unexpected {
            let found = file
                .shape(file_key)
                .map(<[usize]>::to_vec)
                .unwrap_or_default();
            let key = options.remap(file_key);
            let mapped = if key == *file_key {
                String::new()
            } else {
                format!(" (as `{key}`)")
            };
            message.push_str(&format!(
                "\n    {file_key}{mapped}: found {found:?}, not in the module"
            ));
        }
    }
    if !report.mismatched.is_empty() {
        message.push_str(&format!(
            "\n  shape mismatches ({}):",
            report.mismatched.len()
        ));
        for (key, expected, found) in &report.mismatched {
            message.push_str(&format!(
                "\n    {key}: expected {expected:?}, found {found:?}"
            ));
        }
    }
    Error::file(file.path(), message)
}
