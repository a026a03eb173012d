//! Sparse expert dispatch: each token convolved only by its k selected experts, weighted and summed; backward for tokens, expert weights and biases, and routing weights.

mod cpu_kernel;

/// Kernels of this family.
pub trait RoutedConvBackend {}
