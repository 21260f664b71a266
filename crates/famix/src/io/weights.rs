//! Weight import (shared by CLIP, the segmenter and training): any supported checkpoint file → a name → tensor map, and a strict
//! copy into a model's variables (missing, unexpected and mis-shaped keys are listed
//! in one error; nothing is loaded partially).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::error::{fail, Error, Result};
use tch::{nn, Tensor};

use crate::io::archive::{self, Format};

/// The tensors of one checkpoint file, keys normalised (a DataParallel `module.`
/// prefix is dropped).
pub struct StateDict {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Name → tensor.
    pub tensors: HashMap<String, Tensor>,
    /// The top-level pickled object (PyTorch files), for non-tensor entries.
    pub top: Option<crate::io::pickle::Value>,
    /// safetensors `__metadata__`.
    pub metadata: HashMap<String, String>,
}

impl StateDict {
    /// Reads any supported checkpoint file.
    pub fn load(path: &Path) -> Result<Self> {
        let loaded = archive::load_file(path)?;
        let tensors: HashMap<String, Tensor> =
            loaded.tensors.into_iter().map(|(k, v)| (k.strip_prefix("module.").map(str::to_string).unwrap_or(k), v)).collect();
        if tensors.is_empty() {
            fail!(InvalidInput, path, "{}: the file holds no tensors", path.display());
        }
        Ok(StateDict { path: path.to_path_buf(), format: loaded.format, tensors, top: loaded.top, metadata: loaded.metadata })
    }

    /// Does any key start with `prefix`?
    pub(crate) fn has_prefix(&self, prefix: &str) -> bool {
        self.tensors.keys().any(|k| k.starts_with(prefix))
    }
}

/// Keys that checkpoints carry but no famix model has a variable for.
pub(crate) fn is_bookkeeping_key(k: &str) -> bool {
    k.ends_with("num_batches_tracked")
        || matches!(k, "input_resolution" | "context_length" | "vocab_size" | "logit_scale")
        || k.ends_with("attn_mask")
}

/// Copies `src[src_prefix + name]` into every variable `dst_prefix + name` of `vs`.
/// Keys under `src_prefix` that match no variable are errors unless `ignore` says
/// otherwise. `what` names the model in messages.
pub(crate) fn load_vars(
    vs: &nn::VarStore,
    dst_prefix: &str,
    src: &HashMap<String, Tensor>,
    src_prefix: &str,
    ignore: &dyn Fn(&str) -> bool,
    origin: &Path,
    what: &str,
) -> Result<()> {
    let vars: HashMap<String, Tensor> =
        vs.variables().into_iter().filter_map(|(k, v)| k.strip_prefix(dst_prefix).map(|s| (s.to_string(), v))).collect();
    let mut missing = Vec::new();
    let mut shapes = Vec::new();
    for (name, var) in &vars {
        match src.get(&format!("{src_prefix}{name}")) {
            None => missing.push(format!("{src_prefix}{name}")),
            Some(t) if t.size() != var.size() => shapes.push(format!("{src_prefix}{name} (file {:?}, model {:?})", t.size(), var.size())),
            _ => {}
        }
    }
    let expected: BTreeSet<&String> = vars.keys().collect();
    let mut unexpected: Vec<String> = src
        .keys()
        .filter_map(|k| k.strip_prefix(src_prefix).map(|rest| (k, rest)))
        .filter(|(k, rest)| !expected.contains(&rest.to_string()) && !is_bookkeeping_key(k) && !ignore(k))
        .map(|(k, _)| k.clone())
        .collect();
    missing.sort();
    shapes.sort();
    unexpected.sort();
    if !missing.is_empty() || !shapes.is_empty() || !unexpected.is_empty() {
        return Err(Error::KeyMismatch { path: origin.to_path_buf(), what: what.to_string(), missing, mismatched: shapes, unexpected });
    }
    tch::no_grad(|| -> Result<()> {
        for (name, var) in &vars {
            let t = &src[&format!("{src_prefix}{name}")];
            let mut v = var.shallow_clone();
            v.f_copy_(&t.to_kind(var.kind()))?;
        }
        Ok(())
    })
}

/// Checks that every floating tensor holds only finite values; the error names the
/// first (by the given order) that does not.
pub fn check_finite(tensors: &[(String, Tensor)]) -> Result<()> {
    for (name, t) in tensors {
        if t.is_floating_point() && t.isfinite().logical_not().any().int64_value(&[]) != 0 {
            let bad = t.isfinite().logical_not().sum(tch::Kind::Int64).int64_value(&[]);
            return Err(Error::NonFinite { what: name.clone(), count: bad as u64 });
        }
    }
    Ok(())
}
