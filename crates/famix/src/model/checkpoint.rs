//! famix segmenter checkpoints and reference-checkpoint import.
//!
//! A famix checkpoint `NAME.safetensors` holds every parameter and BN buffer under
//! the reference's names (`backbone.*`, `classifier.*`) and, in its safetensors
//! metadata, a JSON header (architecture, output stride, classes, palette, freeze
//! policy, training step, best mIoU, optimiser-state file, famix version). The same
//! header is written beside it as `NAME.json` for people and scripts. Files are
//! written atomically. Reference FAMix `*.pth` files load directly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{bail, fail, format_err, Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::clip::{OutputStride, ResNetConfig};
use crate::data::classes::ClassSet;
use crate::io::archive::{save_safetensors, Format};
use crate::io::weights::{load_vars, StateDict};
use crate::model::deeplab::HeadConfig;
use crate::model::segmenter::{FreezePolicy, Segmenter, SegmenterConfig};

/// The `format` field of famix segmenter checkpoints.
pub const FORMAT: &str = "famix-segmenter";
/// The newest checkpoint format this famix reads and writes.
pub const FORMAT_VERSION: u32 = 1;
pub(crate) const META_KEY: &str = "famix";

#[derive(Debug, Clone, Serialize, Deserialize)]
/// A famix checkpoint's header.
pub struct CheckpointMeta {
    /// Always [`FORMAT`].
    pub format: String,
    /// The format version (see [`FORMAT_VERSION`]).
    pub format_version: u32,
    /// The famix version that wrote the file.
    pub famix_version: String,
    #[serde(flatten)]
    /// The network and its classes.
    pub model: SegmenterConfig,
    /// Training iterations done when this was written.
    pub step: u64,
    /// Best validation mIoU of the run so far.
    pub best_miou: Option<f64>,
    /// Free-form provenance (CLIP checkpoint, dataset, style bank, ...).
    #[serde(default)]
    pub source: serde_json::Value,
}

impl CheckpointMeta {
    /// A header for `model` at step 0.
    pub fn new(model: &SegmenterConfig) -> Self {
        CheckpointMeta {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            famix_version: env!("CARGO_PKG_VERSION").into(),
            model: model.clone(),
            step: 0,
            best_miou: None,
            source: serde_json::Value::Null,
        }
    }
}

/// `run/latest` → `run/latest.safetensors`, `run/latest.json` → `.safetensors`.
pub(crate) fn weights_path(path: &Path) -> PathBuf {
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => path.to_path_buf(),
        Some("json") => path.with_extension("safetensors"),
        _ if !path.exists() => PathBuf::from(format!("{}.safetensors", path.display())),
        _ => path.to_path_buf(),
    }
}

/// The JSON header written beside a checkpoint.
pub(crate) fn sidecar_path(weights: &Path) -> PathBuf {
    weights.with_extension("json")
}

/// Writes weights + header atomically (temp file, fsync, rename, folder fsync), then
/// the JSON sidecar (a copy of the header for people and scripts; famix reads the
/// header from the weights file, so the two renames need not be one step).
pub fn save(seg: &Segmenter, meta: &CheckpointMeta, path: &Path) -> Result<PathBuf> {
    save_with(seg, meta, Vec::new(), HashMap::new(), path)
}

pub use crate::io::run_folder::EXTRA_PREFIX;

