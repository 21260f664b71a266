//! Shared helpers for famix's integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use tch::Tensor;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

/// All tensors of a fixture file (any format famix reads).
pub fn load(name: &str) -> HashMap<String, Tensor> {
    famix::io::archive::load_file(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e:#}")).into_map()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double)).abs().max().double_value(&[])
}

#[track_caller]
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    let d = max_abs_diff(a, b);
    assert!(d <= tol, "{what}: max abs diff {d:e} > {tol:e}");
}

pub fn famix_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_famix"))
}

/// Runs the famix binary; returns (exit code, stdout, stderr).
pub fn run_famix(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(famix_bin()).args(args).output().expect("famix runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}
