//! Choosing where to compute: `auto`, `cpu`, `cuda`, `cuda:N`, `cuda-emu` or `cuda-emu:N`.
//!
//! [`select`] never panics. `auto` takes CUDA device 0 when a driver and a device are present,
//! else the CPU with one line saying why (it never picks the emulated device); `cuda[:N]` is an
//! error saying why and where it looked when that device cannot be used; `cuda-emu[:N]` needs
//! a host C++ compiler.

use super::libraries;
use super::CudaError;
use std::fmt;
use std::str::FromStr;

/// A CUDA device the engine can compute on: GPU `ordinal` through the driver, or emulated
/// device `ordinal` (each has its own memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CudaDevice {
    pub ordinal: usize,
    pub emulated: bool,
}

impl CudaDevice {
    /// GPU `ordinal`.
    pub fn gpu(ordinal: usize) -> CudaDevice {
        CudaDevice {
            ordinal,
            emulated: false,
        }
    }

    /// Emulated device `ordinal`.
    pub fn emulated(ordinal: usize) -> CudaDevice {
        CudaDevice {
            ordinal,
            emulated: true,
        }
    }
}

impl fmt::Display for CudaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.emulated {
            false => write!(f, "cuda:{}", self.ordinal),
            true => write!(f, "cuda-emu:{}", self.ordinal),
        }
    }
}

/// What the user asked for (`--device`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceRequest {
    /// CUDA device 0 if usable, else the CPU.
    #[default]
    Auto,
    /// The CPU backend.
    Cpu,
    /// CUDA device `ordinal` (`cuda` is `cuda:0`); an error if it cannot be used.
    Cuda { ordinal: usize },
    /// The emulated CUDA device `ordinal` (`cuda-emu` is `cuda-emu:0`).
    Emulated { ordinal: usize },
}

impl FromStr for DeviceRequest {
    type Err = CudaError;

    fn from_str(text: &str) -> Result<Self, CudaError> {
        let invalid = |msg: String| CudaError::InvalidRequest {
            request: text.to_string(),
            msg,
        };
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" => Ok(DeviceRequest::Cuda { ordinal: 0 }),
            "cuda-emu" => Ok(DeviceRequest::Emulated { ordinal: 0 }),
            other => {
                let number = |text: &str, kind: &str| {
                    text.parse::<usize>().map_err(|_| {
                        invalid(format!(
                            "`{text}` is not a device number (expected {kind}:0, {kind}:1, ...)"
                        ))
                    })
                };
                if let Some(text) = other.strip_prefix("cuda-emu:") {
                    number(text, "cuda-emu").map(|ordinal| DeviceRequest::Emulated { ordinal })
                } else if let Some(text) = other.strip_prefix("cuda:") {
                    number(text, "cuda").map(|ordinal| DeviceRequest::Cuda { ordinal })
                } else {
                    Err(invalid(
                        "expected one of auto, cpu, cuda, cuda:N, cuda-emu, cuda-emu:N \
                         (N = device number)"
                            .to_string(),
                    ))
                }
            }
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRequest::Auto => write!(f, "auto"),
            DeviceRequest::Cpu => write!(f, "cpu"),
            DeviceRequest::Cuda { ordinal } => write!(f, "cuda:{ordinal}"),
            DeviceRequest::Emulated { ordinal } => write!(f, "cuda-emu:{ordinal}"),
        }
    }
}

/// The outcome of [`select`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selected {
    /// Compute on the CPU; `reason` is set when `auto` fell back from CUDA, saying why in one
    /// line.
    Cpu { reason: Option<String> },
    /// Compute on CUDA device `ordinal` (a context was created on it successfully).
    Cuda { ordinal: usize },
    /// Compute on the emulated CUDA device `ordinal` (a host C++ compiler was found).
    Emulated { ordinal: usize },
}

