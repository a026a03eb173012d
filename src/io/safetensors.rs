//! safetensors files: named tensors, read with full validation (a truncated file or a header
//! that lies about sizes is an error naming the file, never a half-read result) and written
//! atomically (temporary file, fsync, rename).

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

fn dtype_from_file(dtype: Dtype) -> Option<DType> {
    match dtype {
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        Dtype::I64 => Some(DType::I64),
        _ => None,
    }
}

fn dtype_to_file(dtype: DType) -> Dtype {
    match dtype {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
    }
}

/// Every tensor of a safetensors file, by name, converted to f32 CPU tensors, with the dtype it
/// had in the file.
pub fn load(path: impl AsRef<Path>) -> Result<BTreeMap<String, (Tensor, DType)>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in file.tensors() {
        let dtype = dtype_from_file(view.dtype()).ok_or_else(|| {
            Error::file(
                path,
                format!(
                    "tensor `{name}` has dtype {:?}; supported are F32, F16, BF16 and I64",
                    view.dtype()
                ),
            )
        })?;
        let tensor = Tensor::from_bytes(view.data(), dtype, view.shape().to_vec())
            .map_err(|e| Error::file(path, format!("tensor `{name}`: {e}")))?;
        out.insert(name, (tensor, dtype));
    }
    Ok(out)
}

/// Writes named tensors (each with the dtype to store it as) atomically: the file appears
/// complete or not at all.
pub fn save<'a>(
    path: impl AsRef<Path>,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor, DType)>,
) -> Result<()> {
    let path = path.as_ref();
    let encoded: Vec<(String, Vec<usize>, DType, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, t, dtype)| {
            (
                name.to_string(),
                t.dims().to_vec(),
                dtype,
                t.to_bytes(dtype),
            )
        })
        .collect();
    let mut views = Vec::with_capacity(encoded.len());
    for (name, shape, dtype, bytes) in &encoded {
        let view = TensorView::new(dtype_to_file(*dtype), shape.clone(), bytes)
            .map_err(|e| Error::file(path, format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), view));
    }
    let buffer = safetensors::serialize(views, None)
        .map_err(|e| Error::file(path, format!("cannot encode: {e}")))?;
    write_atomically(path, &buffer)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::file(path, "not a file path"))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
    let io = |e: std::io::Error| Error::file(path, format!("cannot write: {e}"));
    {
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_corruption_is_an_error() {
        let dir = std::env::temp_dir().join(format!("moeseg-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.safetensors");
        let a = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.5], [2, 2]).unwrap();
        let n = Tensor::from_vec(vec![7.0], [1]).unwrap();
        save(&path, [("a", &a, DType::F32), ("n", &n, DType::I64)]).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded["a"].0.to_vec(), a.to_vec());
        assert_eq!(loaded["a"].0.dims(), &[2, 2]);
        assert_eq!(loaded["n"].1, DType::I64);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("t.safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
