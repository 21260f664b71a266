//! Evaluation of a segmenter on a dataset split (SPEC §5).
pub mod metrics;

use anyhow::{Context, Result};
use serde::Serialize;
use tch::Kind;

use crate::clip::preprocess::normalize_u8;
use crate::data::augment::eval_transform;
use crate::data::prefetch::{default_workers, ordered_map};
use crate::data::Dataset;
use crate::imageops::Image8;
use crate::model::Segmenter;
use metrics::{Confusion, Metrics};

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub scale: f64,
    pub ensemble: bool,
    /// Skip (and report) unreadable samples instead of failing.
    pub skip_bad: bool,
    /// Evaluate at most this many images (quick checks).
    pub limit: Option<usize>,
    pub progress: bool,
    pub amp_bf16: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { scale: 1.0, ensemble: false, skip_bad: false, limit: None, progress: false, amp_bf16: false }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub path: String,
    pub error: String,
}

pub struct EvalReport {
    pub metrics: Metrics,
    pub images: usize,
    pub skipped: Vec<Skipped>,
}

pub fn evaluate(model: &Segmenter, ds: &Dataset, opts: &EvalOptions) -> Result<EvalReport> {
    let device = model.device();
    let n = opts.limit.map(|l| l.min(ds.len())).unwrap_or(ds.len());
    let ds = std::sync::Arc::new(ds.clone());
    let transform = ds.kind.eval_transform();
    let ds2 = ds.clone();
    let items = ordered_map(n, default_workers(), 8, move |i| -> Result<(Image8, Image8)> {
        let (img, lbl) = ds2.load(i)?;
        Ok(eval_transform(img, lbl, transform))
    });
    let classes = model.config.head.num_classes as usize;
    let mut conf = Confusion::new(classes, device);
    let bar = if opts.progress { crate::cli::progress_bar(n as u64, "eval") } else { indicatif::ProgressBar::hidden() };
    let _amp = crate::device::Autocast::new(device, opts.amp_bf16);
    let mut images = 0;
    let mut skipped = Vec::new();
    for (i, item) in items.enumerate() {
        let (img, lbl) = match item {
            Ok(v) => v,
            Err(e) if opts.skip_bad => {
                bar.suspend(|| eprintln!("skipping {}: {e:#}", ds.samples[i].image.display()));
                skipped.push(Skipped { path: ds.samples[i].image.display().to_string(), error: format!("{e:#}") });
                bar.inc(1);
                continue;
            }
            Err(e) => return Err(e).context("evaluation stopped (use --skip-bad to skip unreadable samples)"),
        };
        let x = normalize_u8(&img.to_tensor_u8().unsqueeze(0), device);
        let pred = model.predict_logits(&x, opts.scale, opts.ensemble).argmax(1, false);
        conf.add(&lbl.to_tensor_u8().to_kind(Kind::Int64), &pred);
        images += 1;
        bar.inc(1);
        if opts.progress && (images % 10 == 0 || images == n) {
            bar.set_prefix(format!("mIoU {:.2}", conf.metrics().miou * 100.0));
        }
    }
    bar.finish_and_clear();
    Ok(EvalReport { metrics: conf.metrics(), images, skipped })
}
