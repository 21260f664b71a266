//! What a training run is (its configuration, written to RUN_DIR/config.json and
//! reused on resume) and how one invocation runs it (device, threads, stop point),
//! with the checks made before any file is touched.

use std::path::PathBuf;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

use tch::Device;

use crate::clip::OutputStride;
use crate::data::classes::ClassSet;
use crate::data::DatasetKind;
use crate::model::{FreezePolicy, HeadConfig, Precision};
use crate::style::mixing::StyleMode;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// The validation set of a run.
pub struct ValSpec {
    /// Its layout.
    pub dataset: DatasetKind,
    /// Its root folder.
    pub data_root: PathBuf,
    /// Its split (`val` when a configuration leaves it out).
    #[serde(default = "val_split")]
    pub split: String,
    /// The ACDC condition, if any.
    #[serde(default)]
    pub condition: Option<String>,
    /// Validate on the first N images only.
    #[serde(default)]
    pub limit: Option<usize>,
}

fn val_split() -> String {
    "val".into()
}

impl ValSpec {
    /// The `val` split of a dataset, all of it.
    pub fn val_split(dataset: DatasetKind, data_root: PathBuf) -> Self {
        ValSpec { dataset, data_root, split: val_split(), condition: None, limit: None }
    }
}

/// Everything a run needs; written to RUN_DIR/config.json and reused on resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// CLIP checkpoint of the backbone's initial weights.
    pub clip: PathBuf,
    /// Its SHA-256.
    pub clip_sha256: String,
    /// Source dataset layout.
    pub dataset: DatasetKind,
    /// Source dataset root.
    pub data_root: PathBuf,
    /// Source split.
    pub split: String,
    /// ACDC condition of the source, if any.
    pub condition: Option<String>,
    /// The style bank.
    pub styles: Option<PathBuf>,
    /// Mixing, styles without mixing, no styles, or the random-style control.
    pub style_mode: StyleMode,
    /// Total iterations.
    pub iters: u64,
    /// Images per iteration.
    pub batch: usize,
    /// Crop size.
    pub crop: usize,
    /// Head learning rate; the backbone's is `lr · backbone_lr_mult`.
    pub lr: f64,
    /// Backbone learning rate as a multiple of `lr`.
    pub backbone_lr_mult: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// SGD weight decay.
    pub weight_decay: f64,
    /// Poly schedule power.
    pub poly_power: f64,
    /// Floor of the schedule.
    pub min_lr: f64,
    /// Cross-entropy label smoothing.
    pub label_smoothing: f64,
    /// Backbone output stride.
    pub output_stride: OutputStride,
    /// What trains.
    pub freeze: FreezePolicy,
    /// Style grid, patches per side.
    pub grid: usize,
    /// Beta(beta, beta) mixing weights.
    pub beta: f64,
    /// Colour jitter + flips (the reference's `--data_aug`).
    pub augment: bool,
    /// The head.
    pub head: HeadConfig,
    /// Validation set, if any: chooses `best`.
    pub val: Option<ValSpec>,
    /// Further sets evaluated at every checkpoint, by name, only to watch them (e.g. a
    /// validation *condition* next to the source's validation split): their mIoU goes
    /// to the log (`monitor_miou`) and the report's curves, never into the choice of
    /// `best`.
    #[serde(default)]
    pub monitor: std::collections::BTreeMap<String, ValSpec>,
    /// Iterations between validations and checkpoints.
    pub val_interval: u64,
    /// Iterations between log lines.
    pub log_interval: u64,
    /// Seed of every random choice.
    pub seed: u64,
    /// The forward pass's precision: fp32 (the reference's) or bf16 autocast. Stored
    /// in config.json as `"amp_bf16": true|false`, as every famix version wrote it.
    #[serde(rename = "amp_bf16", with = "bf16_flag")]
    pub precision: Precision,
    /// A random id given to the run when it starts; its checkpoints carry it, and
    /// resume refuses a checkpoint of another run.
    #[serde(default)]
    pub run_id: String,
    /// CUDA numerics of the run (deterministic kernels, TF32); applied by `train`.
    /// Runs written before this field had libtorch's defaults, which `default` is.
    #[serde(default)]
    pub numerics: crate::device::Numerics,
    /// The classes, when not the default ones of `head.num_classes`
    /// ([`ClassSet::default_for`]); the head predicts as many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<ClassSet>,
}

impl TrainConfig {
    /// The reference's hyper-parameters (40k iterations, batch 8, crop 768, SGD 0.1/0.01
    /// with momentum 0.9, poly 0.9, label smoothing 0.1, OS16, mixing with Beta(0.1, 0.1))
    /// for training on `dataset`; callers override what they need.
    pub fn reference(clip: PathBuf, clip_sha256: String, dataset: DatasetKind, data_root: PathBuf, styles: Option<PathBuf>) -> Self {
        TrainConfig {
            clip,
            clip_sha256,
            dataset,
            data_root,
            split: "train".into(),
            condition: None,
            style_mode: if styles.is_some() { StyleMode::Mix } else { StyleMode::NoStyles },
            styles,
            iters: 40_000,
            batch: 8,
            crop: 768,
            lr: 0.1,
            backbone_lr_mult: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            poly_power: 0.9,
            min_lr: 1e-6,
            label_smoothing: 0.1,
            output_stride: OutputStride::Os16,
            freeze: Self::default_freeze(dataset),
            grid: 3,
            beta: 0.1,
            augment: true,
            head: HeadConfig::reference(19),
            val: None,
            monitor: Default::default(),
            val_interval: 750,
            log_interval: 10,
            seed: 1,
            precision: Precision::Fp32,
            run_id: String::new(),
            numerics: crate::device::Numerics::default(),
            classes: None,
        }
    }

