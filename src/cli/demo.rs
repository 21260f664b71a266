//! `famix demo`: the whole method on a built-in synthetic two-domain dataset and a
//! tiny random CLIP — mine styles, train with style mixing, evaluate on source and
//! (unseen) target, write predictions — in under a minute on a CPU.

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
use famix::io::sha256_file;
use famix::model::{FreezePolicy, HeadConfig};
use famix::render::write_outputs;
use famix::style::mining::{mine, run_identity, MineSettings};
use famix::style::prompts::PromptSet;
use famix::style::PinConfig;
use famix::train::trainer::{initial_model, latest_path, train};
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
    run: PathBuf,
    predictions: PathBuf,
}

impl Paths {
    fn new(out: &Path) -> Self {
        Paths {
            src: out.join("data/source"),
            tgt: out.join("data/target"),
            clip: out.join("clip_tiny.safetensors"),
            bank: out.join("styles.safetensors"),
            run: out.join("run"),
            predictions: out.join("predictions"),
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
    let pin = PinConfig { iters: 10, ..Default::default() };
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

fn train_config(a: &DemoArgs, p: &Paths) -> Result<TrainConfig> {
    let reference = TrainConfig::reference(p.clip.clone(), sha256_file(&p.clip)?, DatasetKind::Folder, p.src.clone(), Some(p.bank.clone()));
    Ok(TrainConfig {
        iters: a.iters,
        batch: 4,
        crop: 72,
        freeze: FreezePolicy::Synthetic,
        head: HeadConfig::tiny(19),
        val: Some(ValSpec { dataset: DatasetKind::Folder, data_root: p.tgt.clone(), split: "val".into(), condition: None, limit: None }),
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

fn write_predictions(model: &Segmenter, p: &Paths) -> Result<()> {
    let tgt_val = Dataset::open(DatasetKind::Folder, &p.tgt, "val", None)?;
    for i in 0..tgt_val.len().min(4) {
        let (img, _) = tgt_val.load(i)?;
        let pred = model.predict(&img, &PredictOptions::default())?;
        write_outputs(&p.predictions.join(format!("{i:04}")), &img, &pred.train_ids, &model.config.palette, true)?;
    }
    Ok(())
}

pub fn demo(a: DemoArgs) -> Result<i32> {
    let device = a.device.device;
    let t0 = std::time::Instant::now();
    std::fs::create_dir_all(&a.out)?;
    let p = Paths::new(&a.out);
    let step = |s: &str| eprintln!("[{:6.1} s] {s}", t0.elapsed().as_secs_f64());

    step("1/6 generating the synthetic street scenes (source: day, target: night)");
    write_dataset(&p.src, &DomainStyle::day(), &[("train", 48), ("val", 12)], 128, 96, a.seed)?;
    write_dataset(&p.tgt, &DomainStyle::night(), &[("val", 12)], 128, 96, a.seed + 1)?;

    step("2/6 building a tiny random-weight CLIP (RN-style image tower + text tower)");
    write_tiny_clip(&p.clip, a.seed)?;

    step("3/6 mining class styles from text prompts (patch-wise PIN)");
    eprintln!("           {}", mine_styles(&a, &p)?);

    step("4/6 training with local style mixing");
    let _ = std::fs::remove_dir_all(&p.run);
    let cfg = train_config(&a, &p)?;
    let untrained = initial_model(&cfg, device)?;
    let opts = RunOptions { device, workers: default_workers(), stop_after: None, skip_bad: false, tensorboard: None };
    let summary = train(&cfg, &p.run, false, &opts, &Bars::default())?;

    step("5/6 evaluating the untrained and the trained model on source and target");
    let trained = Segmenter::load(latest_path(&p.run), device)?;
    let rows = [("untrained", source_target_miou(&untrained, &p)?), ("trained", source_target_miou(&trained, &p)?)];

    step("6/6 writing target predictions");
    write_predictions(&trained, &p)?;

    println!("\nfamix demo finished in {:.1} s", t0.elapsed().as_secs_f64());
    println!("{:<10} {:>14} {:>14}", "model", "source mIoU %", "target mIoU %");
    for (n, (s, t)) in &rows {
        println!("{n:<10} {:>14.2} {:>14.2}", s * 100.0, t * 100.0);
    }
    println!(
        "\n  data:        {}\n  CLIP:        {}\n  style bank:  {}\n  run:         {} (best val mIoU {})\n  predictions: {}",
        a.out.join("data").display(),
        p.clip.display(),
        p.bank.display(),
        p.run.display(),
        summary.best_miou.map(|m| format!("{:.2} %", m * 100.0)).unwrap_or_else(|| "-".into()),
        p.predictions.display()
    );
    println!("\nNext: famix eval --checkpoint {} --dataset folder --data-root {}", latest_path(&p.run).display(), p.tgt.display());
    Ok(0)
}
