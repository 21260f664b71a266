//! The FAMix training loop (docs/design.md §4): minimal fine-tuning of a CLIP-initialised
//! DeepLabv3+ with local style mixing on layer1, cross-entropy with label smoothing,
//! SGD with poly learning rates, periodic validation with latest/best checkpoints,
//! a JSON-lines log, and exact resume.
//!
//! Every random choice of iteration `t` (data order, crops, jitter, flips, style
//! picks, Beta weights, dropout) is derived from (seed, t), so a run resumed from its
//! latest checkpoint (weights, BN statistics, momentum, step) continues bit-exactly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::error::{bail, Context, Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::io::tensorboard::EventWriter;
use tch::{Device, Kind, Tensor};

use crate::clip::{OutputStride, ResNetConfig};
use crate::data::augment::TrainAugment;
use crate::data::loader::{Batch, BatchLoader, LoaderConfig};
use crate::data::{Dataset, DatasetKind};
use crate::eval::{evaluate, EvalOptions};
use crate::io::run_folder::{new_run_id, RunFolder, RunLog, RunState, STATE_KEY};
use crate::io::weights::{check_finite, load_vars, StateDict};
use crate::model::checkpoint::{self, CheckpointMeta};
use crate::model::inference::normalize_u8;
use crate::model::{FreezePolicy, HeadConfig, Precision, Segmenter, SegmenterConfig};
use crate::optim::{poly_lr, Sgd};
use crate::progress::{Progress, Silent, Unit};
use crate::rng::{stream, Rng};
use crate::style::bank::{BankTables, StyleBank};
use crate::style::mixing::{self, StyleMode};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// The validation set of a run.
pub struct ValSpec {
    /// Its layout.
    pub dataset: DatasetKind,
    /// Its root folder.
    pub data_root: PathBuf,
    /// Its split.
    pub split: String,
    /// The ACDC condition, if any.
    pub condition: Option<String>,
    /// Validate on the first N images only.
    pub limit: Option<usize>,
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
    /// Mixing, styles without mixing, or no styles.
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
    /// Validation set, if any.
    pub val: Option<ValSpec>,
    /// Iterations between validations and checkpoints.
    pub val_interval: u64,
    /// Iterations between log lines.
    pub log_interval: u64,
    /// Seed of every random choice.
    pub seed: u64,
    /// bf16 autocast (see [`TrainConfig::precision`]).
    pub amp_bf16: bool,
    /// A random id given to the run when it starts; its checkpoints carry it, and
    /// resume refuses a checkpoint of another run.
    #[serde(default)]
    pub run_id: String,
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
            run_id: String::new(),
        }
    }

    /// The forward pass's precision.
    pub fn precision(&self) -> Precision {
        if self.amp_bf16 {
            Precision::Bf16
        } else {
            Precision::Fp32
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
    /// Run the plain path instead of the training fast path ([`Segmenter::fold_frozen`]).
    pub no_fold: bool,
    /// Resume even when the checkpoint's optimiser state is missing or does not fit
    /// (continuing with fresh momentum; the run then differs from an uninterrupted one).
    pub reset_optimizer: bool,
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
        }
    }
}

/// What a `train` call did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// Iterations done in total (this call and earlier ones).
    pub steps: u64,
    /// Mean loss of the last logged stretch.
    pub last_loss: Option<f64>,
    /// Best validation mIoU so far.
    pub best_miou: Option<f64>,
    /// Validation mIoU at the last checkpoint of this call.
    pub last_miou: Option<f64>,
    /// The run folder.
    pub run_dir: PathBuf,
    /// Training samples replaced because they could not be read (`skip_bad`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<crate::data::Skipped>,
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

