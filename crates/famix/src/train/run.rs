//! The FAMix training run (docs/src/design.md §4): minimal fine-tuning of a CLIP-initialised
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

use crate::error::{fail, Context, Error, Result};
use serde::Serialize;
use serde_json::json;

use crate::io::tensorboard::EventWriter;
use tch::{Device, Kind, Tensor};

use crate::data::augment::TrainAugment;
use crate::data::loader::{BatchLoader, LoaderConfig};
use crate::data::{Dataset, DatasetKind};
use crate::eval::{evaluate, EvalOptions};
use crate::io::run_folder::{new_run_id, RunFolder, RunLog, RunState};
use crate::io::weights::check_finite;
use crate::model::checkpoint::{self, CheckpointMeta};
use crate::model::Segmenter;
use crate::optim::Sgd;
use crate::progress::{Progress, Silent, Unit};

use super::config::{check_config, RunOptions, TrainConfig, ValSpec};
use super::state::{checkpoint_tensors, restore_or_init, save_state};
use super::step::{bank_tables, check_labels, Stepper};
use crate::data::classes::ClassSet;

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

/// The datasets evaluated at checkpoints: the validation set (chooses `best`) and the
/// monitored ones (only logged).
#[derive(Default)]
struct ValSets {
    val: Option<Dataset>,
    monitor: Vec<(String, Dataset)>,
}

impl ValSets {
    fn all(&self) -> impl Iterator<Item = &Dataset> {
        self.val.iter().chain(self.monitor.iter().map(|(_, d)| d))
    }
}

/// Opens a validation (or monitored) set; refuses an empty one.
fn open_val(v: &ValSpec, classes: &ClassSet) -> Result<Dataset> {
    let d = Dataset::open(v.dataset, &v.data_root, &v.split, v.condition.as_deref())?.with_classes(classes)?;
    if d.is_empty() {
        fail!(InvalidInput, &d.root, "no validation pairs found for {}", d.describe());
    }
    Ok(d)
}

