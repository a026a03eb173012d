//! The `moeseg` binary.

fn main() {
    if let Err(error) = moeseg::cli::run() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
