//! `famix clip-pretrain`: contrastive image–text pretraining or fine-tuning of a CLIP
//! ResNet on a captions file (see `famix::clip::pretrain`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use famix::clip::pretrain::{pretrain, PretrainConfig, PretrainOptions};
use famix::clip::{ResNetConfig, TextConfig};
use famix::io::run_folder::RunFolder;

#[derive(Clone, Copy, ValueEnum)]
pub enum Arch {
    /// famix's tiny CLIP (ResNet [1,1,2,2] width 16, text width 64 × 2 layers, 64-wide embedding)
    Tiny,
    /// OpenAI CLIP RN50's shape
    Rn50,
    /// OpenAI CLIP RN101's shape
    Rn101,
}

#[derive(Args)]
pub struct PretrainArgs {
    /// Captions file (or a folder with captions.jsonl): one {"image": PATH, "text": CAPTION} per line, paths relative to the file
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Run folder: config.json, train_log.jsonl, latest.safetensors and the result, clip.safetensors
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this folder (settings come from its config.json)
    #[arg(long, conflicts_with_all = ["data", "out"])]
    resume: Option<PathBuf>,
    /// Start from this CLIP checkpoint (fine-tuning) instead of a random initialisation; the architecture is the file's
    #[arg(long)]
    init: Option<PathBuf>,
    /// Architecture of a randomly initialised CLIP [default: tiny]
    #[arg(long, value_enum, conflicts_with = "init")]
    arch: Option<Arch>,
    /// Input resolution of the image tower, a multiple of 32 [default: 224, or the --init checkpoint's]
    #[arg(long)]
    input_resolution: Option<i64>,
    /// Text context length in tokens (longer captions are cut, keeping the end token) [default: 77]
    #[arg(long)]
    context_length: Option<i64>,
    #[arg(long, help = format!("Optimiser steps (with --resume: extends the run) [default: {DEFAULT_ITERS}]"))]
    iters: Option<u64>,
    #[arg(long, help = library_default("Image–caption pairs per step", |c| c.batch as f64))]
    batch: Option<usize>,
    #[arg(long, help = library_default("Peak learning rate (AdamW)", |c| c.lr))]
    lr: Option<f64>,
    #[arg(long, help = library_default("AdamW weight decay on weight matrices and convolutions", |c| c.weight_decay))]
    weight_decay: Option<f64>,
    /// Linear warm-up steps before the cosine decay [default: 10 % of --iters]
    #[arg(long)]
    warmup: Option<u64>,
    #[arg(long, help = library_default("AdamW β₁", |c| c.betas.0))]
    beta1: Option<f64>,
    #[arg(long, help = library_default("AdamW β₂", |c| c.betas.1))]
    beta2: Option<f64>,
    #[arg(long, help = library_default("AdamW ε", |c| c.eps))]
    eps: Option<f64>,
    /// CLIP's centre crop instead of random crops of 80–100 % of the shorter side
    #[arg(long)]
    no_augment: bool,
    #[arg(long, help = library_default("Seed of the initialisation, data order and crops", |c| c.seed as f64))]
    seed: Option<u64>,
    #[arg(long, help = library_default("Log every N steps", |c| c.log_interval as f64))]
    log_interval: Option<u64>,
    #[arg(long, help = library_default("Checkpoint every N steps (and at the end)", |c| c.save_interval as f64))]
    save_interval: Option<u64>,
    /// Stop after N steps in this invocation (checkpointed; continue with --resume)
    #[arg(long)]
    stop_after: Option<u64>,
    /// Start over even if the run folder has checkpoints
    #[arg(long)]
    force: bool,
    /// Also write TensorBoard event files (loss, learning rate, logit scale, images/s) to DIR [default: RUN/tensorboard]
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    tensorboard: Option<Option<PathBuf>>,
    /// With --resume: continue even when the checkpoint's AdamW state is missing or does not fit, with fresh moments; the run then differs from an uninterrupted one
    #[arg(long, requires = "resume")]
    reset_optimizer: bool,
    /// Image-decoding threads (default: cores - 1)
    #[arg(long)]
    workers: Option<usize>,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// `text` and the default the library gives the setting (`PretrainConfig::new`): the
/// help prints the library's value instead of restating it.
fn library_default(text: &str, pick: fn(&PretrainConfig) -> f64) -> String {
    let c = PretrainConfig::new(PathBuf::new(), ResNetConfig::tiny(), TextConfig::tiny(), DEFAULT_ITERS);
    format!("{text} [default: {}]", super::number(pick(&c)))
}

/// `--iters` when not given (the command's choice: the library takes it as an argument).
const DEFAULT_ITERS: u64 = 2000;

fn fixed_on_resume(a: &PretrainArgs) -> Vec<&'static str> {
    let given = [
        ("--init", a.init.is_some()),
        ("--arch", a.arch.is_some()),
        ("--input-resolution", a.input_resolution.is_some()),
        ("--context-length", a.context_length.is_some()),
        ("--batch", a.batch.is_some()),
        ("--lr", a.lr.is_some()),
        ("--weight-decay", a.weight_decay.is_some()),
        ("--warmup", a.warmup.is_some()),
        ("--beta1", a.beta1.is_some()),
        ("--beta2", a.beta2.is_some()),
        ("--eps", a.eps.is_some()),
        ("--no-augment", a.no_augment),
        ("--seed", a.seed.is_some()),
        ("--log-interval", a.log_interval.is_some()),
        ("--save-interval", a.save_interval.is_some()),
    ];
    given.iter().filter(|(_, g)| *g).map(|(n, _)| *n).collect()
}

