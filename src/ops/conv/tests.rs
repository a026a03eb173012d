//! Kernel-level checks against a naive direct convolution, with tiny column budgets so the
//! tiled paths cut images into many partial-row tiles.