    /// The run's classes: the class set given, else the default names of the head's count.
    pub fn class_set(&self) -> ClassSet {
        self.classes.clone().unwrap_or_else(|| ClassSet::default_for(self.head.num_classes.max(0) as usize))
    }

    /// Uses `classes` (and a head that predicts as many).
    pub(crate) fn set_classes(&mut self, classes: ClassSet) {
        self.head.num_classes = classes.len() as i64;
        self.classes = Some(classes);
    }

    /// The reference's freeze policy for a source dataset.
    pub(crate) fn default_freeze(d: DatasetKind) -> FreezePolicy {
        match d {
            DatasetKind::Cityscapes => FreezePolicy::Layer4,
            _ => FreezePolicy::Synthetic,
        }
    }
}

/// [`Precision`] as config.json's `amp_bf16` flag (bf16 autocast on or off).
mod bf16_flag {
    use crate::model::Precision;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(p: &Precision, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(*p == Precision::Bf16)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Precision, D::Error> {
        Ok(if bool::deserialize(d)? { Precision::Bf16 } else { Precision::Fp32 })
    }
}

/// How to run (not what to train): these may differ between a run and its resume.
pub struct RunOptions {
    /// Where to compute.
    pub device: Device,
    /// Data-loading threads.
    pub workers: usize,
    /// Stop (with a checkpoint) after this many iterations in this invocation.
    pub stop_after: Option<u64>,
    /// Replace unreadable training samples by the next readable one.
    pub skip_bad: bool,
    /// Also write the log's scalars as TensorBoard event files in this folder.
    pub tensorboard: Option<PathBuf>,
    /// Run the plain path instead of the training fast path ([`crate::model::Segmenter::fold_frozen`]).
    pub no_fold: bool,
    /// Resume even when the checkpoint's optimiser state is missing or does not fit
    /// (continuing with fresh momentum; the run then differs from an uninterrupted one).
    pub reset_optimizer: bool,
    /// Resume from the run's best checkpoint (weights and step, fresh momentum) instead
    /// of its latest, e.g. when the latest was lost.
    pub from_best: bool,
}

impl RunOptions {
    /// Defaults on `device`: default loader threads, no stop, strict samples, no
    /// TensorBoard, the fast path, strict optimiser state.
    pub fn new(device: Device) -> Self {
        RunOptions {
            device,
            workers: crate::data::prefetch::default_workers(),
            stop_after: None,
            skip_bad: false,
            tensorboard: None,
            no_fold: false,
            reset_optimizer: false,
            from_best: false,
        }
    }
}

/// Checks what `train` cannot work with, before any file is touched.
pub fn check_config(cfg: &TrainConfig) -> Result<()> {
    let bad = |name: &str, problem: String| Err(Error::invalid_setting(name, problem));
    if cfg.batch < 2 {
        return bad("batch", "must be at least 2 (batch-norm statistics in the trained layers need more than one sample)".into());
    }
    if cfg.iters == 0 {
        return bad("iters", "0 trains nothing; give at least 1".into());
    }
    if cfg.grid == 0 {
        return bad("grid", "must be at least 1".into());
    }
    if !cfg.crop.is_multiple_of(4) || cfg.crop / 4 < cfg.grid {
        return bad("crop", format!("{} must be divisible by 4 and at least 4 × grid (layer1 has stride 4)", cfg.crop));
    }
    for (name, v, ok) in [
        ("lr", cfg.lr, cfg.lr > 0.0),
        ("backbone_lr_mult", cfg.backbone_lr_mult, cfg.backbone_lr_mult >= 0.0),
        ("momentum", cfg.momentum, (0.0..1.0).contains(&cfg.momentum)),
        ("weight_decay", cfg.weight_decay, cfg.weight_decay >= 0.0),
        ("poly_power", cfg.poly_power, cfg.poly_power >= 0.0),
        ("min_lr", cfg.min_lr, cfg.min_lr >= 0.0),
        ("label_smoothing", cfg.label_smoothing, (0.0..1.0).contains(&cfg.label_smoothing)),
        ("beta", cfg.beta, cfg.beta > 0.0),
    ] {
        if !v.is_finite() || !ok {
            return bad(name, format!("{v} is out of range"));
        }
    }
    if let Some(c) = &cfg.classes {
        c.validate().or_else(|e| bad("classes", e))?;
        if c.len() as i64 != cfg.head.num_classes {
            return bad("classes", format!("{} classes but the head predicts {}", c.len(), cfg.head.num_classes));
        }
    }
    if cfg.val.as_ref().is_some_and(|v| v.limit == Some(0)) {
        return bad("val_limit", "0 validates nothing; give at least 1".into());
    }
    for (name, v) in &cfg.monitor {
        if name.is_empty() || name.contains(['/', '=', ',']) || name.chars().any(char::is_whitespace) {
            return bad("monitor", format!("\"{name}\" is not a usable name (non-empty, without '/', '=', ',' or spaces)"));
        }
        if v.limit == Some(0) {
            return bad("monitor", format!("{name}: a limit of 0 evaluates nothing"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The precision is stored as config.json's `amp_bf16` flag, both ways, so run
    /// folders of every famix version read as they were written.
    #[test]
    fn precision_is_stored_as_the_amp_bf16_flag() {
        let c = TrainConfig::reference("c".into(), String::new(), DatasetKind::Gta5, "d".into(), None);
        let mut v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["amp_bf16"], serde_json::Value::Bool(false));
        assert!(v.get("precision").is_none());
        v["amp_bf16"] = true.into();
        let back: TrainConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back.precision, Precision::Bf16);
        assert_eq!(serde_json::to_value(&back).unwrap()["amp_bf16"], serde_json::Value::Bool(true));
    }
}
