//! `famix train`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use famix::clip::OutputStride;
use famix::data::DatasetKind;
use famix::io::sha256_file;
use famix::model::{FreezePolicy, HeadConfig};
use famix::style::mixing::StyleMode;
use famix::train::{check_config, train as run_training};
use famix::train::{RunOptions, TrainConfig, ValSpec};

#[derive(Args)]
pub struct TrainArgs {
    /// CLIP checkpoint whose image tower initialises the backbone
    #[arg(long, required_unless_present = "resume")]
    clip: Option<PathBuf>,
    /// Source dataset
    #[arg(long, value_parser = super::choice::<DatasetKind>(), required_unless_present = "resume")]
    dataset: Option<DatasetKind>,
    /// Source dataset root folder
    #[arg(long, required_unless_present = "resume")]
    data_root: Option<PathBuf>,
    /// Source split [default: train]
    #[arg(long)]
    split: Option<String>,
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
    /// Images per iteration [default: 8]
    #[arg(long)]
    batch: Option<usize>,
    /// Random crop size, divisible by 4 [default: 768]
    #[arg(long)]
    crop: Option<usize>,
    /// Head learning rate; the backbone uses lr × --backbone-lr-mult [default: 0.1]
    #[arg(long)]
    lr: Option<f64>,
    /// Backbone learning rate = lr × this [default: 0.1]
    #[arg(long)]
    backbone_lr_mult: Option<f64>,
    /// SGD momentum [default: 0.9]
    #[arg(long)]
    momentum: Option<f64>,
    /// SGD weight decay [default: 0.0001]
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Poly schedule power: lr·(1 − it/max)^power, floor --min-lr [default: 0.9]
    #[arg(long)]
    poly_power: Option<f64>,
    /// Lower bound of the poly schedule [default: 0.000001]
    #[arg(long)]
    min_lr: Option<f64>,
    /// Label smoothing of the cross-entropy [default: 0.1]
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// Backbone output stride: 8, 16 or 32 [default: 16]
    #[arg(long)]
    output_stride: Option<i64>,
    /// What trains: synthetic (layer4's last block + head; default for GTA5/Synthia), layer4 (default for Cityscapes), none (everything)
    #[arg(long, value_parser = super::choice::<FreezePolicy>())]
    freeze: Option<FreezePolicy>,
    /// Style grid, patches per side [default: 3]
    #[arg(long)]
    grid: Option<usize>,
    /// Beta(a, a) parameter of the mixing weight [default: 0.1]
    #[arg(long)]
    beta: Option<f64>,
    /// Apply sampled styles without mixing (the reference's mix=False)
    #[arg(long, conflicts_with = "no_styles")]
    no_mix: bool,
    /// No style transfer at all: plain minimal fine-tuning
    #[arg(long)]
    no_styles: bool,
    /// The control without language: FAMix's local mixing with per-patch statistics
    /// drawn at random around the batch's own (no style bank)
    #[arg(long, conflicts_with_all = ["no_styles", "no_mix", "styles"])]
    random_styles: bool,
    /// Disable colour jitter and flips
    #[arg(long)]
    no_augment: bool,
    /// Number of classes, 19 = the Cityscapes train ids [default: 19]
    #[arg(long, conflicts_with = "classes")]
    num_classes: Option<i64>,
    /// Class file (JSON: each class's name, prompt words, colour and label value; see the guide's "Your own classes"); the checkpoints record it [default: Cityscapes' 19 classes]
    #[arg(long, value_name = "FILE")]
    classes: Option<PathBuf>,
    /// Validation dataset (e.g. cityscapes) — enables best.* checkpoints
    #[arg(long, value_parser = super::choice::<DatasetKind>())]
    val_dataset: Option<DatasetKind>,
    /// Validation dataset root folder
    #[arg(long)]
    val_root: Option<PathBuf>,
    /// Validation split [default: val]
    #[arg(long)]
    val_split: Option<String>,
    /// Validation ACDC condition
    #[arg(long)]
    val_condition: Option<String>,
    /// Validate on the first N images only
    #[arg(long)]
    val_limit: Option<usize>,
    /// Also evaluate NAME=DATASET:ROOT (its `val` split) at every checkpoint, only to watch it: logged as `monitor_miou`, plotted by `famix report`, never used to choose best (repeatable; ROOT without ':')
    #[arg(long, value_name = "NAME=DATASET:ROOT", value_parser = parse_monitor)]
    monitor: Vec<(String, ValSpec)>,
    /// Validate and checkpoint every N iterations [default: 750]
    #[arg(long)]
    val_interval: Option<u64>,
    /// Log every N iterations [default: 10]
    #[arg(long)]
    log_interval: Option<u64>,
    /// Seed of every random choice: data order, augmentation, styles, dropout, head init [default: 1]
    #[arg(long)]
    seed: Option<u64>,
    /// Mixed precision: bf16 autocast; fp32 is the reference's [default: fp32]
    #[arg(long, value_parser = super::choice::<famix::Precision>())]
    amp: Option<famix::Precision>,
    /// Stop after N iterations in this invocation (checkpointed; continue with --resume)
    #[arg(long)]
    stop_after: Option<u64>,
    /// Start over even if the run folder has checkpoints (with --resume: from iteration 0 with the run's saved settings; the log is rewritten)
    #[arg(long, conflicts_with = "from_best")]
    force: bool,
    /// Also write TensorBoard event files (loss, learning rates, images/s, val mIoU, per-class IoU) to DIR [default: RUN_DIR/tensorboard]
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    tensorboard: Option<Option<PathBuf>>,
    /// Run the plain network instead of the training fast path (frozen layers with folded batch norms, channels-last)
    #[arg(long, alias = "no-fuse")]
    no_fold: bool,
    /// With --resume: continue even when the checkpoint's optimiser state (SGD momentum) is missing or does not fit, with fresh momentum; the run then differs from an uninterrupted one
    #[arg(long, requires = "resume")]
    reset_optimizer: bool,
    /// With --resume: continue from the run's best checkpoint (its weights and iteration, fresh SGD momentum) instead of its latest, e.g. when latest.safetensors was lost; the log records it
    #[arg(long, requires = "resume")]
    from_best: bool,
    #[command(flatten)]
    numerics: super::NumericsArgs,
    #[command(flatten)]
    job: super::DataJobArgs,
}