/// Commits a training checkpoint: weights, optimiser momentum and training state
/// in one file, made visible by one rename (see `checkpoint::save_with`).
fn save_state(run: &RunFolder, model: &Segmenter, meta: &CheckpointMeta, sgd: &Sgd, state: &RunState) -> Result<()> {
    if !state.best_miou.is_none_or(f64::is_finite) {
        bail!("refusing to checkpoint a non-finite best mIoU");
    }
    let extra = sgd.state().into_iter().map(|(k, t)| (format!("{}{k}", checkpoint::EXTRA_PREFIX), t)).collect();
    let md = [(STATE_KEY.to_string(), serde_json::to_string(state)?)].into_iter().collect();
    checkpoint::save_with(model, meta, extra, md, &run.latest())?;
    // The optimiser state of older famix versions is now inside latest.safetensors.
    let legacy = run.legacy_optim();
    if legacy.exists() {
        std::fs::remove_file(&legacy).with_context(|| format!("cannot remove {}", legacy.display()))?;
    }
    Ok(())
}

/// The training state and momentum of a loaded `latest` checkpoint (or, for run
/// folders of older famix versions, of `latest.optim.safetensors`, which must be at
/// the same step). The momentum must be complete and fit the parameters unless
/// `reset_optimizer` (then it is dropped and SGD starts afresh).
fn load_state(
    run: &RunFolder,
    loaded: &checkpoint::Loaded,
    params: &[(String, Tensor)],
    sgd: &mut Sgd,
    reset_optimizer: bool,
    progress: &dyn Progress,
) -> Result<RunState> {
    let (state_json, tensors, origin) = match loaded.metadata.get(STATE_KEY) {
        Some(j) => {
            let t: std::collections::HashMap<String, Tensor> = loaded
                .extra
                .iter()
                .filter_map(|(k, t)| k.strip_prefix(checkpoint::EXTRA_PREFIX).map(|n| (n.to_string(), t.shallow_clone())))
                .collect();
            (j.clone(), t, loaded.path.clone())
        }
        None => {
            let p = run.legacy_optim();
            let f = crate::io::archive::load_file(&p)
                .with_context(|| format!("{}: no training state in the checkpoint and none beside it", loaded.path.display()))?;
            let j = f.metadata.get(STATE_KEY).cloned().with_context(|| format!("{}: no training state", p.display()))?;
            (j, f.into_map(), p)
        }
    };
    let state: RunState = serde_json::from_str(&state_json).with_context(|| format!("{}: unreadable training state", origin.display()))?;
    if state.step != loaded.meta.step {
        bail!(
            "{}: optimiser state of step {} but weights of step {}; the run folder is inconsistent",
            origin.display(),
            state.step,
            loaded.meta.step
        );
    }
    if reset_optimizer {
        progress.notice(&format!("--reset-optimizer: resuming {} with fresh SGD momentum", origin.display()));
        return Ok(state);
    }
    let hint = "pass --reset-optimizer to resume with fresh momentum anyway (the run will then differ from an uninterrupted one)";
    let device = params.first().map(|(_, t)| t.device()).unwrap_or(Device::Cpu);
    sgd.load_state(&tensors, params, device)
        .map_err(|e| e.context(format!("{}: cannot restore the optimiser; {hint}", origin.display())))?;
    if state.step > 0 && sgd.momentum != 0.0 {
        let missing: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).filter(|n| !sgd.buffers.contains_key(*n)).collect();
        if !missing.is_empty() {
            return Err(Error::Msg(format!(
                "{}: the checkpoint has no optimiser momentum for {} of {} trainable parameters (e.g. {}); {hint}",
                origin.display(),
                missing.len(),
                params.len(),
                missing[0]
            )));
        }
    }
    Ok(state)
}

/// One training iteration's computation (shared by `train` and `famix bench`):
/// normalise on the device, draw styles, forward with mixing, loss, backward, SGD.
pub struct Stepper<'a> {
    /// The model being trained.
    pub model: &'a Segmenter,
    /// The optimiser.
    pub sgd: Sgd,
    bb: Vec<(String, Tensor)>,
    head: Vec<(String, Tensor)>,
    all: Vec<(String, Tensor)>,
    /// Style tables (None without styles).
    pub tables: Option<BankTables>,
    cfg: &'a TrainConfig,
}

impl<'a> Stepper<'a> {
    /// A stepper over the model's trainable parameters.
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
    Ok(Some(t))
}

