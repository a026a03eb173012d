//! The compile-only check: every kernel family compiled by NVRTC for each architecture, no GPU
//! needed.

use crate::backend::cuda::{self, Arch, KernelCompiler, OutputFormat, KERNELS};
use crate::error::{Error, Result};

/// One family compiled for one architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct CompileRow {
    pub family: String,
    pub arch: String,
    /// NVRTC's time (0 when the image came from a cache).
    pub seconds: f64,
    pub cubin_bytes: usize,
    /// The compile error, when it failed.
    pub error: Option<String>,
}

impl CompileRow {
    pub fn pass(&self) -> bool {
        self.error.is_none()
    }
}

/// NVRTC's version and where it was loaded from, e.g. `NVRTC 12.4 at /usr/lib/...`; an error
/// when NVRTC cannot be loaded.
pub fn nvrtc_description() -> Result<String> {
    let nvrtc = cuda::nvrtc().map_err(Error::cuda)?;
    Ok(format!(
        "NVRTC {} at {}",
        nvrtc.version_string(),
        nvrtc.path.display()
    ))
}

/// Compiles every kernel family (`kernels/*.cu`) to cubin for each of `archs` (`sm_80`, ...),
/// calling `on_row` after each compile. An error when NVRTC is missing or an architecture does
/// not parse; a compile error is a row.
pub fn compile_families(
    archs: &[String],
    mut on_row: impl FnMut(&CompileRow),
) -> Result<Vec<CompileRow>> {
    cuda::nvrtc().map_err(Error::cuda)?;
    let archs: Vec<Arch> = archs
        .iter()
        .map(|arch| Arch::parse(arch.trim()).map_err(Error::cuda))
        .collect::<Result<_>>()?;
    let compiler = KernelCompiler::new(None);
    let mut rows = Vec::new();
    for arch in &archs {
        for (family, _) in KERNELS {
            let row = match compiler.compile_family(family, arch, OutputFormat::Cubin) {
                Ok(compiled) => CompileRow {
                    family: family.to_string(),
                    arch: arch.to_string(),
                    seconds: match compiled.origin {
                        cuda::Origin::Nvrtc { seconds } => seconds,
                        _ => 0.0,
                    },
                    cubin_bytes: compiled.image.bytes.len(),
                    error: None,
                },
                Err(e) => CompileRow {
                    family: family.to_string(),
                    arch: arch.to_string(),
                    seconds: 0.0,
                    cubin_bytes: 0,
                    error: Some(e.to_string()),
                },
            };
            on_row(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}
