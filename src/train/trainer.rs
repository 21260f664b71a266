//! The FAMix training loop (SPEC §4): minimal fine-tuning of a CLIP-initialised
//! DeepLabv3+ with local style mixing on layer1, cross-entropy with label smoothing,
//! SGD with poly learning rates, periodic validation with latest/best checkpoints,
//! a JSON-lines log, and exact resume.
//!
//! Every random choice of iteration `t` (data order, crops, jitter, flips, style
//! picks, Beta weights, dropout) is derived from (seed, t), so a run resumed from its
//! latest checkpoint (weights, BN statistics, momentum, step) continues bit-exactly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::clip::preprocess::normalize_u8;
use crate::clip::weights::{load_vars, StateDict};
use crate::clip::{OutputStride, ResNetConfig};
use crate::data::augment::TrainAugment;
use crate::data::loader::{Batch, BatchLoader, LoaderConfig};
use crate::data::{Dataset, DatasetKind};
use crate::eval::{evaluate, EvalOptions};
use crate::model::checkpoint::{self, CheckpointMeta};
use crate::model::{FreezePolicy, HeadConfig, Segmenter, SegmenterConfig};
use crate::rng::{stream, Rng};
use crate::style::bank::{BankTables, StyleBank};
use crate::style::mixing::{self, StyleMode};
use crate::train::sgd::{poly_lr, Sgd};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValSpec {
    pub dataset: DatasetKind,
    pub data_root: PathBuf,
    pub split: String,
    pub condition: Option<String>,
    /// Validate on the first N images only.
    pub limit: Option<usize>,
}

/// Everything a run needs; written to RUN_DIR/config.json and reused on resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub clip: PathBuf,
    pub clip_sha256: String,
    pub dataset: DatasetKind,
    pub data_root: PathBuf,
    pub split: String,
    pub condition: Option<String>,
    pub styles: Option<PathBuf>,
    pub style_mode: StyleMode,
    pub iters: u64,
    pub batch: usize,
    pub crop: usize,
    /// Head learning rate; the backbone's is `lr · backbone_lr_mult`.
    pub lr: f64,
    pub backbone_lr_mult: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub poly_power: f64,
    pub min_lr: f64,
    pub label_smoothing: f64,
    pub output_stride: OutputStride,
    pub freeze: FreezePolicy,
    pub grid: usize,
    pub beta: f64,
    /// Colour jitter + flips (the reference's `--data_aug`).
    pub augment: bool,
    pub head: HeadConfig,
    pub val: Option<ValSpec>,
    pub val_interval: u64,
    pub log_interval: u64,
    pub seed: u64,
    pub amp_bf16: bool,
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
            val_interval: 750,
            log_interval: 10,
            seed: 1,
            amp_bf16: false,
        }
    }

    /// The reference's freeze policy for a source dataset.
    pub fn default_freeze(d: DatasetKind) -> FreezePolicy {
        match d {
            DatasetKind::Cityscapes => FreezePolicy::Layer4,
            _ => FreezePolicy::Synthetic,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct TrainState {
    pub step: u64,
    pub best_miou: Option<f64>,
    pub best_step: Option<u64>,
}

pub struct RunOptions {
    pub device: Device,
    pub workers: usize,
    pub progress: bool,
    /// Stop (with a checkpoint) after this many iterations in this invocation.
    pub stop_after: Option<u64>,
    /// Replace unreadable training samples by the next readable one.
    pub skip_bad: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub last_loss: Option<f64>,
    pub best_miou: Option<f64>,
    pub last_miou: Option<f64>,
    pub run_dir: PathBuf,
}

pub fn config_path(run: &Path) -> PathBuf {
    run.join("config.json")
}
pub fn latest_path(run: &Path) -> PathBuf {
    run.join("latest.safetensors")
}
pub fn best_path(run: &Path) -> PathBuf {
    run.join("best.safetensors")
}
fn optim_path(run: &Path) -> PathBuf {
    run.join("latest.optim.safetensors")
}

/// A fresh segmenter: CLIP image-tower weights for the backbone, Kaiming head.
pub fn initial_model(cfg: &TrainConfig, device: Device) -> Result<Segmenter> {
    let sd = StateDict::load(&cfg.clip)?;
    let backbone = ResNetConfig::infer(&sd.tensors, "visual.").with_context(|| format!("{}", cfg.clip.display()))?;
    let mut scfg = SegmenterConfig::new(backbone, cfg.head.num_classes, cfg.output_stride, cfg.freeze);
    scfg.head = cfg.head.clone();
    tch::manual_seed((Rng::derive(cfg.seed, &[stream::TORCH_SEED, u64::MAX]).next_u64() >> 1) as i64);
    let mut model = Segmenter::new(scfg, Device::Cpu)?;
    load_vars(&model.vs, "backbone.", &sd.tensors, "visual.", &|k| k.starts_with("visual.attnpool."), &cfg.clip, "CLIP image tower")?;
    model.vs.set_device(device);
    Ok(model)
}

fn save_state(run: &Path, model: &Segmenter, meta: &CheckpointMeta, sgd: &Sgd, state: &TrainState) -> Result<()> {
    checkpoint::save(model, meta, &latest_path(run))?;
    let md = [("famix-train-state".to_string(), serde_json::to_string(state)?)].into_iter().collect();
    crate::io::archive::save_safetensors(&optim_path(run), &sgd.state(), Some(md))
}

fn load_state(run: &Path, device: Device, sgd: &mut Sgd) -> Result<TrainState> {
    let p = optim_path(run);
    let f = crate::io::archive::load_file(&p).with_context(|| format!("{}: cannot resume without the optimiser state", p.display()))?;
    let state: TrainState = serde_json::from_str(
        f.metadata.get("famix-train-state").with_context(|| format!("{}: no training state", p.display()))?,
    )?;
    sgd.load_state(&f.into_map(), device)?;
    Ok(state)
}

struct Log {
    file: std::fs::File,
}

impl Log {
    fn open(run: &Path) -> Result<Self> {
        let p = run.join("train_log.jsonl");
        Ok(Log { file: std::fs::OpenOptions::new().create(true).append(true).open(&p).with_context(|| format!("cannot open {}", p.display()))? })
    }
    fn write(&mut self, v: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}")?;
        self.file.flush()?;
        Ok(())
    }
}

/// One training iteration's computation (shared by `train` and `famix bench`):
/// normalise on the device, draw styles, forward with mixing, loss, backward, SGD.
pub struct Stepper<'a> {
    pub model: &'a Segmenter,
    pub sgd: Sgd,
    bb: Vec<(String, Tensor)>,
    head: Vec<(String, Tensor)>,
    all: Vec<(String, Tensor)>,
    pub tables: Option<BankTables>,
    cfg: &'a TrainConfig,
}

