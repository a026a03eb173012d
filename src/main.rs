//! The `moeseg` binary.

fn main() {
    restore_default_sigpipe();
    if let Err(error) = moeseg::cli::run() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`moeseg inspect … | head`) would panic
/// in `println!`; with the default action the process ends quietly, as command-line tools do.
fn restore_default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_DFL at start-up, before any thread exists,
    // has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
