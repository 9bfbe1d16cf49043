//! Helpers shared by the CLI tests; each test file uses some of them.
#![allow(dead_code)]

use std::process::{Command, Output};

/// Runs the mtseg binary built for these tests.
pub fn mtseg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mtseg"))
        .args(args)
        .output()
        .expect("the mtseg binary runs")
}

/// Runs mtseg, asserts that it succeeded without a panic, and returns its standard output.
pub fn ok(args: &[&str]) -> String {
    let out = mtseg(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mtseg {args:?} failed: {err}");
    assert!(!err.contains("panicked"), "{err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