impl<'a> Stepper<'a> {
    pub fn new(model: &'a Segmenter, cfg: &'a TrainConfig, tables: Option<BankTables>, sgd: Sgd) -> Self {
        let (bb, head) = model.param_groups();
        let all = bb.iter().chain(&head).map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        Stepper { model, sgd, bb, head, all, tables, cfg }
    }

    /// (head, backbone) learning rates of iteration `step`.
    pub fn learning_rates(&self, step: u64) -> (f64, f64) {
        let c = self.cfg;
        (poly_lr(c.lr, step, c.iters, c.poly_power, c.min_lr), poly_lr(c.lr * c.backbone_lr_mult, step, c.iters, c.poly_power, c.min_lr))
    }

    /// Runs iteration `step` (0-based) on a batch; returns the loss (on the device).
    pub fn step(&mut self, batch: &Batch, step: u64) -> Result<Tensor> {
        let cfg = self.cfg;
        let device = self.model.device();
        tch::manual_seed((Rng::derive(cfg.seed, &[stream::TORCH_SEED, step]).next_u64() >> 1) as i64);
        let (lr_head, lr_bb) = self.learning_rates(step);
        let x = normalize_u8(&batch.images, device);
        let y = crate::device::upload(&batch.labels, device).to_kind(Kind::Int64);
        let channels = self.model.config.backbone.low_level_channels() as usize;
        let draw = match &self.tables {
            Some(t) => Some(mixing::draw(t, &batch.dominant, channels, cfg.style_mode, cfg.beta, cfg.seed, step, device)?),
            None => None,
        };
        let tables = self.tables.as_ref();
        let restyle = |f1: &Tensor| mixing::restyle_with(f1, tables.unwrap(), draw.as_ref().unwrap(), cfg.grid);
        let restyle_ref: Option<&dyn Fn(&Tensor) -> Tensor> = if draw.is_some() { Some(&restyle) } else { None };
        Sgd::zero_grad(&self.all);
        let loss = {
            let _amp = crate::device::Autocast::new(device, cfg.amp_bf16);
            let logits = self.model.forward(&x, true, restyle_ref);
            logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Mean, 255, cfg.label_smoothing)
        };
        loss.backward();
        self.sgd.step(&[(lr_bb, &self.bb), (lr_head, &self.head)]);
        Ok(loss.detach())
    }
}

