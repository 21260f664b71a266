//! Where a run starts from and what a checkpoint holds: CLIP's image tower with a
//! fresh head for a new run, or the latest checkpoint (weights, batch-norm statistics,
//! SGD momentum and the training state, one file committed by one rename) for a resume.
//! Resuming restores every one of these, so a resumed run continues bit-exactly.

use std::path::PathBuf;

use crate::error::{fail, Context, Error, Result};

use tch::{Device, Tensor};

use crate::clip::ResNetConfig;
use crate::io::run_folder::{RunFolder, RunState, STATE_KEY};
use crate::io::weights::{load_vars, StateDict};
use crate::model::checkpoint::{self, CheckpointMeta};
use crate::model::{Segmenter, SegmenterConfig};
use crate::optim::Sgd;
use crate::progress::Progress;
use crate::rng::{stream, Rng};

use super::config::{RunOptions, TrainConfig};

/// A fresh segmenter: CLIP image-tower weights for the backbone, Kaiming head.
pub(crate) fn initial_model(cfg: &TrainConfig, device: Device) -> Result<Segmenter> {
    let sd = StateDict::load(&cfg.clip)?;
    let backbone = ResNetConfig::infer(&sd.tensors, "visual.").with_context(|| format!("{}", cfg.clip.display()))?;
    let mut scfg = SegmenterConfig::new(backbone, cfg.head.num_classes, cfg.output_stride, cfg.freeze);
    scfg.head = cfg.head.clone();
    scfg.classes = cfg.class_set();
    tch::manual_seed((Rng::derive(cfg.seed, &[stream::TORCH_SEED, u64::MAX]).next_u64() >> 1) as i64);
    let mut model = Segmenter::new(scfg, Device::Cpu)?;
    load_vars(&model.vs, "backbone.", &sd.tensors, "visual.", &|k| k.starts_with("visual.attnpool."), &cfg.clip, "CLIP image tower")?;
    model.vs.set_device(device);
    Ok(model)
}

/// Commits a training checkpoint: weights, optimiser momentum and training state
/// in one file, made visible by one rename (see `checkpoint::save_with`).
pub(super) fn save_state(run: &RunFolder, model: &Segmenter, meta: &CheckpointMeta, sgd: &Sgd, state: &RunState) -> Result<()> {
    if !state.best_miou.is_none_or(f64::is_finite) {
        return Err(Error::NonFinite { what: "the best mIoU to checkpoint".into(), count: 1 });
    }
    let extra = sgd.state().into_iter().map(|(k, t)| (format!("{}{k}", checkpoint::EXTRA_PREFIX), t)).collect();
    let md = [(STATE_KEY.to_string(), serde_json::to_string(state)?)].into_iter().collect();
    checkpoint::save_with(model, meta, extra, md, &run.latest())?;
    Ok(())
}

/// The training state and momentum of a loaded `latest` checkpoint. The momentum
/// must be complete and fit the parameters unless `reset_optimizer` (then it is
/// dropped and SGD starts afresh).
pub(super) fn load_state(
    loaded: &checkpoint::Loaded,
    params: &[(String, Tensor)],
    sgd: &mut Sgd,
    reset_optimizer: bool,
    progress: &dyn Progress,
) -> Result<RunState> {
    let origin = &loaded.path;
    let state_json = loaded.metadata.get(STATE_KEY).ok_or_else(|| {
        Error::incompatible(
            origin,
            format!("{}: no training state (not written by `famix train`); start the run over with `force`", origin.display()),
        )
    })?;
    let tensors: std::collections::HashMap<String, Tensor> = loaded
        .extra
        .iter()
        .filter_map(|(k, t)| k.strip_prefix(checkpoint::EXTRA_PREFIX).map(|n| (n.to_string(), t.shallow_clone())))
        .collect();
    let state: RunState = serde_json::from_str(state_json).with_context(|| format!("{}: unreadable training state", origin.display()))?;
    if state.step != loaded.meta.step {
        fail!(
            Incompatible,
            origin,
            "{}: optimiser state of step {} but weights of step {}; the run folder is inconsistent",
            origin.display(),
            state.step,
            loaded.meta.step
        );
    }
    if reset_optimizer {
        progress.notice(&format!("`reset_optimizer`: resuming {} with fresh SGD momentum", origin.display()));
        return Ok(state);
    }
    let hint = "pass `reset_optimizer` to resume with fresh momentum anyway (the run will then differ from an uninterrupted one)";
    let device = params.first().map(|(_, t)| t.device()).unwrap_or(Device::Cpu);
    sgd.load_state(&tensors, params, device)
        .map_err(|e| Error::incompatible(origin, format!("{}: cannot restore the optimiser ({e}); {hint}", origin.display())))?;
    if state.step > 0 && sgd.momentum != 0.0 {
        let missing: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).filter(|n| !sgd.buffers.contains_key(*n)).collect();
        if !missing.is_empty() {
            fail!(
                Incompatible,
                origin,
                "{}: the checkpoint has no optimiser momentum for {} of {} trainable parameters (e.g. {}); {hint}",
                origin.display(),
                missing.len(),
                params.len(),
                missing[0]
            );
        }
    }
    Ok(state)
}