/// Flags that define what a run trains: given with `--resume`, they are refused
/// (the run's config.json is the one source of its settings; `--iters` may extend it).
fn fixed_on_resume(a: &TrainArgs) -> Vec<&'static str> {
    let given = [
        ("--clip", a.clip.is_some()),
        ("--dataset", a.dataset.is_some()),
        ("--data-root", a.data_root.is_some()),
        ("--split", a.split.is_some()),
        ("--condition", a.condition.is_some()),
        ("--styles", a.styles.is_some()),
        ("--out", a.out.is_some()),
        ("--batch", a.batch.is_some()),
        ("--crop", a.crop.is_some()),
        ("--lr", a.lr.is_some()),
        ("--backbone-lr-mult", a.backbone_lr_mult.is_some()),
        ("--momentum", a.momentum.is_some()),
        ("--weight-decay", a.weight_decay.is_some()),
        ("--poly-power", a.poly_power.is_some()),
        ("--min-lr", a.min_lr.is_some()),
        ("--label-smoothing", a.label_smoothing.is_some()),
        ("--output-stride", a.output_stride.is_some()),
        ("--freeze", a.freeze.is_some()),
        ("--grid", a.grid.is_some()),
        ("--beta", a.beta.is_some()),
        ("--no-mix", a.no_mix),
        ("--no-styles", a.no_styles),
        ("--random-styles", a.random_styles),
        ("--no-augment", a.no_augment),
        ("--num-classes", a.num_classes.is_some()),
        ("--classes", a.classes.is_some()),
        ("--val-dataset", a.val_dataset.is_some()),
        ("--val-root", a.val_root.is_some()),
        ("--val-split", a.val_split.is_some()),
        ("--val-condition", a.val_condition.is_some()),
        ("--val-limit", a.val_limit.is_some()),
        ("--monitor", !a.monitor.is_empty()),
        ("--val-interval", a.val_interval.is_some()),
        ("--seed", a.seed.is_some()),
        ("--amp", a.amp.is_some()),
        ("--log-interval", a.log_interval.is_some()),
        ("--deterministic", a.numerics.deterministic),
        ("--no-tf32", a.numerics.no_tf32),
    ];
    given.iter().filter(|(_, g)| *g).map(|(n, _)| *n).collect()
}

