//! `famix clip-pretrain`: contrastive image–text pretraining (or fine-tuning) of a
//! CLIP ResNet on an image–caption set, as OpenAI's CLIP and open_clip train:
//! symmetric cross-entropy over the batch's similarity matrix with a learnt
//! temperature (`model`), AdamW with decoupled weight decay on matrices only,
//! linear warm-up then cosine decay, CLIP's initialisation.
//!
//! Runs have the guarantees of segmenter training (the shared run folder,
//! [`crate::io::run_folder`]): one writer, `config.json` as the one source of the
//! settings, a JSON log cut back to the checkpoint on resume, checkpoints that hold
//! weights, AdamW state and progress in one atomically renamed file, every random
//! choice derived from (seed, step) — so an interrupted run resumed from its latest
//! checkpoint continues bit-exactly. After every checkpoint the CLIP alone is
//! written to `RUN/clip.safetensors`, a checkpoint every `--clip` flag accepts.

pub(crate) mod data;
pub(crate) mod model;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::clip::{ResNetConfig, TextConfig};
use crate::data::captions::CaptionSet;
use crate::error::{fail, Context, Error, Result};
use crate::io::run_folder::{new_run_id, RunFolder, RunLog, RunState, EXTRA_PREFIX, STATE_KEY};
use crate::io::tensorboard::EventWriter;
use crate::optim::{cosine_lr, AdamW};
use crate::progress::{Progress, Unit};
use crate::rng::{stream, Rng};
use data::{tokenize_all, PairLoader, PairLoaderConfig};
use model::TrainableClip;

/// A pretraining run's settings (RUN/config.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    /// The captions file.
    pub data: PathBuf,
    /// A CLIP checkpoint to start from (fine-tuning), or None for CLIP's random init.
    pub init: Option<PathBuf>,
    /// The image tower (its input resolution is the training resolution).
    pub visual: ResNetConfig,
    /// The text tower.
    pub text: TextConfig,
    /// Optimiser steps.
    pub iters: u64,
    /// Pairs per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW weight decay (matrices and convolutions only).
    pub weight_decay: f64,
    /// Linear warm-up steps.
    pub warmup: u64,
    /// AdamW β₁, β₂.
    pub betas: (f64, f64),
    /// AdamW ε.
    pub eps: f64,
    /// Random square crops (80–100 % of the shorter side) instead of the centre crop.
    pub augment: bool,
    /// Seed of the initialisation, the data order and the crops.
    pub seed: u64,
    /// Steps between log lines.
    pub log_interval: u64,
    /// Steps between checkpoints.
    pub save_interval: u64,
    /// The run's id (set when it starts; checkpoints carry it).
    #[serde(default)]
    pub run_id: String,
}

impl PretrainConfig {
    /// open_clip's defaults for ResNets (lr 5e-4, weight decay 0.2, β = (0.9, 0.999),
    /// ε = 1e-8), batch 128, 10 % warm-up, augmentation on, for `iters` steps.
    pub fn new(data: PathBuf, visual: ResNetConfig, text: TextConfig, iters: u64) -> Self {
        PretrainConfig {
            data,
            init: None,
            visual,
            text,
            iters,
            batch: 128,
            lr: 5e-4,
            weight_decay: 0.2,
            warmup: iters / 10,
            betas: (0.9, 0.999),
            eps: 1e-8,
            augment: true,
            seed: 1,
            log_interval: 10,
            save_interval: 250,
            run_id: String::new(),
        }
    }

    /// Refuses settings out of range, by flag name.
    pub fn check(&self) -> Result<()> {
        let bad = |name: &str, problem: String| Err(Error::invalid_setting(name, problem));
        if self.iters == 0 {
            return bad("iters", "must be at least 1".into());
        }
        if self.batch < 2 {
            return bad("batch", "must be at least 2 (the loss contrasts each pair with the others)".into());
        }
        let r = self.visual.input_resolution;
        if r < 32 || r % 32 != 0 || r > 1024 {
            return bad("input_resolution", format!("{r} must be a multiple of 32 from 32 to 1024"));
        }
        for (name, v, ok) in [
            ("lr", self.lr, self.lr > 0.0),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0.0),
            ("beta1", self.betas.0, (0.0..1.0).contains(&self.betas.0)),
            ("beta2", self.betas.1, (0.0..1.0).contains(&self.betas.1)),
            ("eps", self.eps, self.eps > 0.0),
        ] {
            if !v.is_finite() || !ok {
                return bad(name, format!("{v} is out of range"));
            }
        }
        if self.save_interval == 0 || self.log_interval == 0 {
            return bad("save_interval/log_interval", "must be at least 1".into());
        }
        Ok(())
    }
}

