//! `famix train`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::clip::download::sha256_file;
use crate::clip::OutputStride;
use crate::data::DatasetKind;
use crate::device::parse_device;
use crate::model::{FreezePolicy, HeadConfig};
use crate::style::mixing::StyleMode;
use crate::train::trainer::{config_path, train as run_training};
use crate::train::{RunOptions, TrainConfig, ValSpec};

#[derive(Args)]
pub struct TrainArgs {
    /// CLIP checkpoint whose image tower initialises the backbone
    #[arg(long, required_unless_present = "resume")]
    clip: Option<PathBuf>,
    /// Source dataset
    #[arg(long, value_enum, required_unless_present = "resume")]
    dataset: Option<DatasetKind>,
    /// Source dataset root folder
    #[arg(long, required_unless_present = "resume")]
    data_root: Option<PathBuf>,
    /// Source split
    #[arg(long, default_value = "train")]
    split: String,
    /// ACDC condition, when training on ACDC
    #[arg(long)]
    condition: Option<String>,
    /// Style bank from `famix mine-styles`
    #[arg(long)]
    styles: Option<PathBuf>,
    /// Run folder: config.json, train_log.jsonl, latest.* and best.* checkpoints
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its latest checkpoint (settings come from it)
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Total iterations (with --resume: extends the run)
    #[arg(long)]
    iters: Option<u64>,
    /// Images per iteration
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Random crop size (divisible by 4)
    #[arg(long, default_value_t = 768)]
    crop: usize,
    /// Head learning rate (the backbone uses lr × --backbone-lr-mult)
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// Backbone learning rate = lr × this
    #[arg(long, default_value_t = 0.1)]
    backbone_lr_mult: f64,
    /// SGD momentum
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// SGD weight decay
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    /// Poly schedule power (lr·(1 − it/max)^power, floor --min-lr)
    #[arg(long, default_value_t = 0.9)]
    poly_power: f64,
    /// Lower bound of the poly schedule
    #[arg(long, default_value_t = 1e-6)]
    min_lr: f64,
    /// Label smoothing of the cross-entropy
    #[arg(long, default_value_t = 0.1)]
    label_smoothing: f64,
    /// Backbone output stride: 8, 16 or 32
    #[arg(long, default_value_t = 16)]
    output_stride: i64,
    /// What trains: synthetic (layer4's last block + head; default for GTA5/Synthia), layer4 (default for Cityscapes), none (everything)
    #[arg(long, value_enum)]
    freeze: Option<FreezePolicy>,
    /// Style grid (patches per side)
    #[arg(long, default_value_t = 3)]
    grid: usize,
    /// Beta(a, a) parameter of the mixing weight
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// Apply sampled styles without mixing (the reference's mix=False)
    #[arg(long, conflicts_with = "no_styles")]
    no_mix: bool,
    /// No style transfer at all: plain minimal fine-tuning
    #[arg(long)]
    no_styles: bool,
    /// Disable colour jitter and flips
    #[arg(long)]
    no_augment: bool,
    /// Number of classes (19: the Cityscapes train ids)
    #[arg(long, default_value_t = 19)]
    num_classes: i64,
    /// Validation dataset (e.g. cityscapes) — enables best.* checkpoints
    #[arg(long, value_enum)]
    val_dataset: Option<DatasetKind>,
    /// Validation dataset root folder
    #[arg(long)]
    val_root: Option<PathBuf>,
    /// Validation split
    #[arg(long, default_value = "val")]
    val_split: String,
    /// Validation ACDC condition
    #[arg(long)]
    val_condition: Option<String>,
    /// Validate on the first N images only
    #[arg(long)]
    val_limit: Option<usize>,
    /// Validate and checkpoint every N iterations
    #[arg(long, default_value_t = 750)]
    val_interval: u64,
    /// Log every N iterations
    #[arg(long, default_value_t = 10)]
    log_interval: u64,
    /// Seed of every random choice (data order, augmentation, styles, dropout, head init)
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Mixed precision: bf16 autocast (default fp32, as the reference)
    #[arg(long, value_parser = ["fp32", "bf16"], default_value = "fp32")]
    amp: String,
    /// Stop after N iterations in this invocation (checkpointed; continue with --resume)
    #[arg(long)]
    stop_after: Option<u64>,
    /// Start over even if the run folder has checkpoints
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    job: super::DataJobArgs,
}

