//! Helpers shared by the library's integration tests and the command's (which include
//! this file): fixtures, tolerances, temporary folders.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use tch::Tensor;

/// The repository's root (the workspace: tools/, docs/, .venv).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A test fixture (they live with the command's tests: `crates/famix-cli/tests/fixtures`).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../famix-cli/tests/fixtures").join(name)
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

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Random batch-norm statistics and affine parameters, so folding has work to do.
pub fn randomise_bn(m: &famix::Segmenter) {
    tch::no_grad(|| {
        for (name, mut t) in m.vs.variables() {
            if name.ends_with("running_var") {
                t.copy_(&(Tensor::rand_like(&t) * 2.0 + 0.1));
            } else if name.ends_with("running_mean") || (name.contains("bn") && name.ends_with("bias")) {
                t.copy_(&(Tensor::randn_like(&t) * 0.2));
            } else if name.contains("bn") && name.ends_with("weight") {
                t.copy_(&(Tensor::rand_like(&t) + 0.5));
            }
        }
    });
}