/// Checks what `train` cannot work with, before any file is touched.
pub fn check_config(cfg: &TrainConfig) -> Result<()> {
    let bad = |name: &str, problem: String| Err(Error::InvalidSetting { name: name.into(), problem });
    if cfg.batch < 2 {
        return bad("--batch", "must be at least 2 (batch-norm statistics in the trained layers need more than one sample)".into());
    }
    if cfg.grid == 0 {
        return bad("--grid", "must be at least 1".into());
    }
    if !cfg.crop.is_multiple_of(4) || cfg.crop / 4 < cfg.grid {
        return bad("--crop", format!("{} must be divisible by 4 and at least 4 × grid (layer1 has stride 4)", cfg.crop));
    }
    for (name, v, ok) in [
        ("--lr", cfg.lr, cfg.lr > 0.0),
        ("--backbone-lr-mult", cfg.backbone_lr_mult, cfg.backbone_lr_mult >= 0.0),
        ("--momentum", cfg.momentum, (0.0..1.0).contains(&cfg.momentum)),
        ("--weight-decay", cfg.weight_decay, cfg.weight_decay >= 0.0),
        ("--poly-power", cfg.poly_power, cfg.poly_power >= 0.0),
        ("--min-lr", cfg.min_lr, cfg.min_lr >= 0.0),
        ("--label-smoothing", cfg.label_smoothing, (0.0..1.0).contains(&cfg.label_smoothing)),
        ("--beta", cfg.beta, cfg.beta > 0.0),
    ] {
        if !v.is_finite() || !ok {
            return bad(name, format!("{v} is out of range"));
        }
    }
    if cfg.val.as_ref().is_some_and(|v| v.limit == Some(0)) {
        return bad("--val-limit", "0 validates nothing; give at least 1".into());
    }
    Ok(())
}

/// The model and training state a run starts from: the latest checkpoint of `run`
/// (resume: weights, momentum and step from one file, checked against the run's
/// configuration) or CLIP's image tower with a fresh head (a new run, or a resumed
/// one that had not written its first checkpoint yet).
fn restore_or_init(
    cfg: &TrainConfig,
    run: &RunFolder,
    resume: bool,
    opts: &RunOptions,
    sgd: &mut Sgd,
    progress: &dyn Progress,
) -> Result<(Segmenter, RunState)> {
    let device = opts.device;
    if !resume || !run.latest().exists() {
        if resume {
            progress
                .notice(&format!("{} has its configuration but no checkpoint yet: starting the run from iteration 0", run.dir().display()));
        }
        // A new run (also one started over with --force) starts an empty log.
        let state = RunState { run_id: cfg.run_id.clone(), log_bytes: Some(0), ..Default::default() };
        return Ok((initial_model(cfg, device)?, state));
    }
    let mut l = checkpoint::load(&run.latest(), device, Some(cfg.output_stride))?;
    if l.model.config.head != cfg.head {
        bail!("{}: the checkpoint's head {:?} contradicts the run's config.json {:?}", l.path.display(), l.model.config.head, cfg.head);
    }
    l.model.set_freeze(cfg.freeze);
    let (bb, head) = l.model.param_groups();
    let params: Vec<(String, Tensor)> = bb.into_iter().chain(head).collect();
    let st = load_state(run, &l, &params, sgd, opts.reset_optimizer, progress)?;
    if !st.run_id.is_empty() && !cfg.run_id.is_empty() && st.run_id != cfg.run_id {
        bail!("{}: the checkpoint belongs to run {} but config.json to run {}", l.path.display(), st.run_id, cfg.run_id);
    }
    Ok((l.model, st))
}