/// Resolves `request` to a device without panicking: probes libcuda (guarded, see
/// [`libraries::cuda_driver`]), the device count and a context on the device.
pub fn select(request: DeviceRequest) -> Result<Selected, CudaError> {
    match request {
        DeviceRequest::Cpu => Ok(Selected::Cpu { reason: None }),
        DeviceRequest::Auto => Ok(match probe(0) {
            Ok(ordinal) => Selected::Cuda { ordinal },
            Err(why) => Selected::Cpu {
                reason: Some(format!("using the CPU: {}", why.one_line)),
            },
        }),
        DeviceRequest::Emulated { ordinal } => super::emu::compile::host_compiler()
            .map(|_| Selected::Emulated { ordinal })
            .map_err(|e| CudaError::DeviceUnavailable {
                request: request.to_string(),
                msg: e.to_string(),
            }),
        DeviceRequest::Cuda { ordinal } => probe(ordinal)
            .map(|ordinal| Selected::Cuda { ordinal })
            .map_err(|why| CudaError::DeviceUnavailable {
                request: request.to_string(),
                msg: why.detail,
            }),
    }
}

/// Why a CUDA device cannot be used: one line for `auto`'s fallback notice, and the full
/// story (every place searched) for an explicit `cuda` request.
struct Unavailable {
    one_line: String,
    detail: String,
}

impl Unavailable {
    fn same(msg: String) -> Self {
        Unavailable {
            one_line: msg.clone(),
            detail: msg,
        }
    }
}

/// Checks that CUDA device `ordinal` can be used: driver library, `cuInit`, device count,
/// context creation.
fn probe(ordinal: usize) -> Result<usize, Unavailable> {
    let driver = libraries::cuda_driver().map_err(|e| {
        let searched = match &e {
            CudaError::LibraryNotFound { searched, .. } => searched.len(),
            _ => 0,
        };
        Unavailable {
            one_line: format!(
                "no CUDA driver (libcuda.so.1 not found in {searched} places searched; \
                 requesting `cuda` lists them)"
            ),
            detail: format!("no CUDA driver: {e}"),
        }
    })?;
    let count = cudarc::driver::CudaContext::device_count().map_err(|e| {
        Unavailable::same(format!(
            "the CUDA driver {} is loaded but cuInit / cuDeviceGetCount failed: {e}",
            driver.path.display()
        ))
    })?;
    let count = usize::try_from(count).unwrap_or(0);
    if count == 0 {
        return Err(Unavailable::same(format!(
            "the CUDA driver {} reports no CUDA device",
            driver.path.display()
        )));
    }
    if ordinal >= count {
        return Err(Unavailable::same(format!(
            "there is no CUDA device {ordinal}: the driver {} reports {count} device(s), \
             numbered 0..{count}",
            driver.path.display()
        )));
    }
    cudarc::driver::CudaContext::new(ordinal).map_err(|e| {
        Unavailable::same(format!(
            "CUDA device {ordinal} is present but a context could not be created on it: {e}"
        ))
    })?;
    Ok(ordinal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!("auto".parse(), Ok(DeviceRequest::Auto));
        assert_eq!(" CPU ".parse(), Ok(DeviceRequest::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceRequest::Cuda { ordinal: 0 }));
        assert_eq!("cuda:3".parse(), Ok(DeviceRequest::Cuda { ordinal: 3 }));
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "cuda0", ""] {
            assert!(bad.parse::<DeviceRequest>().is_err(), "{bad}");
        }
        assert_eq!(DeviceRequest::Cuda { ordinal: 2 }.to_string(), "cuda:2");
        assert_eq!(
            "cuda-emu".parse(),
            Ok(DeviceRequest::Emulated { ordinal: 0 })
        );
        assert_eq!(
            "CUDA-EMU:1".parse(),
            Ok(DeviceRequest::Emulated { ordinal: 1 })
        );
        for bad in ["cuda-emu:", "cuda-emu:x", "cuda_emu", "emu"] {
            assert!(bad.parse::<DeviceRequest>().is_err(), "{bad}");
        }
        assert_eq!(CudaDevice::emulated(1).to_string(), "cuda-emu:1");
    }
}
