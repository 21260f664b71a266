//! `famix demo`: the paper's comparison on a built-in synthetic two-domain dataset
//! (source: day scenes; unseen target: night scenes, darker, blue-tinted and noisier)
//! with a tiny random CLIP, in about a minute on a CPU: mine styles, then train the
//! same segmenter on the same data, iterations and seed twice — (a) minimal
//! fine-tuning without styles (the baseline) and (b) FAMix (mined styles, local style
//! mixing) — evaluate both on source and target, and write a report per run and a
//! side-by-side picture (target image | ground truth | baseline | FAMix).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use tch::Device;

use famix::clip::{Clip, OutputStride, ResNetConfig, TextConfig};
use famix::data::prefetch::default_workers;
use famix::data::synthetic::{write_dataset, DomainStyle};
use famix::data::{Dataset, DatasetKind};
use famix::eval::{evaluate, EvalOptions};
use famix::imageops::Filter;
use famix::io::sha256_file;
use famix::model::{FreezePolicy, HeadConfig};
use famix::render::{colorize, write_outputs};
use famix::report::{panel_row, vstack, write_report, ReportOptions};
use famix::style::mining::{mine, run_identity, MineSettings};
use famix::style::prompts::PromptSet;
use famix::style::PinConfig;
use famix::train::trainer::{latest_path, train};
use famix::train::{RunOptions, TrainConfig, ValSpec};
use famix::{PredictOptions, Segmenter, Silent};

use super::progress::Bars;

