//! Indexing: gather, index_select, scatter-add, top-k.

mod cpu_kernel;

/// Kernels of this family.
pub trait IndexBackend {}
