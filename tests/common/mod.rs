//! Helpers shared by the tests that run the `moeseg` binary (`mod common;` in each).
#![allow(dead_code)] // each test file uses its own subset

use std::process::{Command, Output};

/// The tiny synthetic preset the binary tests train.
pub const TINY: &str = "synthetic-enet/tiny";

/// Runs the binary with `args`.
pub fn moeseg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moeseg"))
        .args(args)
        .output()
        .expect("the moeseg binary runs")
}

/// Exit code, stdout and stderr, for failure messages.
pub fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs the binary and asserts it succeeded.
pub fn ok(args: &[&str]) -> Output {
    let output = moeseg(args);
    assert!(
        output.status.success(),
        "moeseg {args:?} failed:\n{}",
        text(&output)
    );
    output
}

/// Runs the binary and returns its stdout, asserting it succeeded.
pub fn ok_stdout(args: &[&str]) -> String {
    String::from_utf8_lossy(&ok(args).stdout).into_owned()
}

/// Runs the binary, asserts it failed, and returns its stderr.
pub fn fails(args: &[&str]) -> String {
    let output = moeseg(args);
    assert!(
        !output.status.success(),
        "moeseg {args:?} should fail:\n{}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}