/// The architecture of a new run: the --init checkpoint's, or --arch's.
fn architecture(a: &PretrainArgs) -> Result<(ResNetConfig, TextConfig)> {
    let (mut visual, mut text) = match &a.init {
        Some(p) => {
            let clip = famix::clip::Clip::load(p, tch::Device::Cpu, famix::clip::OutputStride::Os32)?;
            let text = clip.text().with_context(|| format!("{}: --init needs both towers", p.display()))?.config.clone();
            (clip.visual.config.clone(), text)
        }
        None => match a.arch.unwrap_or(Arch::Tiny) {
            Arch::Tiny => (ResNetConfig::tiny(), TextConfig::tiny()),
            Arch::Rn50 => (ResNetConfig::rn50(), TextConfig::rn50()),
            Arch::Rn101 => (ResNetConfig::rn101(), TextConfig::rn101()),
        },
    };
    if let Some(r) = a.input_resolution {
        if a.init.is_some() && r != visual.input_resolution {
            bail!("--input-resolution {r}: the --init checkpoint's attention pool is made for {}", visual.input_resolution);
        }
        visual.input_resolution = r;
    }
    if let Some(c) = a.context_length {
        if a.init.is_some() && c != text.context_length {
            bail!("--context-length {c}: the --init checkpoint's positional embedding has {}", text.context_length);
        }
        if !(2..=4096).contains(&c) {
            bail!("--context-length {c} is not in 2..=4096");
        }
        text.context_length = c;
    }
    Ok((visual, text))
}

fn new_config(a: &PretrainArgs) -> Result<PretrainConfig> {
    let data = a.data.clone().context("--data is needed for a new run")?;
    let (visual, text) = architecture(a)?;
    let iters = a.iters.unwrap_or(DEFAULT_ITERS);
    let mut c = PretrainConfig::new(data, visual, text, iters);
    c.init = a.init.clone();
    c.augment = !a.no_augment;
    let set = |field: &mut f64, v: Option<f64>| {
        if let Some(v) = v {
            *field = v;
        }
    };
    set(&mut c.lr, a.lr);
    set(&mut c.weight_decay, a.weight_decay);
    set(&mut c.betas.0, a.beta1);
    set(&mut c.betas.1, a.beta2);
    set(&mut c.eps, a.eps);
    c.batch = a.batch.unwrap_or(c.batch);
    c.warmup = a.warmup.unwrap_or(c.warmup);
    c.seed = a.seed.unwrap_or(c.seed);
    c.log_interval = a.log_interval.unwrap_or(c.log_interval);
    c.save_interval = a.save_interval.unwrap_or(c.save_interval);
    Ok(c)
}

pub fn clip_pretrain(a: PretrainArgs) -> Result<i32> {
    let extend = |c: PretrainConfig| Ok(PretrainConfig { iters: a.iters.unwrap_or(c.iters), ..c });
    let (cfg, run, resume) =
        super::run_target(a.resume.as_ref(), a.out.as_ref(), a.force, &fixed_on_resume(&a), extend, || new_config(&a))?;
    cfg.check()?;
    let opts = PretrainOptions {
        device: a.device.device,
        workers: a.workers.unwrap_or_else(famix::data::prefetch::default_workers),
        stop_after: a.stop_after,
        tensorboard: a.tensorboard.clone().map(|d| d.unwrap_or_else(|| RunFolder::new(&run).tensorboard())),
        reset_optimizer: a.reset_optimizer,
    };
    eprintln!(
        "pretraining CLIP on {} → {} ({} steps, batch {}, resolution {}, lr {})",
        cfg.data.display(),
        run.display(),
        cfg.iters,
        cfg.batch,
        cfg.visual.input_resolution,
        cfg.lr
    );
    let s = pretrain(&cfg, &run, resume, &opts, &super::progress::Bars::default())?;
    eprintln!(
        "stopped at step {} of {}; last loss {}; CLIP in {}",
        s.steps,
        cfg.iters,
        s.last_loss.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into()),
        s.clip.display()
    );
    println!("{}", serde_json::to_string(&s)?);
    Ok(0)
}