pub fn train(a: TrainArgs) -> Result<i32> {
    let device = parse_device(&a.job.device)?;
    let opts = RunOptions {
        device,
        workers: a.job.workers(),
        progress: true,
        stop_after: a.stop_after,
        skip_bad: a.job.skip_bad,
    };
    let (cfg, run, resume) = match &a.resume {
        Some(run) => {
            let p = config_path(run);
            let text = std::fs::read_to_string(&p).with_context(|| format!("{} is not a famix run folder (no config.json)", run.display()))?;
            let mut cfg: TrainConfig = serde_json::from_str(&text).with_context(|| format!("{}: unreadable", p.display()))?;
            if let Some(i) = a.iters {
                cfg.iters = i;
            }
            (cfg, run.clone(), true)
        }
        None => {
            let out = a.out.clone().unwrap();
            if crate::train::trainer::latest_path(&out).exists() && !a.force {
                bail!("{} already holds a run: continue it with --resume {}, or pass --force to start over", out.display(), out.display());
            }
            let clip = a.clip.clone().unwrap();
            let dataset = a.dataset.unwrap();
            let style_mode = if a.no_styles {
                StyleMode::NoStyles
            } else if a.no_mix {
                StyleMode::NoMix
            } else {
                StyleMode::Mix
            };
            if style_mode != StyleMode::NoStyles && a.styles.is_none() {
                bail!("--styles BANK is required (mine one with `famix mine-styles`), or pass --no-styles");
            }
            let val = match (a.val_dataset, &a.val_root) {
                (Some(d), Some(r)) => Some(ValSpec { dataset: d, data_root: r.clone(), split: a.val_split.clone(), condition: a.val_condition.clone(), limit: a.val_limit }),
                (None, None) => None,
                _ => bail!("--val-dataset and --val-root go together"),
            };
            let cfg = TrainConfig {
                clip_sha256: sha256_file(&clip)?,
                clip,
                dataset,
                data_root: a.data_root.clone().unwrap(),
                split: a.split.clone(),
                condition: a.condition.clone(),
                styles: a.styles.clone(),
                style_mode,
                iters: a.iters.unwrap_or(40_000),
                batch: a.batch,
                crop: a.crop,
                lr: a.lr,
                backbone_lr_mult: a.backbone_lr_mult,
                momentum: a.momentum,
                weight_decay: a.weight_decay,
                poly_power: a.poly_power,
                min_lr: a.min_lr,
                label_smoothing: a.label_smoothing,
                output_stride: OutputStride::from_int(a.output_stride)?,
                freeze: a.freeze.unwrap_or_else(|| TrainConfig::default_freeze(dataset)),
                grid: a.grid,
                beta: a.beta,
                augment: !a.no_augment,
                head: HeadConfig::reference(a.num_classes),
                val,
                val_interval: a.val_interval,
                log_interval: a.log_interval,
                seed: a.seed,
                amp_bf16: a.amp == "bf16",
            };
            (cfg, out, false)
        }
    };
    eprintln!(
        "training {} → {} ({} iterations, batch {}, crop {}, {:?}, freeze {})",
        cfg.dataset.name(),
        run.display(),
        cfg.iters,
        cfg.batch,
        cfg.crop,
        cfg.style_mode,
        cfg.freeze.name()
    );
    let s = run_training(&cfg, &run, resume, &opts)?;
    eprintln!(
        "stopped at iteration {} of {}; last loss {}; best val mIoU {}; checkpoints in {}",
        s.steps,
        cfg.iters,
        s.last_loss.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into()),
        s.best_miou.map(|m| format!("{:.2} %", m * 100.0)).unwrap_or_else(|| "-".into()),
        run.display()
    );
    println!("{}", serde_json::to_string(&s)?);
    Ok(0)
}