/// How to run (may differ between a run and its resume).
#[derive(Debug, Clone)]
pub struct PretrainOptions {
    /// Where to compute.
    pub device: Device,
    /// Image decoding threads.
    pub workers: usize,
    /// Stop (with a checkpoint) after this many steps in this invocation.
    pub stop_after: Option<u64>,
    /// Also write TensorBoard event files here.
    pub tensorboard: Option<PathBuf>,
    /// Resume even when the checkpoint's AdamW state is missing or does not fit
    /// (fresh moments; the run then differs from an uninterrupted one).
    pub reset_optimizer: bool,
}

/// What a pretraining call did.
#[derive(Debug, Clone, Serialize)]
pub struct PretrainSummary {
    /// Steps done in total.
    pub steps: u64,
    /// Mean loss of the last logged stretch.
    pub last_loss: Option<f64>,
    /// The final logit scale, exp(log s).
    pub logit_scale: f64,
    /// The CLIP checkpoint written (RUN/clip.safetensors).
    pub clip: PathBuf,
}

/// RUN/clip.safetensors: the pretrained CLIP alone.
pub fn clip_path(run: &Path) -> PathBuf {
    run.join("clip.safetensors")
}

/// The metadata key of the run's description in its CLIP files.
const CLIP_META_KEY: &str = "famix-clip";

fn optimiser(cfg: &PretrainConfig) -> AdamW {
    AdamW::new(cfg.betas, cfg.eps)
}

/// The description written into a run's CLIP files.
fn clip_metadata(cfg: &PretrainConfig, step: u64) -> HashMap<String, String> {
    let about = json!({"visual": cfg.visual, "text": cfg.text, "run_id": cfg.run_id, "step": step}).to_string();
    [(CLIP_META_KEY.to_string(), about)].into()
}

/// Commits a checkpoint (weights, AdamW state, progress in one file), then rewrites
/// the CLIP-only file. Non-finite values are never written.
fn save(run: &RunFolder, m: &TrainableClip, opt: &AdamW, cfg: &PretrainConfig, state: &RunState) -> Result<()> {
    let mut tensors = m.state_dict();
    tensors.extend(opt.state().into_iter().map(|(k, t)| (format!("{EXTRA_PREFIX}{k}"), t)));
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    crate::io::weights::check_finite(&tensors)
        .map_err(|e| e.context(format!("{}: refusing to write a checkpoint", run.latest().display())))?;
    let mut meta = clip_metadata(cfg, state.step);
    meta.insert(STATE_KEY.into(), serde_json::to_string(state)?);
    crate::io::archive::save_safetensors(&run.latest(), &tensors, Some(meta))?;
    export_clip(run, m, cfg, state.step)
}

/// Writes RUN/clip.safetensors: the CLIP alone (derived from the checkpoint, so a
/// crash between the two writes is repaired by the next call).
fn export_clip(run: &RunFolder, m: &TrainableClip, cfg: &PretrainConfig, step: u64) -> Result<()> {
    crate::io::archive::save_safetensors(&clip_path(run.dir()), &m.state_dict(), Some(clip_metadata(cfg, step)))
}

