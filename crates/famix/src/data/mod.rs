//! Datasets, label conversion, augmentation and the threaded loader.
pub mod augment;
pub(crate) mod captions;
pub mod classes;
pub mod datasets;
pub mod labels;
pub mod loader;
pub mod prefetch;
pub mod staging;

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

use crate::error::{fail, Context, Result};

/// A .png/.jpg/.jpeg file name (case-insensitive)?
pub(crate) fn is_image_file(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// Files under `dir` (recursively or not) whose name passes `keep`, sorted. Symbolic
/// links are followed, but every folder and file is visited once (by canonical path),
/// so link loops and doubly-linked files neither hang nor duplicate. Names that are
/// not UTF-8 are matched on their lossy form and kept as they are.
pub(crate) fn walk_files(dir: &Path, recursive: bool, keep: &dyn Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut seen_dirs = std::collections::HashSet::new();
    let mut seen_files = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let canon = std::fs::canonicalize(&d).with_context(|| format!("cannot resolve folder {}", d.display()))?;
        if !seen_dirs.insert(canon) {
            continue;
        }
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot list folder {}", d.display()))? {
            let p = e.with_context(|| format!("cannot list folder {}", d.display()))?.path();
            if p.is_dir() {
                if recursive {
                    stack.push(p);
                }
            } else if p.file_name().is_some_and(|n| keep(&n.to_string_lossy())) {
                // A dangling link has no canonical path: keep it, reading it will say why.
                let id = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
                if seen_files.insert(id) {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// All PNG/JPEG files under `dir`, recursively, sorted.
pub(crate) fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    walk_files(dir, true, &|n| is_image_file(Path::new(n)))
}

/// An input image and its output stem (relative to the output folder).
pub type InputItem = (PathBuf, PathBuf);

/// Expands files and folders into (image path, output stem relative to the output
/// folder); folder inputs keep their sub-folder structure. Stems that would collide
/// (`x.png` and `x.jpg`, or two inputs named `y.png` from different folders) get the
/// extension appended (`x_png`, `x_jpg`) and, if still equal, a counter in input
/// order (`y_png_2`); each rename is returned as a note.
pub fn collect_inputs(inputs: &[PathBuf]) -> Result<(Vec<InputItem>, Vec<String>)> {
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
            fail!(InvalidInput, input, "input {} does not exist", input.display());
        }
    }
    let notes = dedupe_stems(&mut out);
    Ok((out, notes))
}

/// Renames colliding output stems (see [`collect_inputs`]); returns the notes.
fn dedupe_stems(items: &mut [(PathBuf, PathBuf)]) -> Vec<String> {
    let mut count: std::collections::HashMap<PathBuf, usize> = std::collections::HashMap::new();
    for (_, stem) in items.iter() {
        *count.entry(stem.clone()).or_default() += 1;
    }
    let mut taken: std::collections::HashSet<PathBuf> = items.iter().filter(|(_, s)| count[s] == 1).map(|(_, s)| s.clone()).collect();
    let mut notes = Vec::new();
    for (path, stem) in items.iter_mut() {
        if count[stem] == 1 {
            continue;
        }
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        let base = format!("{}_{ext}", stem.display());
        let mut candidate = PathBuf::from(&base);
        let mut k = 2;
        while !taken.insert(candidate.clone()) {
            candidate = PathBuf::from(format!("{base}_{k}"));
            k += 1;
        }
        notes.push(format!("{} would share its output name with another input: writing it as {}", path.display(), candidate.display()));
        *stem = candidate;
    }
    notes
}