#[derive(Args)]
pub struct DemoArgs {
    /// Output folder (data, CLIP, style bank, run, predictions)
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// Training iterations
    #[arg(long, default_value_t = 600)]
    iters: u64,
    /// Mining batches
    #[arg(long, default_value_t = 6)]
    mine_batches: u64,
    /// PIN optimisation steps per mined style
    #[arg(long, default_value_t = 10)]
    pin_iters: usize,
    /// Seed for data, weights and training
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// The files the demo makes.
struct Paths {
    src: PathBuf,
    tgt: PathBuf,
    clip: PathBuf,
    bank: PathBuf,
    baseline: PathBuf,
    run: PathBuf,
    predictions: PathBuf,
    comparison: PathBuf,
}

impl Paths {
    fn new(out: &Path) -> Self {
        Paths {
            src: out.join("data/source"),
            tgt: out.join("data/target"),
            clip: out.join("clip_tiny.safetensors"),
            bank: out.join("styles.safetensors"),
            baseline: out.join("run-baseline"),
            run: out.join("run"),
            predictions: out.join("predictions"),
            comparison: out.join("comparison.png"),
        }
    }
}

/// A random-weight CLIP of the tiny architecture, saved as safetensors.
fn write_tiny_clip(path: &Path, seed: u64) -> Result<()> {
    tch::manual_seed(seed as i64);
    let clip = Clip::random(&ResNetConfig::tiny(), Some(&TextConfig::tiny()), Device::Cpu, OutputStride::Os32);
    let mut vars: Vec<(String, tch::Tensor)> = clip.vs.variables().into_iter().collect();
    vars.sort_by(|x, y| x.0.cmp(&y.0));
    famix::io::archive::save_safetensors(path, &vars, None)?;
    Ok(())
}

fn mine_styles(a: &DemoArgs, p: &Paths) -> Result<String> {
    let clip = Clip::load(&p.clip, a.device.device, OutputStride::Os32)?;
    let prompts = PromptSet::default();
    let pin = PinConfig { iters: a.pin_iters, ..Default::default() };
    let settings = MineSettings {
        batch: 4,
        crop: 72,
        seed: a.seed,
        limit: Some(a.mine_batches),
        group: 2,
        save_every: 100,
        ..MineSettings::reference(default_workers())
    };
    let src_train = Arc::new(Dataset::open(DatasetKind::Folder, &p.src, "train", None)?);
    let _ = std::fs::remove_file(&p.bank);
    let identity = run_identity(&sha256_file(&p.clip)?, &src_train, &settings, &pin, &prompts);
    let bank = mine(&clip, src_train, &prompts, &pin, &settings, &p.bank, identity, false, &Bars::default())?;
    Ok(format!("{} styles for {} classes", bank.total(), bank.entries.len()))
}

/// The demo's run: FAMix with the mined bank, or (`styles = None`) the baseline
/// without styles; everything else identical.
fn train_config(a: &DemoArgs, p: &Paths, styles: Option<PathBuf>) -> Result<TrainConfig> {
    let reference = TrainConfig::reference(p.clip.clone(), sha256_file(&p.clip)?, DatasetKind::Folder, p.src.clone(), styles);
    Ok(TrainConfig {
        iters: a.iters,
        batch: 4,
        crop: 72,
        freeze: FreezePolicy::Synthetic,
        head: HeadConfig::tiny(19),
        // Validation on the source's val split: a domain-generalisation run never sees
        // the target, not even to pick a checkpoint.
        val: Some(ValSpec { dataset: DatasetKind::Folder, data_root: p.src.clone(), split: "val".into(), condition: None, limit: None }),
        val_interval: (a.iters / 3).max(1),
        seed: a.seed,
        ..reference
    })
}

/// (source mIoU, target mIoU) of a model on the two validation splits.
fn source_target_miou(model: &Segmenter, p: &Paths) -> Result<(f64, f64)> {
    let e = EvalOptions::default();
    let s = evaluate(model, &Dataset::open(DatasetKind::Folder, &p.src, "val", None)?, &e, &Silent)?.metrics.miou;
    let t = evaluate(model, &Dataset::open(DatasetKind::Folder, &p.tgt, "val", None)?, &e, &Silent)?.metrics.miou;
    Ok((s, t))
}

/// Target predictions of FAMix as files, and the side-by-side picture
/// (target image | ground truth | baseline | FAMix) of the first target images.
fn write_predictions(baseline: &Segmenter, famix_model: &Segmenter, p: &Paths) -> Result<()> {
    let tgt_val = Dataset::open(DatasetKind::Folder, &p.tgt, "val", None)?;
    let palette = &famix_model.config.palette;
    let mut rows = Vec::new();
    for i in 0..tgt_val.len().min(4) {
        let (img, lbl) = tgt_val.load(i)?;
        let ours = famix_model.predict(&img, &PredictOptions::default())?.train_ids;
        let base = baseline.predict(&img, &PredictOptions::default())?.train_ids;
        write_outputs(&p.predictions.join(format!("{i:04}")), &img, &ours, palette, true)?;
        let (gt, base, ours) = (colorize(&lbl, palette), colorize(&base, palette), colorize(&ours, palette));
        rows.push(panel_row(&[(&img, Filter::Bilinear), (&gt, Filter::Nearest), (&base, Filter::Nearest), (&ours, Filter::Nearest)], 256));
    }
    vstack(&rows, 4).save_png(&p.comparison)?;
    Ok(())
}

/// Trains one of the demo's two runs into `run` (started over).
fn train_run(a: &DemoArgs, p: &Paths, run: &Path, styles: Option<PathBuf>) -> Result<Segmenter> {
    let _ = std::fs::remove_dir_all(run);
    let cfg = train_config(a, p, styles)?;
    let opts = RunOptions {
        device: a.device.device,
        workers: default_workers(),
        stop_after: None,
        skip_bad: false,
        tensorboard: None,
        no_fuse: false,
    };
    train(&cfg, run, false, &opts, &Bars::default())?;
    let report = write_report(run, &run.join("report"), &ReportOptions { samples: 4, device: a.device.device })?;
    for n in &report.notes {
        eprintln!("           note: {n}");
    }
    // The final weights, as the reference evaluates them.
    Ok(Segmenter::load(latest_path(run), a.device.device)?)
}

pub fn demo(a: DemoArgs) -> Result<i32> {
    let t0 = std::time::Instant::now();
    std::fs::create_dir_all(&a.out)?;
    let p = Paths::new(&a.out);
    let step = |s: &str| eprintln!("[{:6.1} s] {s}", t0.elapsed().as_secs_f64());

    step("1/6 generating the synthetic street scenes (source: day, unseen target: night)");
    write_dataset(&p.src, &DomainStyle::day(), &[("train", 48), ("val", 12)], 128, 96, a.seed)?;
    write_dataset(&p.tgt, &DomainStyle::night(), &[("val", 48)], 128, 96, a.seed + 1)?;

    step("2/6 building a tiny random-weight CLIP (RN-style image tower + text tower)");
    write_tiny_clip(&p.clip, a.seed)?;

    step("3/6 mining class styles from text prompts (patch-wise PIN)");
    eprintln!("           {}", mine_styles(&a, &p)?);

    step("4/6 training (a) the baseline: minimal fine-tuning without styles");
    let baseline = train_run(&a, &p, &p.baseline, None)?;
    step("5/6 training (b) FAMix: the same, with mined styles and local style mixing");
    let ours = train_run(&a, &p, &p.run, Some(p.bank.clone()))?;

    step("6/6 evaluating both on source and target; writing predictions and the comparison");
    let rows = [("baseline", source_target_miou(&baseline, &p)?), ("FAMix", source_target_miou(&ours, &p)?)];
    write_predictions(&baseline, &ours, &p)?;

    println!("\nfamix demo finished in {:.1} s ({} iterations per run, seed {})", t0.elapsed().as_secs_f64(), a.iters, a.seed);
    println!("{:<10} {:>14} {:>22}", "model", "source mIoU %", "unseen target mIoU %");
    for (n, (s, t)) in &rows {
        println!("{n:<10} {:>14.2} {:>22.2}", s * 100.0, t * 100.0);
    }
    println!(
        "\n  data:        {}\n  CLIP:        {}\n  style bank:  {}\n  runs:        {} (baseline), {} (FAMix); reports in RUN/report/index.html\n  comparison:  {} (target image | ground truth | baseline | FAMix)\n  predictions: {}",
        a.out.join("data").display(),
        p.clip.display(),
        p.bank.display(),
        p.baseline.display(),
        p.run.display(),
        p.comparison.display(),
        p.predictions.display()
    );
    println!("\nNext: famix eval --checkpoint {} --dataset folder --data-root {}", latest_path(&p.run).display(), p.tgt.display());
    Ok(0)
}
