//! safetensors files: named tensors, read memory-mapped and converted one tensor at a time
//! ([`SafetensorsFile`]), with the header fully validated on open (a truncated file or a header
//! that lies about sizes or offsets is an error naming the file, never a half-read result), and
//! written atomically (temporary file, fsync, rename).

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensorError, TensorInfo, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bytes of the little-endian u64 header length that starts every file.
const HEADER_LENGTH_BYTES: usize = 8;

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

/// An open safetensors file: the header is parsed and validated (offsets contiguous, each
/// tensor's byte span equal to shape × dtype size, the data ending exactly at the end of the
/// file), the data stays memory-mapped and each [`tensor`](Self::tensor) call converts one
/// tensor to f32, so loading a large checkpoint never holds a second full copy of it.
pub struct SafetensorsFile {
    path: PathBuf,
    map: Mmap,
    /// Offset of the data section in the file (8 + header length).
    data_start: usize,
    metadata: Metadata,
    /// Names in file (offset) order.
    names: Vec<String>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.names.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Maps and validates `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path)
            .map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::file(path, format!("cannot stat: {e}")))?
            .len();
        if file_len < HEADER_LENGTH_BYTES as u64 {
            return Err(Error::file(
                path,
                format!(
                    "truncated: {file_len} bytes, shorter than the {HEADER_LENGTH_BYTES}-byte header length"
                ),
            ));
        }
        // SAFETY: the map is read-only and lives as long as `self`; like every mmap-based
        // reader (PyTorch's safe_open included) it assumes no other process truncates or
        // rewrites the file while it is open. Our own writer replaces files by rename, which
        // leaves an open map intact.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| Error::file(path, format!("cannot memory-map: {e}")))?;
        let (header_len, metadata) = read_header(path, &map)?;
        let names = metadata.offset_keys();
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            map,
            data_start: HEADER_LENGTH_BYTES + header_len,
            metadata,
            names,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names in file order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// True when the file has a tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// The `__metadata__` string map of the header, if any.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.metadata().as_ref()
    }

    /// The shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.info(name)?.shape)
    }

    /// The stored dtype of tensor `name`; an error naming the key for dtypes the engine does
    /// not read (only F32, F16, BF16 and I64 are).
    pub fn dtype(&self, name: &str) -> Result<DType> {
        let stored = self.info(name)?.dtype;
        dtype_from_file(stored).ok_or_else(|| {
            Error::file(
                &self.path,
                format!("tensor `{name}` has dtype {stored}; supported are F32, F16, BF16 and I64"),
            )
        })
    }

    /// Tensor `name` converted to an f32 CPU tensor (i64 values must be exact in f32).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let info = self.info(name)?;
        let dtype = self.dtype(name)?;
        let (begin, end) = info.data_offsets;
        // Validated on open; checked again so a bug can never turn into a panic.
        let bytes = self
            .map
            .get(self.data_start + begin..self.data_start + end)
            .ok_or_else(|| {
                Error::file(
                    &self.path,
                    format!("tensor `{name}`: data offsets {begin}..{end} lie outside the file"),
                )
            })?;
        Tensor::from_bytes(bytes, dtype, info.shape.clone())
            .map_err(|e| Error::file(&self.path, format!("tensor `{name}`: {e}")))
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.metadata
            .info(name)
            .ok_or_else(|| Error::file(&self.path, format!("no tensor `{name}` in the file")))
    }
}

/// Parses and validates the header of the mapped file `bytes`; returns the header length.
fn read_header(path: &Path, bytes: &[u8]) -> Result<(usize, Metadata)> {
    let Some(length) = bytes.first_chunk::<HEADER_LENGTH_BYTES>() else {
        return Err(Error::file(path, "truncated: no complete header length"));
    };
    let header_len = u64::from_le_bytes(*length);
    let available = (bytes.len() - HEADER_LENGTH_BYTES) as u64;
    if header_len > available {
        return Err(Error::file(
            path,
            format!(
                "truncated or corrupt: the header claims {header_len} bytes but only {available} follow the length field"
            ),
        ));
    }
    let (header_len, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| {
        let data_len = available - header_len;
        Error::file(path, describe_header_error(e, data_len))
    })?;
    Ok((header_len, metadata))
}

/// A message for a header the safetensors crate rejected, with what the file actually holds.
fn describe_header_error(error: SafeTensorError, data_len: u64) -> String {
    match error {
        SafeTensorError::InvalidOffset(name) => format!(
            "tensor `{name}`: its data offsets overlap another tensor, leave a gap or are reversed"
        ),
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's data offsets span a different number of bytes than its shape × dtype size"
                .to_string()
        }
        SafeTensorError::MetadataIncompleteBuffer => format!(
            "truncated or corrupt: the header's data offsets do not end at the end of the file \
             ({data_len} bytes of data follow the header)"
        ),
        other => format!("not a valid safetensors file: {other}"),
    }
}

/// Every tensor of a safetensors file, by name, converted to f32 CPU tensors, with the dtype it
/// had in the file.
pub fn load(path: impl AsRef<Path>) -> Result<BTreeMap<String, (Tensor, DType)>> {
    let file = SafetensorsFile::open(path)?;
    file.names()
        .iter()
        .map(|name| Ok((name.clone(), (file.tensor(name)?, file.dtype(name)?))))
        .collect()
}

/// Writes named tensors (each with the dtype to store it as) atomically: the file appears
/// complete or not at all.
pub fn save<'a>(
    path: impl AsRef<Path>,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor, DType)>,
) -> Result<()> {
    save_with_metadata(path, tensors, &[])
}

/// [`save`] with `__metadata__` strings in the header (`format: pt` is what PyTorch tools
/// such as `transformers` look for).
pub fn save_with_metadata<'a>(
    path: impl AsRef<Path>,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor, DType)>,
    metadata: &[(&str, &str)],
) -> Result<()> {
    let path = path.as_ref();
    let encoded: Vec<(&str, Vec<usize>, DType, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, t, dtype)| Ok((name, t.dims().to_vec(), dtype, t.to_bytes(dtype)?)))
        .collect::<Result<_>>()?;
    let mut views = Vec::with_capacity(encoded.len());
    let mut seen = HashSet::new();
    for (name, shape, dtype, bytes) in &encoded {
        if !seen.insert(*name) {
            return Err(Error::file(path, format!("tensor `{name}` is given twice")));
        }
        let view = TensorView::new(dtype_to_file(*dtype), shape.clone(), bytes)
            .map_err(|e| Error::file(path, format!("tensor `{name}`: {e}")))?;
        views.push((name.to_string(), view));
    }
    let metadata = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>()
    });
    let buffer = safetensors::serialize(views, metadata)
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
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    written.map_err(|e| {
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
        assert_eq!(loaded["a"].0.try_to_vec().unwrap(), a.try_to_vec().unwrap());
        assert_eq!(loaded["a"].0.dims(), &[2, 2]);
        assert_eq!(loaded["n"].1, DType::I64);
        let file = SafetensorsFile::open(&path).unwrap();
        assert_eq!(file.shape("a").unwrap(), &[2, 2]);
        assert_eq!(file.dtype("n").unwrap(), DType::I64);
        assert!(file.tensor("b").unwrap_err().to_string().contains("`b`"));
        drop(file);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("t.safetensors"), "{err}");
        std::fs::write(&path, &bytes[..5]).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
