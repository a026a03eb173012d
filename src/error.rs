//! The engine's error type: every fallible call returns [`Result`], and every error names the op,
//! tensor, file or key involved together with the shapes it saw.

use std::path::PathBuf;

/// Everything that can go wrong in the engine, as a value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shapes that do not fit the op (wrong rank, mismatched sizes, ...).
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },

    /// Two shapes that cannot be broadcast together.
    #[error("{op}: cannot broadcast shapes {lhs:?} and {rhs:?}")]
    Broadcast {
        op: &'static str,
        lhs: Vec<usize>,
        rhs: Vec<usize>,
    },

    /// An axis outside `-rank..rank`.
    #[error("{op}: axis {axis} is out of range for a tensor of shape {shape:?}")]
    Axis {
        op: &'static str,
        axis: isize,
        shape: Vec<usize>,
    },

    /// An argument with a value the op does not accept (zero stride, p outside [0, 1], ...).
    #[error("{op}: {msg}")]
    InvalidArgument { op: &'static str, msg: String },

    /// Tensors of one op live on different devices.
    #[error("{op}: tensors are on different devices ({lhs} and {rhs})")]
    DeviceMismatch {
        op: &'static str,
        lhs: String,
        rhs: String,
    },

    /// Misuse of the autograd graph (backward from a non-scalar, twice through a freed graph, ...).
    #[error("autograd: {0}")]
    Autograd(String),

    /// A tensor file that cannot be read or written, or whose contents are not what they claim.
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },

    /// The requested feature is not available on this device / build.
    #[error("{0}")]
    Unsupported(String),

    /// CUDA runtime trouble: a library not found, no device, a kernel that does not compile.
    /// Boxed, and built with [`Error::cuda`]: no `From` impl, since a second `From` would break
    /// `?` type inference in closures elsewhere.
    #[error(transparent)]
    Cuda(Box<crate::backend::cuda::CudaError>),
}

impl Error {
    /// Shorthand for [`Error::Shape`].
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }

    /// Shorthand for [`Error::Cuda`].
    pub fn cuda(error: crate::backend::cuda::CudaError) -> Self {
        Error::Cuda(Box::new(error))
    }

    /// Shorthand for [`Error::File`].
    pub fn file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;