/// [`save`] with extra tensors (named under [`EXTRA_PREFIX`]) and metadata entries
/// in the same file, so everything becomes visible in one rename: a training
/// checkpoint's weights, optimiser state and step cannot disagree after a crash.
pub(crate) fn save_with(
    seg: &Segmenter,
    meta: &CheckpointMeta,
    extra: Vec<(String, Tensor)>,
    mut metadata: HashMap<String, String>,
    path: &Path,
) -> Result<PathBuf> {
    let path = weights_path(path);
    if !meta.best_miou.is_none_or(f64::is_finite) {
        return Err(Error::NonFinite { what: format!("the best mIoU to write into {}", path.display()), count: 1 });
    }
    let mut tensors: Vec<(String, Tensor)> = seg.vs.variables().into_iter().collect();
    for (k, t) in extra {
        if !k.starts_with(EXTRA_PREFIX) {
            bail!("internal: extra checkpoint tensor {k:?} must be named {EXTRA_PREFIX}*");
        }
        tensors.push((k, t));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    crate::io::weights::check_finite(&tensors).map_err(|e| e.context(format!("{}: refusing to write a checkpoint", path.display())))?;
    metadata.insert(META_KEY.to_string(), serde_json::to_string(meta)?);
    save_safetensors(&path, &tensors, Some(metadata))?;
    crate::io::atomic_write_json(&sidecar_path(&path), meta)?;
    Ok(path)
}

/// Writes a random-weight segmenter of the tiny architecture
/// ([`ResNetConfig::tiny`], [`HeadConfig::tiny`], OS16) to `path` and returns the
/// weights' path: for examples, documentation and tests that need a checkpoint.
pub fn save_random_tiny(path: &Path, num_classes: i64) -> Result<PathBuf> {
    save_random(path, ResNetConfig::tiny(), HeadConfig::tiny(num_classes))
}

/// Writes a random-weight segmenter of any architecture (OS16): for benchmarks of
/// real model sizes without trained weights.
pub fn save_random(path: &Path, backbone: ResNetConfig, head: HeadConfig) -> Result<PathBuf> {
    let mut cfg = SegmenterConfig::new(backbone, head.num_classes, OutputStride::Os16, FreezePolicy::Synthetic);
    cfg.head = head;
    let model = Segmenter::new(cfg, Device::Cpu)?;
    let meta = CheckpointMeta::new(model.config());
    save(&model, &meta, path)
}

/// What was loaded and from where.
pub struct Loaded {
    /// The model.
    pub model: Segmenter,
    /// Its header (made up for imported reference files).
    pub meta: CheckpointMeta,
    /// The file read.
    pub path: PathBuf,
    /// Whether it was a reference checkpoint.
    pub imported: bool,
    /// Tensors under [`EXTRA_PREFIX`] (a training checkpoint's optimiser state).
    pub extra: HashMap<String, Tensor>,
    /// The file's safetensors metadata besides the header (training state).
    pub metadata: HashMap<String, String>,
}

/// Loads a famix checkpoint or a reference FAMix `.pth`. `output_stride` overrides
/// the stored one (reference files do not record it; they default to 16).
pub fn load(path: &Path, device: Device, output_stride: Option<OutputStride>) -> Result<Loaded> {
    let wpath = weights_path(path);
    let src = if wpath.exists() { wpath } else { path.to_path_buf() };
    if !src.exists() {
        fail!(InvalidInput, path, "checkpoint {} not found", path.display());
    }
    let sd = StateDict::load(&src)?;
    if sd.format == Format::Safetensors && sd.metadata.contains_key(META_KEY) {
        let meta: CheckpointMeta =
            serde_json::from_str(&sd.metadata[META_KEY]).map_err(|e| Error::from(e).unreadable(&src, "unreadable famix header"))?;
        if meta.format != FORMAT {
            fail!(InvalidInput, &src, "{}: format {:?}, expected {FORMAT:?}", src.display(), meta.format);
        }
        if meta.format_version > FORMAT_VERSION {
            return Err(Error::CheckpointTooNew { path: src.clone(), version: meta.format_version, supported: FORMAT_VERSION });
        }
        let mut cfg = meta.model.clone();
        if let Some(os) = output_stride {
            cfg.output_stride = os;
        }
        check_header(&cfg, &sd).map_err(|e| e.unreadable(&src, "the header does not describe the weights"))?;
        let model = Segmenter::new(cfg, Device::Cpu).map_err(|e| e.unreadable(&src, "the header describes no valid segmenter"))?;
        let extra_key = |k: &str| k.starts_with(EXTRA_PREFIX);
        load_vars(&model.vs, "", &sd.tensors, "", &extra_key, &src, "segmenter described by its header")?;
        check_model_finite(&model, &src)?;
        let model = to_device(model, device);
        let extra = sd.tensors.iter().filter(|(k, _)| extra_key(k)).map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
        let mut metadata = sd.metadata.clone();
        metadata.remove(META_KEY);
        return Ok(Loaded { model, meta, path: src, imported: false, extra, metadata });
    }
    let (model, meta) = import_state(&sd, device, output_stride.unwrap_or(OutputStride::Os16))?;
    check_model_finite(&model, &src)?;
    Ok(Loaded { model, meta, path: src, imported: true, extra: HashMap::new(), metadata: HashMap::new() })
}

/// The head a state dict's shapes describe (dropout: the reference's 0.1).
fn infer_head(sd: &StateDict) -> Result<HeadConfig> {
    let get = |k: &str| -> Result<i64> {
        let size = sd.tensors.get(k).map(|t| t.size()).ok_or_else(|| format_err!("missing {k}"))?;
        size.first().copied().filter(|&n| n > 0).ok_or_else(|| format_err!("{k} has shape {size:?}"))
    };
    Ok(HeadConfig {
        num_classes: get("classifier.classifier.3.weight")?,
        aspp_channels: get("classifier.aspp.project.0.weight")?,
        low_proj_channels: get("classifier.project.0.weight")?,
        dropout: 0.1,
    })
}

/// Checks a header against the tensors before anything is allocated from it: the
/// architecture must be the one the shapes describe (so a crafted header cannot make
/// famix build a huge or negative-sized network), and the other fields must be sane.
/// Where the head's tensors are missing, the header's values must be within
/// plausible bounds (a few hundred MB at most), and the strict key check that
/// follows lists every missing key.
fn check_header(cfg: &SegmenterConfig, sd: &StateDict) -> Result<()> {
    let (b, h) = (&cfg.backbone, &cfg.head);
    let plausible = |name: &str, v: i64, max: i64| -> Result<()> {
        if !(1..=max).contains(&v) {
            bail!("{name} {v} is not in 1..={max}");
        }
        Ok(())
    };
    for (i, &n) in b.layers.iter().enumerate() {
        plausible(&format!("layer{} blocks", i + 1), n, 256)?;
    }
    plausible("width", b.width, 1024)?;
    plausible("classes", h.num_classes, 1024)?;
    plausible("ASPP channels", h.aspp_channels, 1024)?;
    plausible("low-level projection channels", h.low_proj_channels, 1024)?;
    plausible("input resolution", b.input_resolution, 4096)?;
    plausible("attention heads", b.heads, 1024)?;
    // The backbone is most of the network: its shape must come from the weights.
    let inferred = ResNetConfig::infer(&sd.tensors, "backbone.")?;
    if (inferred.layers, inferred.width) != (b.layers, b.width) {
        bail!("header says layers {:?} width {}, the weights are layers {:?} width {}", b.layers, b.width, inferred.layers, inferred.width);
    }
    if let Ok(head) = infer_head(sd) {
        if (head.num_classes, head.aspp_channels, head.low_proj_channels) != (h.num_classes, h.aspp_channels, h.low_proj_channels) {
            bail!("header says head {h:?}, the weights are {head:?}");
        }
    }
    if !(h.dropout.is_finite() && (0.0..1.0).contains(&h.dropout)) {
        bail!("head dropout {} is not in [0, 1)", h.dropout);
    }
    cfg.validate()
}

/// Refuses weights or batch-norm statistics that are NaN or infinite, naming the
/// tensor: such a model predicts garbage, and a resume from it diverges at once.
fn check_model_finite(model: &Segmenter, path: &Path) -> Result<()> {
    let mut vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    crate::io::weights::check_finite(&vars).map_err(|e| e.context(format!("{}: unusable checkpoint", path.display())))
}

fn to_device(mut model: Segmenter, device: Device) -> Segmenter {
    model.vs.set_device(device);
    model
}

/// A reference checkpoint's `model_state` (or a bare state dict with the same keys).
pub fn import_state(sd: &StateDict, device: Device, os: OutputStride) -> Result<(Segmenter, CheckpointMeta)> {
    let path = &sd.path;
    if !sd.has_prefix("backbone.") || !sd.has_prefix("classifier.") {
        let hint = if sd.has_prefix("visual.") { " (this is a CLIP checkpoint: load it as a CLIP)" } else { "" };
        fail!(InvalidInput, path, "{}: not a segmenter checkpoint (no backbone.*/classifier.* weights){hint}", path.display());
    }
    let not_famix = "not the weights of a FAMix segmenter";
    let backbone = ResNetConfig::infer(&sd.tensors, "backbone.").map_err(|e| e.unreadable(path, not_famix))?;
    let head = infer_head(sd).map_err(|e| e.unreadable(path, not_famix))?;
    let num_classes = head.num_classes;
    let cfg = SegmenterConfig {
        backbone: ResNetConfig { output_dim: None, ..backbone },
        head,
        output_stride: os,
        classes: ClassSet::default_for(num_classes.max(0) as usize),
        freeze: FreezePolicy::Synthetic,
    };
    let model = Segmenter::new(cfg.clone(), Device::Cpu)?;
    load_vars(&model.vs, "", &sd.tensors, "", &|k| k.starts_with("backbone.attnpool."), path, "FAMix segmenter")?;
    let mut meta = CheckpointMeta::new(&cfg);
    if let Some(top) = &sd.top {
        if let Some(it) = top.get("cur_itrs").and_then(|v| v.as_int()) {
            meta.step = it.max(0) as u64;
        }
        meta.best_miou = top.get("best_score").and_then(|v| v.as_f64());
    }
    meta.source = serde_json::json!({"imported_from": path.display().to_string()});
    Ok((to_device(model, device), meta))
}