/// The source and (optional) validation datasets, both non-empty.
fn open_datasets(cfg: &TrainConfig) -> Result<(Arc<Dataset>, Option<Dataset>)> {
    let ds = Dataset::open(cfg.dataset, &cfg.data_root, &cfg.split, cfg.condition.as_deref())?;
    if ds.is_empty() {
        bail!("no image/label pairs found for {} (run `famix data check`)", ds.describe());
    }
    let val = match &cfg.val {
        Some(v) => {
            let d = Dataset::open(v.dataset, &v.data_root, &v.split, v.condition.as_deref())?;
            if d.is_empty() {
                bail!("no validation pairs found for {}", d.describe());
            }
            Some(d)
        }
        None => None,
    };
    Ok((Arc::new(ds), val))
}

fn make_loader(cfg: &TrainConfig, ds: Arc<Dataset>, opts: &RunOptions, start: u64, end: u64) -> Result<BatchLoader> {
    let mut augment = TrainAugment::reference(cfg.crop, cfg.dataset == DatasetKind::Synthia);
    augment.jitter = cfg.augment;
    augment.flip = cfg.augment;
    let lc = LoaderConfig {
        batch: cfg.batch,
        augment,
        grid: cfg.grid,
        seed: cfg.seed,
        workers: opts.workers,
        prefetch: 3 * cfg.batch,
        skip_bad: opts.skip_bad,
    };
    BatchLoader::new(ds, lc, start, end)
}

/// The state of one `train` call between iterations.
struct Session<'a> {
    cfg: &'a TrainConfig,
    run: &'a RunFolder,
    progress: &'a dyn Progress,
    log: RunLog,
    meta: CheckpointMeta,
    state: RunState,
    loss_acc: Tensor,
    loss_n: u64,
    t_log: Instant,
    summary: TrainSummary,
    tensorboard: Option<EventWriter>,
}

