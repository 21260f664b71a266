//! `famix demo`: the whole method on a built-in synthetic two-domain dataset and a
//! tiny random CLIP — mine styles, train with style mixing, evaluate on source and
//! (unseen) target, write predictions — in a few minutes on a CPU.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;

use crate::clip::download::sha256_file;
use crate::clip::{Clip, OutputStride, ResNetConfig, TextConfig};
use crate::data::prefetch::default_workers;
use crate::data::synthetic::{write_dataset, DomainStyle};
use crate::data::{Dataset, DatasetKind};
use crate::device::parse_device;
use crate::eval::{evaluate, EvalOptions};
use crate::model::checkpoint;
use crate::model::{FreezePolicy, HeadConfig};
use crate::style::mining::{mine, run_identity, MineSettings, PinConfig};
use crate::style::prompts::PromptSet;
use crate::train::trainer::{initial_model, latest_path, train};
use crate::train::{RunOptions, TrainConfig, ValSpec};

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
    #[arg(long, default_value = "auto", help = super::DEVICE_HELP)]
    device: String,
}

pub fn demo(a: DemoArgs) -> Result<i32> {
    let device = parse_device(&a.device)?;
    let t0 = std::time::Instant::now();
    let out = &a.out;
    std::fs::create_dir_all(out)?;
    let step = |s: &str| eprintln!("[{:6.1} s] {s}", t0.elapsed().as_secs_f64());

    step("1/6 generating the synthetic street scenes (source: day, target: night)");
    let (src, tgt) = (out.join("data/source"), out.join("data/target"));
    write_dataset(&src, &DomainStyle::day(), &[("train", 48), ("val", 12)], 128, 96, a.seed)?;
    write_dataset(&tgt, &DomainStyle::night(), &[("val", 12)], 128, 96, a.seed + 1)?;

    step("2/6 building a tiny random-weight CLIP (RN-style image tower + text tower)");
    tch::manual_seed(a.seed as i64);
    let visual = ResNetConfig { layers: [1, 1, 2, 2], width: 16, output_dim: Some(64), heads: 8, input_resolution: 224 };
    let text = TextConfig { vocab_size: 49408, context_length: 77, width: 64, heads: 1, layers: 2, embed_dim: 64 };
    let clip_path = out.join("clip_tiny.safetensors");
    {
        let clip = Clip::random(&visual, Some(&text), tch::Device::Cpu, OutputStride::Os32);
        let mut vars: Vec<(String, tch::Tensor)> = clip.vs.variables().into_iter().collect();
        vars.sort_by(|x, y| x.0.cmp(&y.0));
        crate::io::archive::save_safetensors(&clip_path, &vars, None)?;
    }
    let clip = Clip::load(&clip_path, device, OutputStride::Os32)?;

    step("3/6 mining class styles from text prompts (patch-wise PIN)");
    let prompts = PromptSet::default();
    let pin = PinConfig { iters: 10, ..Default::default() };
    let settings = MineSettings {
        batch: 4,
        crop: 72,
        seed: a.seed,
        limit: Some(a.mine_batches),
        group: 2,
        save_every: 100,
        description: None,
        workers: default_workers(),
        skip_bad: false,
    };
    let src_train = Arc::new(Dataset::open(DatasetKind::Folder, &src, "train", None)?);
    let bank_path = out.join("styles.safetensors");
    let _ = std::fs::remove_file(&bank_path);
    let identity = run_identity(&sha256_file(&clip_path)?, &src_train, &settings, &pin, &prompts);
    let bank = mine(&clip, src_train, &prompts, &pin, &settings, &bank_path, identity, false, true)?;
    eprintln!("           {} styles for {} classes", bank.total(), bank.entries.len());
    drop(clip);

    step("4/6 training with local style mixing");
    let run = out.join("run");
    let _ = std::fs::remove_dir_all(&run);
    let cfg = TrainConfig {
        iters: a.iters,
        batch: 4,
        crop: 72,
        freeze: FreezePolicy::Synthetic,
        head: HeadConfig { num_classes: 19, aspp_channels: 64, low_proj_channels: 16, dropout: 0.1 },
        val: Some(ValSpec { dataset: DatasetKind::Folder, data_root: tgt.clone(), split: "val".into(), condition: None, limit: None }),
        val_interval: (a.iters / 3).max(1),
        seed: a.seed,
        ..TrainConfig::reference(clip_path.clone(), sha256_file(&clip_path)?, DatasetKind::Folder, src.clone(), Some(bank_path.clone()))
    };
    let untrained = initial_model(&cfg, device)?;
    let summary = train(&cfg, &run, false, &RunOptions { device, workers: default_workers(), progress: true, stop_after: None, skip_bad: false })?;

    step("5/6 evaluating the untrained and the trained model on source and target");
    let trained = checkpoint::load(&latest_path(&run), device, None)?.model;
    let src_val = Dataset::open(DatasetKind::Folder, &src, "val", None)?;
    let tgt_val = Dataset::open(DatasetKind::Folder, &tgt, "val", None)?;
    let e = EvalOptions::default();
    let mut rows = Vec::new();
    for (name, model) in [("untrained", &untrained), ("trained", &trained)] {
        let s = evaluate(model, &src_val, &e)?.metrics.miou;
        let t = evaluate(model, &tgt_val, &e)?.metrics.miou;
        rows.push((name, s, t));
    }

    step("6/6 writing target predictions");
    let pred_dir = out.join("predictions");
    let palette = trained.config.palette.clone();
    for i in 0..tgt_val.len().min(4) {
        let (img, _) = tgt_val.load(i)?;
        let x = crate::clip::preprocess::normalize_u8(&img.to_tensor_u8().unsqueeze(0), device);
        let pred = trained.predict_logits(&x, 1.0, false).argmax(1, false).to_kind(tch::Kind::Uint8).get(0);
        let labels = crate::imageops::Image8::from_tensor_u8(&pred)?;
        super::predict::write_outputs(&pred_dir.join(format!("{i:04}")), &img, &labels, &palette, true)?;
    }

    println!("\nfamix demo finished in {:.1} s", t0.elapsed().as_secs_f64());
    println!("{:<10} {:>14} {:>14}", "model", "source mIoU %", "target mIoU %");
    for (n, s, t) in &rows {
        println!("{n:<10} {:>14.2} {:>14.2}", s * 100.0, t * 100.0);
    }
    println!(
        "\n  data:        {}\n  CLIP:        {}\n  style bank:  {}\n  run:         {} (best val mIoU {})\n  predictions: {}",
        out.join("data").display(),
        clip_path.display(),
        bank_path.display(),
        run.display(),
        summary.best_miou.map(|m| format!("{:.2} %", m * 100.0)).unwrap_or_else(|| "-".into()),
        pred_dir.display()
    );
    println!("\nNext: famix eval --checkpoint {} --dataset folder --data-root {}", latest_path(&run).display(), tgt.display());
    Ok(0)
}