/// Style tables for a run, checked against the backbone.
pub fn bank_tables(cfg: &TrainConfig, model: &Segmenter) -> Result<Option<BankTables>> {
    if cfg.style_mode == StyleMode::NoStyles {
        return Ok(None);
    }
    let p = cfg.styles.as_ref().context("--styles BANK is needed (or --no-styles)")?;
    let bank = StyleBank::load(p)?;
    let want = model.config.backbone.low_level_channels() as usize;
    if bank.channels != want {
        bail!("{}: styles have {} channels, the backbone's layer1 has {want}", p.display(), bank.channels);
    }
    let t = bank.device_tables(cfg.head.num_classes as usize, model.device()).with_context(|| format!("{}", p.display()))?;
    if t.classes_without_styles > 0 {
        eprintln!(
            "note: {} classes have no styles and the bank has no ignore-class styles; they draw from the whole bank",
            t.classes_without_styles
        );
    }
    Ok(Some(t))
}

/// Trains (or resumes) the run in `run`. `cfg` is the run's configuration (for a
/// resume: the saved one, possibly with a larger `iters`).
pub fn train(cfg: &TrainConfig, run: &Path, resume: bool, opts: &RunOptions) -> Result<TrainSummary> {
    let device = opts.device;
    if cfg.batch < 2 {
        bail!("--batch must be at least 2 (batch-norm statistics in the trained layers need more than one sample)");
    }
    if cfg.crop % 4 != 0 || cfg.crop / 4 < cfg.grid {
        bail!("--crop {} must be divisible by 4 and at least 4 × grid (layer1 has stride 4)", cfg.crop);
    }
    std::fs::create_dir_all(run).with_context(|| format!("cannot create run folder {}", run.display()))?;
    crate::io::atomic_write_json(&config_path(run), cfg)?;
    if let Device::Cuda(_) = device {
        tch::Cuda::cudnn_set_benchmark(true);
    }

    let mut sgd = Sgd::new(cfg.momentum, cfg.weight_decay);
    let (model, mut state) = if resume {
        let mut l = checkpoint::load(&latest_path(run), device, Some(cfg.output_stride))?;
        l.model.set_freeze(cfg.freeze);
        l.model.head.config.dropout = cfg.head.dropout;
        let st = load_state(run, device, &mut sgd)?;
        (l.model, st)
    } else {
        (initial_model(cfg, device)?, TrainState::default())
    };
    let start = state.step;
    if start >= cfg.iters {
        eprintln!("{} is already at iteration {start} of {}", run.display(), cfg.iters);
        return Ok(TrainSummary { steps: start, last_loss: None, best_miou: state.best_miou, last_miou: None, run_dir: run.into() });
    }
    let end = opts.stop_after.map(|n| (start + n).min(cfg.iters)).unwrap_or(cfg.iters);

    let tables = bank_tables(cfg, &model)?;

    let ds = Arc::new(Dataset::open(cfg.dataset, &cfg.data_root, &cfg.split, cfg.condition.as_deref())?);
    if ds.is_empty() {
        bail!("no image/label pairs found for {} (run `famix data check`)", ds.describe());
    }
    let val_ds = match &cfg.val {
        Some(v) => {
            let d = Dataset::open(v.dataset, &v.data_root, &v.split, v.condition.as_deref())?;
            if d.is_empty() {
                bail!("no validation pairs found for {}", d.describe());
            }
            Some(d)
        }
        None => None,
    };
    let mut augment = TrainAugment::reference(cfg.crop, cfg.dataset == DatasetKind::Synthia);
    augment.jitter = cfg.augment;
    augment.flip = cfg.augment;
    let loader = BatchLoader::new(
        ds.clone(),
        LoaderConfig {
            batch: cfg.batch,
            augment,
            grid: cfg.grid,
            seed: cfg.seed,
            workers: opts.workers,
            prefetch: 3 * cfg.batch,
            skip_bad: opts.skip_bad,
        },
        start,
        end,
    )?;

    let mut stepper = Stepper::new(&model, cfg, tables, sgd);
    let mut log = Log::open(run)?;
    let mut meta = CheckpointMeta::new(&model.config);
    meta.source = json!({"clip": cfg.clip, "dataset": cfg.dataset.name(), "styles": cfg.styles, "style_mode": cfg.style_mode});
    let bar = if opts.progress { crate::cli::progress_bar(cfg.iters, "train") } else { indicatif::ProgressBar::hidden() };
    bar.set_position(start);
    let mut loss_acc = Tensor::zeros([], (Kind::Float, device));
    let mut loss_n = 0u64;
    let mut last_loss = None;
    let mut last_miou = None;
    let mut t_log = Instant::now();
    crate::device::cuda_reset_peak(device);

    for (k, batch) in loader.enumerate() {
        let step = start + k as u64;
        let batch = batch.with_context(|| format!("loading the batch of iteration {}", step + 1))?;
        let loss = stepper.step(&batch, step)?;
        let (lr_head, lr_bb) = stepper.learning_rates(step);
        loss_acc += loss;
        loss_n += 1;
        bar.inc(1);
        let done = step + 1;
        let checkpoint_now = done % cfg.val_interval.max(1) == 0 || done == end;
        if done % cfg.log_interval.max(1) == 0 || checkpoint_now {
            let mean = loss_acc.double_value(&[]) / loss_n as f64;
            if !mean.is_finite() {
                bar.abandon();
                bail!(
                    "the loss became {mean} by iteration {done}; training stopped. The last good checkpoint is {} (iteration {}). Try a lower --lr.",
                    latest_path(run).display(),
                    state.step
                );
            }
            let secs = t_log.elapsed().as_secs_f64();
            let mut entry = json!({
                "iter": done, "loss": mean, "lr_head": lr_head, "lr_backbone": lr_bb,
                "images_per_s": (loss_n as f64 * cfg.batch as f64) / secs, "step_ms": secs * 1000.0 / loss_n as f64,
            });
            if let Some((_, peak, _)) = crate::device::cuda_memory_mb(device) {
                entry["gpu_mem_mb"] = json!(peak);
            }
            log.write(entry)?;
            bar.set_prefix(format!("loss {mean:.4}"));
            last_loss = Some(mean);
            loss_acc = Tensor::zeros([], (Kind::Float, device));
            loss_n = 0;
            t_log = Instant::now();
        }
        if checkpoint_now {
            state.step = done;
            if let Some(vd) = &val_ds {
                let limit = cfg.val.as_ref().and_then(|v| v.limit);
                let rep = bar.suspend(|| evaluate(&model, vd, &EvalOptions { limit, amp_bf16: cfg.amp_bf16, ..Default::default() }))?;
                let miou = rep.metrics.miou;
                last_miou = Some(miou);
                log.write(json!({"iter": done, "val_miou": miou, "val_images": rep.images, "val_dataset": vd.describe()}))?;
                bar.suspend(|| eprintln!("iteration {done}: val mIoU {:.2} % on {}", miou * 100.0, vd.describe()));
                if state.best_miou.is_none_or(|b| miou > b) {
                    state.best_miou = Some(miou);
                    state.best_step = Some(done);
                    let mut m = meta.clone();
                    m.step = done;
                    m.best_miou = Some(miou);
                    checkpoint::save(&model, &m, &best_path(run))?;
                }
            }
            meta.step = done;
            meta.best_miou = state.best_miou;
            meta.optimizer_state = Some("latest.optim.safetensors".into());
            save_state(run, &model, &meta, &stepper.sgd, &state)?;
            t_log = Instant::now();
        }
    }
    bar.finish_and_clear();
    Ok(TrainSummary { steps: state.step, last_loss, best_miou: state.best_miou, last_miou, run_dir: run.into() })
}
