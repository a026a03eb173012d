//! Which family of CPU kernels runs: the portable reference forms, or the hand-written SIMD
//! kernels at 8 lanes (AVX2+FMA) or 16 lanes (AVX-512F). `MOESEG_CPU_KERNELS=portable|avx2|avx512`
//! forces a family (unset: the best the CPU has), so one machine can measure and test every
//! family it supports; [`with_kernel_path`] forces one on the calling thread (tests, benches).

use std::cell::Cell;
use std::sync::OnceLock;

/// A family of CPU kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// Plain reference forms: im2col + GEMM convolutions, the routed convolution by slot outputs.
    Portable,
    /// 8-lane AVX2+FMA direct convolution kernels and the `gemm` crate's AVX2 GEMM.
    Avx2,
    /// 16-lane AVX-512F direct convolution kernels and `matrixmultiply`'s AVX-512 GEMM.
    Avx512,
}

impl KernelPath {
    /// Every family, slowest first.
    pub const ALL: [KernelPath; 3] = [KernelPath::Portable, KernelPath::Avx2, KernelPath::Avx512];

    /// The name `MOESEG_CPU_KERNELS` and `MOESEG_REQUIRE_SIMD` use.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Portable => "portable",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512 => "avx512",
        }
    }

    /// The family named `name`, if any.
    pub fn parse(name: &str) -> Option<KernelPath> {
        KernelPath::ALL
            .into_iter()
            .find(|p| p.name() == name.trim())
    }

    /// Whether this CPU can run the family.
    pub fn available(self) -> bool {
        static DETECTED: OnceLock<(bool, bool)> = OnceLock::new();
        let (avx2, avx512) = *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                let avx2 =
                    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
                (avx2, avx2 && std::is_x86_feature_detected!("avx512f"))
            }
            #[cfg(not(target_arch = "x86_64"))]
            (false, false)
        });
        match self {
            KernelPath::Portable => true,
            KernelPath::Avx2 => avx2,
            KernelPath::Avx512 => avx512,
        }
    }

    /// The best family this CPU runs.
    pub fn best() -> KernelPath {
        *KernelPath::ALL
            .iter()
            .rev()
            .find(|p| p.available())
            .unwrap_or(&KernelPath::Portable)
    }

    /// Whether the family uses the hand-written SIMD kernels.
    pub fn is_simd(self) -> bool {
        self != KernelPath::Portable
    }
}

/// The process-wide family: `MOESEG_CPU_KERNELS` if set to a family this CPU runs, else the best
/// available. A family the CPU cannot run (or an unknown name) is reported once on stderr and
/// the best available one runs instead.
pub fn global_path() -> KernelPath {
    static GLOBAL: OnceLock<KernelPath> = OnceLock::new();
    *GLOBAL.get_or_init(|| {
        let best = KernelPath::best();
        match std::env::var("MOESEG_CPU_KERNELS") {
            Err(_) => best,
            Ok(value) => match KernelPath::parse(&value) {
                Some(path) if path.available() => path,
                Some(path) => {
                    eprintln!(
                        "MOESEG_CPU_KERNELS={value}: this CPU cannot run the {} kernels; using {}",
                        path.name(),
                        best.name()
                    );
                    best
                }
                None => {
                    eprintln!(
                        "MOESEG_CPU_KERNELS={value}: unknown (portable, avx2 or avx512); using {}",
                        best.name()
                    );
                    best
                }
            },
        }
    })
}

thread_local! {
    static FORCED: Cell<Option<KernelPath>> = const { Cell::new(None) };
}

/// The family ops launched from the calling thread use: the one [`with_kernel_path`] forces,
/// else [`global_path`]. Ops read it on the launching thread, before their parallel part.
pub fn kernel_path() -> KernelPath {
    FORCED.with(|f| f.get()).unwrap_or_else(global_path)
}

/// Runs `f` with `path` forced on this thread (`path` must be [`available`](KernelPath::available);
/// an unavailable one runs the portable kernels).
pub fn with_kernel_path<R>(path: KernelPath, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<KernelPath>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|flag| flag.set(self.0));
        }
    }
    let path = if path.available() {
        path
    } else {
        KernelPath::Portable
    };
    let _restore = Restore(FORCED.with(|flag| flag.replace(Some(path))));
    f()
}

/// The families `MOESEG_REQUIRE_SIMD` (comma-separated, e.g. `avx2,avx512`) names: tests of a
/// required family that this CPU cannot run fail instead of being skipped.
pub fn required_paths() -> Result<Vec<KernelPath>, String> {
    let Ok(value) = std::env::var("MOESEG_REQUIRE_SIMD") else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            KernelPath::parse(s).ok_or_else(|| {
                format!("MOESEG_REQUIRE_SIMD={value}: unknown family {s:?} (avx2, avx512)")
            })
        })
        .collect()
}

/// The SIMD families a test checks on this CPU: every one it can run. A family that it cannot
/// run is reported on stderr as skipped, or, when `MOESEG_REQUIRE_SIMD` names it, is an error
/// (the test fails instead of passing without checking that path).
pub fn simd_paths_to_test(test: &str) -> Result<Vec<KernelPath>, String> {
    let required = required_paths()?;
    let mut paths = Vec::new();
    for path in [KernelPath::Avx2, KernelPath::Avx512] {
        if path.available() {
            paths.push(path);
        } else if required.contains(&path) {
            return Err(format!(
                "{test}: MOESEG_REQUIRE_SIMD requires the {} kernels, which this CPU cannot run",
                path.name()
            ));
        } else {
            eprintln!("{test}: {} kernels skipped (not on this CPU)", path.name());
        }
    }
    Ok(paths)
}