/// The model, optimiser and progress a run starts from: its latest checkpoint, or a
/// fresh CLIP (random, or `cfg.init`) when the run has no checkpoint yet.
fn restore_or_init(
    cfg: &PretrainConfig,
    run: &RunFolder,
    resume: bool,
    opts: &PretrainOptions,
    progress: &dyn Progress,
) -> Result<(TrainableClip, AdamW, RunState)> {
    let device = opts.device;
    let fresh_state = RunState { run_id: cfg.run_id.clone(), log_bytes: Some(0), ..Default::default() };
    if !resume || !run.latest().exists() {
        if resume {
            progress.notice(&format!("{} has its configuration but no checkpoint yet: starting the run from step 0", run.dir().display()));
        }
        tch::manual_seed((Rng::derive(cfg.seed, &[stream::TORCH_SEED, u64::MAX]).next_u64() >> 1) as i64);
        let m = match &cfg.init {
            Some(p) => TrainableClip::load(p, device)?,
            None => TrainableClip::new(&cfg.visual, &cfg.text, device),
        };
        return Ok((m, optimiser(cfg), fresh_state));
    }
    let latest = run.latest();
    let file = crate::io::StateDict::load(&latest)?;
    let m = TrainableClip::from_state_dict(&file, device)?;
    let state: RunState = file
        .metadata
        .get(STATE_KEY)
        .map(|j| serde_json::from_str(j))
        .transpose()
        .map_err(|e| Error::from(e).unreadable(&latest, "unreadable training state"))?
        .ok_or_else(|| Error::incompatible(&latest, format!("{}: no training state (not a clip-pretrain checkpoint)", latest.display())))?;
    if state.run_id != cfg.run_id {
        fail!(
            Incompatible,
            &latest,
            "{}: the checkpoint belongs to run {} but config.json to run {}",
            latest.display(),
            state.run_id,
            cfg.run_id
        );
    }
    let mut opt = optimiser(cfg);
    if opts.reset_optimizer {
        progress.notice(&format!("`reset_optimizer`: resuming {} with fresh AdamW moments", latest.display()));
        return Ok((m, opt, state));
    }
    let optim: HashMap<String, Tensor> =
        file.tensors.iter().filter_map(|(k, t)| k.strip_prefix(EXTRA_PREFIX).map(|n| (n.to_string(), t.shallow_clone()))).collect();
    let (decay, no_decay) = m.param_groups();
    let params: Vec<(String, Tensor)> = decay.into_iter().chain(no_decay).collect();
    let hint = "pass `reset_optimizer` to resume with fresh AdamW moments anyway (the run will then differ from an uninterrupted one)";
    opt.load_state(&optim, &params, device)
        .map_err(|e| e.context(format!("{}: cannot restore the optimiser; {hint}", latest.display())))?;
    if opt.len() != params.len() {
        fail!(
            Incompatible,
            &latest,
            "{}: the checkpoint has AdamW state for {} of {} parameters; {hint}",
            latest.display(),
            opt.len(),
            params.len()
        );
    }
    Ok((m, opt, state))
}

/// The state of one `pretrain` call between steps.
struct Session<'a> {
    cfg: &'a PretrainConfig,
    run: RunFolder,
    log: RunLog,
    tensorboard: Option<EventWriter>,
    progress: &'a dyn Progress,
    state: RunState,
    loss_acc: Tensor,
    loss_n: u64,
    last_loss: Option<f64>,
    t_log: Instant,
}

impl Session<'_> {
    fn log_line(&mut self, done: u64, lr: f64, logit_scale: f64) -> Result<()> {
        let mean = self.loss_acc.double_value(&[]) / self.loss_n as f64;
        if !mean.is_finite() {
            let last = crate::io::run_folder::last_finite_checkpoint(&self.run);
            fail!(Diverged, "the loss became {mean} by step {done}; pretraining stopped. {last} Try a lower `lr`.");
        }
        let secs = self.t_log.elapsed().as_secs_f64();
        let per_s = (self.loss_n as f64 * self.cfg.batch as f64) / secs;
        self.log.write(json!({"iter": done, "loss": mean, "lr": lr, "logit_scale": logit_scale, "images_per_s": per_s,
            "step_ms": secs * 1000.0 / self.loss_n as f64}))?;
        if let Some(tb) = &mut self.tensorboard {
            let s = [("pretrain/loss", mean), ("pretrain/lr", lr), ("pretrain/logit_scale", logit_scale), ("pretrain/images_per_s", per_s)];
            tb.scalars(done, &s.map(|(k, v)| (k.to_string(), v)))?;
        }
        self.progress.status(&format!("loss {mean:.4}"));
        self.last_loss = Some(mean);
        self.loss_acc = self.loss_acc.zeros_like();
        self.loss_n = 0;
        self.t_log = Instant::now();
        Ok(())
    }

    fn checkpoint(&mut self, done: u64, m: &TrainableClip, opt: &AdamW) -> Result<()> {
        let optim: Vec<(String, Tensor)> = opt.state();
        if let Err(e) = crate::io::weights::check_finite(&m.state_dict()).and_then(|_| crate::io::weights::check_finite(&optim)) {
            let last = crate::io::run_folder::last_finite_checkpoint(&self.run);
            fail!(Diverged, "{e} by step {done}; pretraining stopped before writing a checkpoint. {last} Try a lower `lr`.");
        }
        self.state.step = done;
        self.state.log_bytes = Some(self.log.sync()?);
        if let Some(tb) = &mut self.tensorboard {
            tb.sync()?;
        }
        save(&self.run, m, opt, self.cfg, &self.state)?;
        self.t_log = Instant::now();
        Ok(())
    }
}