/// Where a run starts: the model, its training state, and a line for the run's log
/// when the start is not the plain continuation of `latest` (a resume from `best`).
pub(super) struct Start {
    pub model: Segmenter,
    pub state: RunState,
    pub log_note: Option<String>,
}

/// The model and training state a run starts from: the latest checkpoint of `run`
/// (resume: weights, momentum and step from one file, checked against the run's
/// configuration), its best checkpoint (`opts.from_best`: weights and step, fresh
/// momentum), or CLIP's image tower with a fresh head (a new run, or a resumed one that
/// had not committed a checkpoint yet). A resume never restarts silently: when the
/// folder shows a committed checkpoint but `latest` is missing or unreadable, it
/// refuses.
pub(super) fn restore_or_init(
    cfg: &TrainConfig,
    run: &RunFolder,
    resume: bool,
    opts: &RunOptions,
    sgd: &mut Sgd,
    progress: &dyn Progress,
) -> Result<Start> {
    let device = opts.device;
    // A new run (also one started over with --force, or a resume before the first
    // checkpoint) starts from the initial model with an empty log.
    let fresh = || {
        let state = RunState { run_id: cfg.run_id.clone(), log_bytes: Some(0), ..Default::default() };
        Ok(Start { model: initial_model(cfg, device)?, state, log_note: None })
    };
    if !resume {
        return fresh();
    }
    if opts.from_best {
        return resume_from_best(cfg, run, device, progress);
    }
    let latest = run.latest();
    let lost = |problem: String, progress_seen: String| {
        Error::invalid_input(
            &latest,
            format!(
                "{problem}, but {progress_seen}: resuming from iteration 0 would lose that history. \
                 Continue from {} with --from-best, or start the run over with --force",
                run.best().display()
            ),
        )
    };
    if !latest.exists() {
        if let Some(seen) = recorded_progress(run, cfg)? {
            return Err(lost(format!("{} is missing", latest.display()), seen));
        }
        progress.notice(&format!(
            "{} has its configuration but no committed checkpoint: starting the run from iteration 0",
            run.dir().display()
        ));
        return fresh();
    }
    let mut l = match checkpoint::load(&latest, device, Some(cfg.output_stride)) {
        Ok(l) => l,
        Err(e) if e.kind() == crate::error::ErrorKind::Busy => return Err(e),
        Err(e) => {
            let seen = recorded_progress(run, cfg)?.unwrap_or_else(|| "the run folder has a checkpoint".into());
            return Err(lost(format!("{} is unreadable ({e:#})", latest.display()), seen));
        }
    };
    check_head(cfg, &l)?;
    l.model.set_freeze(cfg.freeze);
    let groups = l.model.param_groups();
    let params: Vec<(String, Tensor)> = groups.backbone.into_iter().chain(groups.head).collect();
    let st = load_state(&l, &params, sgd, opts.reset_optimizer, progress)?;
    if !st.run_id.is_empty() && !cfg.run_id.is_empty() && st.run_id != cfg.run_id {
        fail!(
            Incompatible,
            &l.path,
            "{}: the checkpoint belongs to run {} but config.json to run {}",
            l.path.display(),
            st.run_id,
            cfg.run_id
        );
    }
    Ok(Start { model: l.model, state: st, log_note: None })
}