impl Session<'_> {
    /// Logs the mean loss of the iterations since the last log line; stops on a
    /// non-finite loss, naming the last checkpoint.
    fn log_loss(&mut self, done: u64, lrs: (f64, f64), device: Device) -> Result<()> {
        let mean = self.loss_acc.double_value(&[]) / self.loss_n as f64;
        if !mean.is_finite() {
            bail!("the loss became {mean} by iteration {done}; training stopped. {} Try a lower --lr.", self.last_good());
        }
        let secs = self.t_log.elapsed().as_secs_f64();
        let per_s = (self.loss_n as f64 * self.cfg.batch as f64) / secs;
        let mut entry = json!({
            "iter": done, "loss": mean, "lr_head": lrs.0, "lr_backbone": lrs.1,
            "images_per_s": per_s, "step_ms": secs * 1000.0 / self.loss_n as f64,
        });
        if let Some((_, peak, _)) = crate::device::cuda_memory_mb(device) {
            entry["gpu_mem_mb"] = json!(peak);
        }
        self.log.write(entry)?;
        if let Some(tb) = &mut self.tensorboard {
            let scalars = [("train/loss", mean), ("train/lr_head", lrs.0), ("train/lr_backbone", lrs.1), ("train/images_per_s", per_s)];
            tb.scalars(done, &scalars.map(|(k, v)| (k.to_string(), v)))?;
        }
        self.progress.status(&format!("loss {mean:.4}"));
        self.summary.last_loss = Some(mean);
        self.loss_acc = Tensor::zeros([], (Kind::Float, device));
        self.loss_n = 0;
        self.t_log = Instant::now();
        Ok(())
    }

    /// Where a diverged run can be continued from, in words.
    fn last_good(&self) -> String {
        crate::io::run_folder::last_finite_checkpoint(self.run)
    }

    /// Validates (when a validation set is configured), keeps `best`, writes `latest`.
    /// A checkpoint is written only when every tensor it would hold — parameters,
    /// batch-norm statistics, momentum — is finite.
    fn checkpoint(&mut self, done: u64, model: &Segmenter, sgd: &Sgd, val: Option<&Dataset>) -> Result<()> {
        if let Err(e) = check_finite(&checkpoint_tensors(model, sgd)) {
            bail!("{e} by iteration {done}; training stopped before writing a checkpoint. {} Try a lower --lr.", self.last_good());
        }
        self.state.step = done;
        if let Some(vd) = val {
            let opts = EvalOptions {
                limit: self.cfg.val.as_ref().and_then(|v| v.limit),
                predict: crate::model::PredictOptions { precision: self.cfg.precision(), ..Default::default() },
                ..Default::default()
            };
            let rep = evaluate(model, vd, &opts, &Silent)?;
            let miou = rep.metrics.miou;
            self.summary.last_miou = Some(miou);
            let names = &model.config.class_names;
            self.log.write(json!({
                "iter": done, "val_miou": miou, "val_images": rep.images, "val_dataset": vd.describe(),
                "per_class_iou": names.iter().zip(&rep.metrics.per_class_iou).map(|(n, v)| (n.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            }))?;
            if let Some(tb) = &mut self.tensorboard {
                let per_class = names.iter().zip(&rep.metrics.per_class_iou).filter_map(|(n, v)| v.map(|v| (format!("val/iou/{n}"), v)));
                tb.scalars(done, &std::iter::once(("val/miou".to_string(), miou)).chain(per_class).collect::<Vec<_>>())?;
            }
            self.progress.notice(&format!("iteration {done}: val mIoU {:.2} % on {}", miou * 100.0, vd.describe()));
            if self.state.best_miou.is_none_or(|b| miou > b) {
                self.state.best_miou = Some(miou);
                self.state.best_step = Some(done);
                let mut m = self.meta.clone();
                m.step = done;
                m.best_miou = Some(miou);
                // The matrix first: a crash between the two leaves a matrix newer than
                // `best`, which the next validation at this step rewrites identically.
                let k = model.config.class_names.len();
                let confusion = json!({
                    "iter": done, "miou": miou, "dataset": vd.describe(), "class_names": model.config.class_names,
                    "per_class_iou": rep.metrics.per_class_iou, "confusion_matrix": rep.confusion.chunks(k.max(1)).collect::<Vec<_>>(),
                });
                crate::io::atomic_write_json(&self.run.best_confusion(), &confusion)?;
                checkpoint::save(model, &m, &self.run.best())?;
            }
        }
        self.meta.step = done;
        self.meta.best_miou = self.state.best_miou;
        self.meta.optimizer_state = None;
        self.state.log_bytes = Some(self.log.sync()?);
        if let Some(tb) = &mut self.tensorboard {
            tb.sync()?;
        }
        save_state(self.run, model, &self.meta, sgd, &self.state)?;
        self.t_log = Instant::now();
        Ok(())
    }
}

/// Trains (or resumes) the run in `run`. `cfg` is the run's configuration (for a
/// resume: the saved one, possibly with a larger `iters`).
///
/// The run folder is locked for the call (a second writer fails at once), temporary
/// files of killed runs are removed, and every checkpoint is one atomic commit.
pub fn train(cfg: &TrainConfig, run: &Path, resume: bool, opts: &RunOptions, progress: &dyn Progress) -> Result<TrainSummary> {
    check_config(cfg)?;
    let device = opts.device;
    let folder = RunFolder::new(run);
    let _lock = folder.open_writer("a training run")?;
    let run = &folder;
    let mut cfg = cfg.clone();
    if !resume {
        cfg.run_id = new_run_id();
    }
    let cfg = &cfg;
    crate::io::atomic_write_json(&run.config(), cfg)?;
    if let Device::Cuda(_) = device {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let mut sgd = Sgd::new(cfg.momentum, cfg.weight_decay);
    let (mut model, state) = restore_or_init(cfg, run, resume, opts, &mut sgd, progress)?;
    if !opts.no_fold {
        model.fold_frozen();
    }
    let start = state.step;
    let summary = TrainSummary {
        steps: start,
        last_loss: None,
        best_miou: state.best_miou,
        last_miou: None,
        run_dir: run.dir().into(),
        skipped: vec![],
    };
    if start >= cfg.iters {
        progress.notice(&format!("{} is already at iteration {start} of {}", run.dir().display(), cfg.iters));
        return Ok(summary);
    }
    let end = opts.stop_after.map(|n| (start + n).min(cfg.iters)).unwrap_or(cfg.iters);
    let tables = bank_tables(cfg, &model)?;
    if let Some(t) = tables.as_ref().filter(|t| t.classes_without_styles > 0) {
        progress.notice(&format!(
            "note: {} classes have no styles and the bank has no ignore-class styles; they draw from the whole bank",
            t.classes_without_styles
        ));
    }
    let (ds, val_ds) = open_datasets(cfg)?;
    for note in std::iter::once(&*ds).chain(val_ds.as_ref()).filter_map(Dataset::issues_note) {
        progress.notice(&note);
    }
    let mut loader = make_loader(cfg, ds, opts, start, end)?;
    let mut stepper = Stepper::new(&model, cfg, tables, sgd);
    let mut meta = CheckpointMeta::new(&model.config);
    meta.source = json!({"clip": cfg.clip, "dataset": cfg.dataset.name(), "styles": cfg.styles, "style_mode": cfg.style_mode});
    let mut s = Session {
        cfg,
        run,
        progress,
        log: RunLog::open(run, state.log_bytes)?,
        meta,
        state,
        loss_acc: Tensor::zeros([], (Kind::Float, device)),
        loss_n: 0,
        t_log: Instant::now(),
        summary,
        tensorboard: opts.tensorboard.as_deref().map(|d| EventWriter::create(d, start)).transpose()?,
    };
    crate::device::cuda_reset_peak(device);
    progress.start("train", cfg.iters, start, Unit::Items);
    let res = run_loop(&mut s, &mut stepper, &mut loader, val_ds.as_ref(), start, end);
    progress.finish();
    res?;
    s.summary.steps = s.state.step;
    s.summary.best_miou = s.state.best_miou;
    Ok(s.summary)
}

/// Labels must be train ids below the class count or the ignore label: the loss
/// would otherwise index past the logits (a crash in libtorch).
fn check_labels(batch: &Batch, num_classes: i64, iteration: u64) -> Result<()> {
    let valid = batch.labels.lt(num_classes).logical_or(&batch.labels.eq(255));
    if valid.all().int64_value(&[]) == 0 {
        let bad = batch.labels.masked_select(&valid.logical_not()).max().int64_value(&[]);
        bail!(
            "label id {bad} in the batch of iteration {iteration} is not below --num-classes {num_classes} (labels must be train ids < {num_classes} or 255)"
        );
    }
    Ok(())
}

/// Every tensor a training checkpoint holds: all variables (parameters and batch-norm
/// statistics) and the optimiser's momentum, sorted by name.
fn checkpoint_tensors(model: &Segmenter, sgd: &Sgd) -> Vec<(String, Tensor)> {
    let mut all: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    all.extend(sgd.state().into_iter().map(|(k, t)| (format!("{}{k}", checkpoint::EXTRA_PREFIX), t)));
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

fn run_loop(s: &mut Session, stepper: &mut Stepper, loader: &mut BatchLoader, val: Option<&Dataset>, start: u64, end: u64) -> Result<()> {
    let device = stepper.model.device();
    let mut step = start;
    while let Some(batch) = loader.next() {
        let batch = batch.with_context(|| format!("loading the batch of iteration {}", step + 1))?;
        for sk in loader.take_skipped() {
            s.progress.notice(&format!("skipping unreadable sample {}: {}", sk.path, sk.error));
            s.summary.skipped.push(sk);
        }
        check_labels(&batch, stepper.model.config.head.num_classes, step + 1)?;
        let loss = stepper.step(&batch, step)?;
        s.loss_acc += loss;
        s.loss_n += 1;
        s.progress.advance(1);
        let done = step + 1;
        let checkpoint_now = done.is_multiple_of(s.cfg.val_interval.max(1)) || done == end;
        if done.is_multiple_of(s.cfg.log_interval.max(1)) || checkpoint_now {
            s.log_loss(done, stepper.learning_rates(step), device)?;
        }
        if checkpoint_now {
            s.checkpoint(done, stepper.model, &stepper.sgd, val)?;
        }
        step = done;
    }
    Ok(())
}