/// Pretrains (or resumes) the run in `run`. `cfg` is the run's configuration (for a
/// resume: the saved one, possibly with a larger `iters`). A resume of a run that
/// has its configuration but no checkpoint yet starts it from step 0.
pub fn pretrain(
    cfg: &PretrainConfig,
    run: &Path,
    resume: bool,
    opts: &PretrainOptions,
    progress: &dyn Progress,
) -> Result<PretrainSummary> {
    cfg.check()?;
    let folder = RunFolder::new(run);
    let _lock = folder.open_writer("a CLIP pretraining run")?;
    let mut cfg = cfg.clone();
    if !resume || cfg.run_id.is_empty() {
        cfg.run_id = new_run_id();
    }
    let cfg = &cfg;
    crate::io::atomic_write_json(&folder.config(), cfg)?;
    let set = CaptionSet::open(&cfg.data)?;
    let (m, mut opt, state) = restore_or_init(cfg, &folder, resume, opts, progress)?;
    let start = state.step;
    if start >= cfg.iters {
        progress.notice(&format!("{} is already at step {start} of {}", run.display(), cfg.iters));
        export_clip(&folder, &m, cfg, start)?;
        return Ok(PretrainSummary {
            steps: start,
            last_loss: None,
            logit_scale: m.logit_scale.double_value(&[]).exp(),
            clip: clip_path(run),
        });
    }
    let end = opts.stop_after.map(|n| (start + n).min(cfg.iters)).unwrap_or(cfg.iters);
    let tokens = tokenize_all(&set, cfg.text.context_length as usize)?;
    let lc = PairLoaderConfig {
        batch: cfg.batch,
        resolution: cfg.visual.input_resolution as usize,
        augment: cfg.augment,
        seed: cfg.seed,
        workers: opts.workers,
    };
    let loader = PairLoader::new(&set, tokens, lc, start, end)?;
    let mut s = Session {
        cfg,
        log: RunLog::open(&folder, state.log_bytes)?,
        run: folder,
        tensorboard: opts.tensorboard.as_deref().map(|d| EventWriter::create(d, start)).transpose()?,
        progress,
        state,
        loss_acc: Tensor::zeros([], (Kind::Float, opts.device)),
        loss_n: 0,
        last_loss: None,
        t_log: Instant::now(),
    };
    progress.start("clip-pretrain", cfg.iters, start, Unit::Items);
    let res = run_loop(&mut s, &m, &mut opt, loader, start, end);
    progress.finish();
    res?;
    Ok(PretrainSummary {
        steps: s.state.step,
        last_loss: s.last_loss,
        logit_scale: m.logit_scale.double_value(&[]).exp(),
        clip: clip_path(run),
    })
}

fn run_loop(s: &mut Session, m: &TrainableClip, opt: &mut AdamW, loader: PairLoader, start: u64, end: u64) -> Result<()> {
    let cfg = s.cfg;
    let device = m.vs.device();
    let (decay, no_decay) = m.param_groups();
    let all: Vec<(String, Tensor)> = decay.iter().chain(&no_decay).map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    let mut step = start;
    for batch in loader {
        let batch = batch.with_context(|| format!("loading the batch of step {}", step + 1))?;
        let lr = cosine_lr(cfg.lr, step, cfg.iters, cfg.warmup);
        crate::optim::Sgd::zero_grad(&all);
        let x = crate::clip::preprocess::normalize_u8(&batch.images, device);
        let loss = m.loss(&x, &batch.tokens.to_device(device))?;
        loss.backward();
        opt.step(&[(lr, cfg.weight_decay, &decay), (lr, 0.0, &no_decay)]);
        m.clamp_logit_scale();
        s.loss_acc += loss.detach();
        s.loss_n += 1;
        s.progress.advance(1);
        let done = step + 1;
        let save_now = done.is_multiple_of(cfg.save_interval) || done == end;
        if done.is_multiple_of(cfg.log_interval) || save_now {
            s.log_line(done, lr, m.logit_scale.double_value(&[]).exp())?;
        }
        if save_now {
            s.checkpoint(done, m, opt)?;
        }
        step = done;
        if s.progress.cancelled() && done < end {
            if !save_now {
                s.checkpoint(done, m, opt)?;
            }
            return Err(Error::Cancelled { what: format!("pretraining at step {done}; continue with `resume` {}", s.run.dir().display()) });
        }
    }
    Ok(())
}