/// A checkpoint's head must be the one the run's configuration declares.
fn check_head(cfg: &TrainConfig, l: &checkpoint::Loaded) -> Result<()> {
    if l.model.config().head != cfg.head {
        fail!(
            Incompatible,
            &l.path,
            "{}: the checkpoint's head {:?} contradicts the run's config.json {:?}",
            l.path.display(),
            l.model.config().head,
            cfg.head
        );
    }
    Ok(())
}

/// What in `run` shows that a checkpoint was committed, in words (`None`: nothing does).
/// The latest checkpoint's JSON header is written right after it; iterations past the
/// first checkpoint (`min(val_interval, iters)`) in the log, or a best checkpoint of a
/// later validation, only happen after it. Logged iterations up to the first
/// checkpoint, or a `best` of that first validation, are no such sign: a run killed
/// while writing its first checkpoint leaves them, and starts again from 0.
pub(crate) fn recorded_progress(run: &RunFolder, cfg: &TrainConfig) -> Result<Option<String>> {
    let first = cfg.val_interval.max(1).min(cfg.iters.max(1));
    // A checkpoint header recording an iteration past `after`.
    let header_past = |checkpoint: PathBuf, after: u64| {
        let header = checkpoint::sidecar_path(&checkpoint);
        let step = crate::io::read_json::<CheckpointMeta>(&header).ok().map(|m| m.step).filter(|&s| s > after);
        step.map(|s| format!("{} records iteration {s}", header.display()))
    };
    if let Some(found) = header_past(run.latest(), 0) {
        return Ok(Some(found));
    }
    if let Some(last) = logged_iterations(run)?.iter().map(|(i, _)| *i).max().filter(|&i| i > first) {
        return Ok(Some(format!("{} records iteration {last}", run.log().display())));
    }
    Ok(header_past(run.best(), first))
}

/// The iterations the run's log records, each with the log's length after its line.
fn logged_iterations(run: &RunFolder) -> Result<Vec<(u64, u64)>> {
    let p = run.log();
    let text = match std::fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::from(e)).with_context(|| format!("cannot read {}", p.display())),
    };
    let mut out = vec![];
    let mut end = 0u64;
    for line in text.split_inclusive(|&b| b == b'\n') {
        end += line.len() as u64;
        // A torn last line (a crash mid-write) holds no iteration.
        let iter = serde_json::from_slice::<serde_json::Value>(line).ok().and_then(|v| v.get("iter").and_then(|i| i.as_u64()));
        if let Some(i) = iter.filter(|_| line.ends_with(b"\n")) {
            out.push((i, end));
        }
    }
    Ok(out)
}

/// Resumes from `best`: its weights and step, fresh SGD momentum (best checkpoints
/// carry none), the log cut after the best iteration's lines, and a note for the log.
fn resume_from_best(cfg: &TrainConfig, run: &RunFolder, device: Device, progress: &dyn Progress) -> Result<Start> {
    let best = run.best();
    if !best.exists() {
        fail!(InvalidInput, &best, "`from_best`: {} does not exist (no validation has been run yet)", best.display());
    }
    let mut l = checkpoint::load(&best, device, Some(cfg.output_stride))?;
    check_head(cfg, &l)?;
    l.model.set_freeze(cfg.freeze);
    let step = l.meta.step;
    let log_bytes = logged_iterations(run)?.iter().take_while(|(i, _)| *i <= step).last().map(|(_, end)| *end).unwrap_or(0);
    let state =
        RunState { step, best_miou: l.meta.best_miou, best_step: Some(step), run_id: cfg.run_id.clone(), log_bytes: Some(log_bytes) };
    let note = format!(
        "resumed from {} at iteration {step} with fresh SGD momentum (from-best); later iterations are redone and differ from the lost ones",
        best.display()
    );
    progress.notice(&note);
    Ok(Start { model: l.model, state, log_note: Some(note) })
}

/// Every tensor a training checkpoint holds: all variables (parameters and batch-norm
/// statistics) and the optimiser's momentum, sorted by name.
pub(super) fn checkpoint_tensors(model: &Segmenter, sgd: &Sgd) -> Vec<(String, Tensor)> {
    let mut all: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    all.extend(sgd.state().into_iter().map(|(k, t)| (format!("{}{k}", checkpoint::EXTRA_PREFIX), t)));
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}