/// The source and the evaluated datasets, all non-empty.
fn open_datasets(cfg: &TrainConfig) -> Result<(Arc<Dataset>, ValSets)> {
    let classes = cfg.class_set();
    let ds = Dataset::open(cfg.dataset, &cfg.data_root, &cfg.split, cfg.condition.as_deref())?.with_classes(&classes)?;
    ds.require_samples()?;
    let val = cfg.val.as_ref().map(|v| open_val(v, &classes)).transpose()?;
    let monitor = cfg.monitor.iter().map(|(n, v)| Ok((n.clone(), open_val(v, &classes)?))).collect::<Result<_>>()?;
    Ok((Arc::new(ds), ValSets { val, monitor }))
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
    fn log_loss(&mut self, done: u64, lrs: super::step::LearningRates, device: Device) -> Result<()> {
        let mean = self.loss_acc.double_value(&[]) / self.loss_n as f64;
        if !mean.is_finite() {
            fail!(Diverged, "the loss became {mean} by iteration {done}; training stopped. {} Try a lower `lr`.", self.last_good());
        }
        let secs = self.t_log.elapsed().as_secs_f64();
        let per_s = (self.loss_n as f64 * self.cfg.batch as f64) / secs;
        let mut entry = json!({
            "iter": done, "loss": mean, "lr_head": lrs.head, "lr_backbone": lrs.backbone,
            "images_per_s": per_s, "step_ms": secs * 1000.0 / self.loss_n as f64,
        });
        if let Some((_, peak, _)) = crate::device::cuda_memory_mb(device) {
            entry["gpu_mem_mb"] = json!(peak);
        }
        self.log.write(entry)?;
        if let Some(tb) = &mut self.tensorboard {
            let scalars =
                [("train/loss", mean), ("train/lr_head", lrs.head), ("train/lr_backbone", lrs.backbone), ("train/images_per_s", per_s)];
            tb.scalars(done, &scalars.map(|(k, v)| (k.to_string(), v)))?;
        }
        self.progress.status(&format!("loss {mean:.4}"));
        self.progress.metrics(done, &[("loss", mean), ("lr_head", lrs.head), ("lr_backbone", lrs.backbone), ("images_per_s", per_s)]);
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
    fn checkpoint(&mut self, done: u64, model: &Segmenter, sgd: &Sgd, sets: &ValSets) -> Result<()> {
        if let Err(e) = check_finite(&checkpoint_tensors(model, sgd)) {
            fail!(
                Diverged,
                "{e} by iteration {done}; training stopped before writing a checkpoint. {} Try a lower `lr`.",
                self.last_good()
            );
        }
        self.state.step = done;
        if let Some(vd) = &sets.val {
            self.validate(done, model, vd)?;
        }
        if !sets.monitor.is_empty() {
            self.watch(done, model, &sets.monitor)?;
        }
        self.meta.step = done;
        self.meta.best_miou = self.state.best_miou;
        self.state.log_bytes = Some(self.log.sync()?);
        if let Some(tb) = &mut self.tensorboard {
            tb.sync()?;
        }
        save_state(self.run, model, &self.meta, sgd, &self.state)?;
        self.t_log = Instant::now();
        Ok(())
    }

    /// Stops the run at iteration `done` on the caller's request: logs the loss so far
    /// and checkpoints (without validating, so `best` stays what an uninterrupted run
    /// has), then reports [`Error::Cancelled`].
    fn cancel(&mut self, done: u64, stepper: &Stepper, device: Device) -> Result<()> {
        if self.loss_n > 0 {
            self.log_loss(done, stepper.learning_rates(done - 1), device)?;
        }
        if self.state.step != done {
            self.checkpoint(done, stepper.model, &stepper.sgd, &ValSets::default())?;
        }
        Err(Error::Cancelled { what: format!("training at iteration {done}; continue with `resume` {}", self.run.dir().display()) })
    }

    /// How validation evaluates: the run's precision, at most `limit` images.
    fn eval_options(&self, limit: Option<usize>) -> EvalOptions {
        EvalOptions {
            limit,
            predict: crate::model::PredictOptions { precision: self.cfg.precision, ..Default::default() },
            ..Default::default()
        }
    }

    /// Evaluates the monitored sets at iteration `done` and logs their mIoU (one line:
    /// `monitor_miou` and `monitor_images` by name).
    fn watch(&mut self, done: u64, model: &Segmenter, sets: &[(String, Dataset)]) -> Result<()> {
        let (mut mious, mut images) = (serde_json::Map::new(), serde_json::Map::new());
        for (name, d) in sets {
            let rep = evaluate(model, d, &self.eval_options(self.cfg.monitor.get(name).and_then(|v| v.limit)), &Silent)?;
            mious.insert(name.clone(), json!(rep.metrics.miou));
            self.progress.metrics(done, &[(&format!("{name}_miou"), rep.metrics.miou)]);
            images.insert(name.clone(), json!(rep.images));
            if let Some(tb) = &mut self.tensorboard {
                tb.scalars(done, &[(format!("monitor/{name}/miou"), rep.metrics.miou)])?;
            }
        }
        let shown = mious.iter().map(|(n, m)| format!("{n} {:.2} %", m.as_f64().unwrap_or(f64::NAN) * 100.0)).collect::<Vec<_>>();
        self.progress.notice(&format!("iteration {done}: monitored mIoU {}", shown.join(", ")));
        self.log.write(json!({"iter": done, "monitor_miou": mious, "monitor_images": images}))
    }

    /// Validates at iteration `done`, logs the result and, when it is the best so far,
    /// writes `best` (and its confusion matrix).
    fn validate(&mut self, done: u64, model: &Segmenter, vd: &Dataset) -> Result<()> {
        let rep = evaluate(model, vd, &self.eval_options(self.cfg.val.as_ref().and_then(|v| v.limit)), &Silent)?;
        let miou = rep.metrics.miou;
        self.summary.last_miou = Some(miou);
        self.progress.metrics(done, &[("val_miou", miou)]);
        let names = model.config().class_names();
        self.log.write(json!({
            "iter": done, "val_miou": miou, "val_images": rep.images, "val_dataset": vd.describe(),
            "per_class_iou": crate::eval::metrics::by_class_name(&names, &rep.metrics.per_class_iou),
        }))?;
        if let Some(tb) = &mut self.tensorboard {
            let per_class = names.iter().zip(&rep.metrics.per_class_iou).filter_map(|(n, v)| v.map(|v| (format!("val/iou/{n}"), v)));
            tb.scalars(done, &std::iter::once(("val/miou".to_string(), miou)).chain(per_class).collect::<Vec<_>>())?;
        }
        let shown = if rep.images < vd.len() { format!(" ({} of its images)", rep.images) } else { String::new() };
        self.progress.notice(&format!("iteration {done}: val mIoU {:.2} % on {}{shown}", miou * 100.0, vd.describe()));
        if self.state.best_miou.is_none_or(|b| miou > b) {
            self.state.best_miou = Some(miou);
            self.state.best_step = Some(done);
            let mut m = self.meta.clone();
            m.step = done;
            m.best_miou = Some(miou);
            // The matrix first: a crash between the two leaves a matrix newer than
            // `best`, which the next validation at this step rewrites identically.
            let k = model.config().class_names().len();
            let confusion = json!({
                "iter": done, "miou": miou, "dataset": vd.describe(), "class_names": model.config().class_names(),
                "per_class_iou": rep.metrics.per_class_iou, "confusion_matrix": rep.confusion.chunks(k.max(1)).collect::<Vec<_>>(),
            });
            crate::io::atomic_write_json(&self.run.best_confusion(), &confusion)?;
            checkpoint::save(model, &m, &self.run.best())?;
        }
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
    cfg.numerics.apply()?;
    crate::device::tune_for_repeated_sizes(device);
    let mut sgd = Sgd::new(cfg.momentum, cfg.weight_decay);
    let super::state::Start { mut model, state, log_note } = restore_or_init(cfg, run, resume, opts, &mut sgd, progress)?;
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
    let (ds, val_sets) = open_datasets(cfg)?;
    for note in std::iter::once(&*ds).chain(val_sets.all()).filter_map(Dataset::issues_note) {
        progress.notice(&note);
    }
    let mut loader = make_loader(cfg, ds, opts, start, end)?;
    let mut stepper = Stepper::new(&model, cfg, tables, sgd);
    let mut meta = CheckpointMeta::new(model.config());
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
    if let Some(note) = log_note {
        s.log.write(json!({"iter": start, "note": note}))?;
    }
    crate::device::cuda_reset_peak(device);
    progress.start("train", cfg.iters, start, Unit::Items);
    let res = run_loop(&mut s, &mut stepper, &mut loader, &val_sets, start, end);
    progress.finish();
    res?;
    s.summary.steps = s.state.step;
    s.summary.best_miou = s.state.best_miou;
    Ok(s.summary)
}

fn run_loop(s: &mut Session, stepper: &mut Stepper, loader: &mut BatchLoader, val: &ValSets, start: u64, end: u64) -> Result<()> {
    let device = stepper.model.device();
    let mut step = start;
    while let Some(batch) = loader.next() {
        let batch = batch.with_context(|| format!("loading the batch of iteration {}", step + 1))?;
        for sk in loader.take_skipped() {
            s.progress.notice(&format!("skipping unreadable sample {}: {}", sk.path, sk.error));
            s.summary.skipped.push(sk);
        }
        check_labels(&batch, stepper.model.config().head.num_classes, step + 1)?;
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
        if s.progress.cancelled() && done < end {
            return s.cancel(done, stepper, device);
        }
    }
    Ok(())
}
