//! Datasets, label conversion, augmentation and the threaded loader.
pub mod augment;
pub mod datasets;
pub mod labels;
pub mod loader;
pub mod prefetch;
pub mod synthetic;

pub use datasets::{Dataset, DatasetKind};

/// An input that could not be read and was skipped (with `--skip-bad`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    /// The file.
    pub path: String,
    /// Why it could not be used.
    pub error: String,
}
use std::path::{Path, PathBuf};

use crate::error::{bail, Context, Result};

/// A .png/.jpg/.jpeg file name (case-insensitive)?
pub fn is_image_file(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// Files under `dir` (recursively or not) whose name passes `keep`, sorted.
pub fn walk_files(dir: &Path, recursive: bool, keep: &dyn Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot list folder {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                if recursive {
                    stack.push(p);
                }
            } else if p.file_name().and_then(|n| n.to_str()).is_some_and(keep) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// All PNG/JPEG files under `dir`, recursively, sorted.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    walk_files(dir, true, &|n| is_image_file(Path::new(n)))
}

/// Expands files and folders into (image path, output stem relative to the output
/// folder); folder inputs keep their sub-folder structure.
pub fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            for p in list_images(input)? {
                let rel = p.strip_prefix(input).unwrap_or(&p).with_extension("");
                out.push((p, rel));
            }
        } else if input.exists() {
            let stem = PathBuf::from(input.file_stem().unwrap_or_default());
            out.push((input.clone(), stem));
        } else {
            bail!("input {} does not exist", input.display());
        }
    }
    Ok(out)
}