/// A new run's configuration: the reference's (`TrainConfig::reference`) with the
/// flags given on top.
fn new_config(a: &TrainArgs) -> Result<TrainConfig> {
    let (Some(clip), Some(dataset), Some(data_root)) = (a.clip.clone(), a.dataset, a.data_root.clone()) else {
        bail!("--clip, --dataset and --data-root are needed for a new run");
    };
    let style_mode = match (a.no_styles, a.no_mix, a.random_styles) {
        (true, _, _) => StyleMode::NoStyles,
        (_, true, _) => StyleMode::NoMix,
        (_, _, true) => StyleMode::RandomMix,
        _ => StyleMode::Mix,
    };
    if style_mode.needs_bank() && a.styles.is_none() {
        bail!("--styles BANK is required (mine one with `famix mine-styles`), or pass --no-styles or --random-styles");
    }
    let mut c = TrainConfig::reference(clip.clone(), sha256_file(&clip)?, dataset, data_root, a.styles.clone());
    c.style_mode = style_mode;
    c.val = match (a.val_dataset, &a.val_root) {
        (Some(d), Some(r)) => Some(ValSpec {
            dataset: d,
            data_root: r.clone(),
            split: a.val_split.clone().unwrap_or_else(|| "val".into()),
            condition: a.val_condition.clone(),
            limit: a.val_limit,
        }),
        (None, None) => None,
        _ => bail!("--val-dataset and --val-root go together"),
    };
    c.monitor = a.monitor.iter().cloned().collect();
    if let Some(n) = a.num_classes {
        c.head = HeadConfig::reference(n);
    }
    if let Some(p) = &a.classes {
        c.set_classes(famix::data::classes::ClassSet::from_file(p)?);
    }
    if let Some(os) = a.output_stride {
        c.output_stride = OutputStride::from_int(os)?;
    }
    c.augment = !a.no_augment;
    c.amp_bf16 = a.amp == Some(famix::Precision::Bf16);
    c.numerics = a.numerics.numerics();
    override_values(a, &mut c);
    Ok(c)
}

/// `--monitor NAME=DATASET:ROOT`.
fn parse_monitor(s: &str) -> Result<(String, ValSpec), String> {
    let (name, rest) = s.split_once('=').ok_or("expected NAME=DATASET:ROOT, e.g. dusk=folder:data/dusk")?;
    let (kind, root) = rest.split_once(':').ok_or("expected NAME=DATASET:ROOT (DATASET and ROOT joined by ':')")?;
    use famix::Named;
    let dataset = DatasetKind::parse(kind).ok_or_else(|| format!("unknown dataset '{kind}' (one of {})", DatasetKind::names()))?;
    Ok((name.to_string(), ValSpec::val_split(dataset, root.into())))
}

/// Copies every given value flag onto the configuration.
fn override_values(a: &TrainArgs, c: &mut TrainConfig) {
    fn set<T: Clone>(field: &mut T, flag: &Option<T>) {
        if let Some(v) = flag {
            *field = v.clone();
        }
    }
    set(&mut c.split, &a.split);
    set(&mut c.condition, &a.condition.clone().map(Some));
    set(&mut c.iters, &a.iters);
    set(&mut c.batch, &a.batch);
    set(&mut c.crop, &a.crop);
    set(&mut c.lr, &a.lr);
    set(&mut c.backbone_lr_mult, &a.backbone_lr_mult);
    set(&mut c.momentum, &a.momentum);
    set(&mut c.weight_decay, &a.weight_decay);
    set(&mut c.poly_power, &a.poly_power);
    set(&mut c.min_lr, &a.min_lr);
    set(&mut c.label_smoothing, &a.label_smoothing);
    set(&mut c.freeze, &a.freeze);
    set(&mut c.grid, &a.grid);
    set(&mut c.beta, &a.beta);
    set(&mut c.val_interval, &a.val_interval);
    set(&mut c.log_interval, &a.log_interval);
    set(&mut c.seed, &a.seed);
}

pub fn train(a: TrainArgs) -> Result<i32> {
    let extend = |c: &mut TrainConfig| c.iters = a.iters.unwrap_or(c.iters);
    let (cfg, run, resume) =
        super::run_target(a.resume.as_ref(), a.out.as_ref(), a.force, &fixed_on_resume(&a), extend, || new_config(&a))?;
    check_config(&cfg)?;
    // The library applies the run's numerics; the binary adds cuBLAS's environment setting.
    super::cublas_workspace_for(cfg.numerics);
    let tensorboard = a.tensorboard.clone().map(|d| d.unwrap_or_else(|| run.join("tensorboard")));
    let opts = RunOptions {
        device: a.job.device.device,
        workers: a.job.workers(),
        stop_after: a.stop_after,
        skip_bad: a.job.skip_bad,
        tensorboard,
        no_fold: a.no_fold,
        reset_optimizer: a.reset_optimizer,
        from_best: a.from_best,
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
    let s = run_training(&cfg, &run, resume, &opts, &super::progress::Bars::default())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn monitor_flags_name_a_dataset_and_its_root() {
        let (name, v) = parse_monitor("dusk=folder:data/dusk").unwrap();
        assert_eq!(
            (name.as_str(), v.dataset, v.data_root.as_path(), v.split.as_str()),
            ("dusk", DatasetKind::Folder, Path::new("data/dusk"), "val")
        );
        assert!(parse_monitor("dusk").unwrap_err().contains("NAME=DATASET:ROOT"));
        assert!(parse_monitor("dusk=data/dusk").unwrap_err().contains("joined by ':'"));
        assert!(parse_monitor("dusk=nosuch:data").unwrap_err().contains("unknown dataset 'nosuch'"));
    }
}
