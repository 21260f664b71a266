//! Evaluation of a segmenter on a dataset split (docs/src/design.md §5): the dataset's
//! evaluation transform, the test-time options of [`PredictOptions`], and a streaming
//! confusion matrix on the model's device.
pub mod metrics;
pub mod protocol;
pub mod table;

use crate::data::augment::eval_transform;
use crate::data::prefetch::{default_workers, ordered_map};
use crate::data::{Dataset, Skipped};
use crate::error::{fail, Context, Result};
use crate::imageops::Image8;
use crate::model::{PredictOptions, Segmenter};
use crate::progress::{Progress, Unit};
use metrics::{Confusion, Metrics};

/// How to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Test-time options (scale, ensemble, precision).
    pub predict: PredictOptions,
    /// Skip (and report) unreadable samples instead of failing.
    pub skip_bad: bool,
    /// Evaluate at most this many images (quick checks); `Some(0)` is refused.
    pub limit: Option<usize>,
    /// Consecutive images of one size predicted in one forward pass: at most this many
    /// (at least 1), and more than one only while they hold at most
    /// [`BATCH_PIXELS`] pixels together, so memory stays that of one large frame. Small
    /// images run about 40 % faster in batches of 8 on a CPU; the ids are those of one
    /// image at a time up to floating-point ties.
    pub batch: usize,
}

/// Pixels a batch of several images may hold (one 2048 × 1024 frame).
pub const BATCH_PIXELS: usize = 2048 * 1024;

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { predict: PredictOptions::default(), skip_bad: false, limit: None, batch: 8 }
    }
}

/// What an evaluation found.
pub struct EvalReport {
    /// mIoU, accuracies, per-class IoU.
    pub metrics: Metrics,
    /// Images evaluated.
    pub images: usize,
    /// Samples that could not be read (with `skip_bad`).
    pub skipped: Vec<Skipped>,
    /// The confusion matrix, K × K row-major counts (row = ground truth).
    pub confusion: Vec<u64>,
}

/// Evaluates `model` on `ds`, decoding ahead on loader threads.
pub fn evaluate(model: &Segmenter, ds: &Dataset, opts: &EvalOptions, progress: &dyn Progress) -> Result<EvalReport> {
    if opts.limit == Some(0) {
        fail!(InvalidSetting, "limit", "0 evaluates nothing; give at least 1 (or leave it out)");
    }
    if opts.batch == 0 {
        fail!(InvalidSetting, "batch", "0 images per forward pass; give at least 1");
    }
    ds.require_samples()?;
    if let Some(note) = ds.issues_note() {
        progress.notice(&note);
    }
    let n = opts.limit.map(|l| l.min(ds.len())).unwrap_or(ds.len());
    let ds = std::sync::Arc::new(ds.clone());
    let transform = ds.kind.eval_transform();
    let ds2 = ds.clone();
    let items = ordered_map(n, default_workers(), 8, move |i| -> Result<(Image8, Image8)> {
        let (img, lbl) = ds2.load(i)?;
        Ok(eval_transform(img, lbl, transform))
    });
    let mut conf = Confusion::new(model.config().head.num_classes as usize, model.device());
    progress.start("eval", n as u64, 0, Unit::Items);
    let mut images = 0;
    let mut skipped = Vec::new();
    let mut pending: Vec<(Image8, Image8)> = Vec::new();
    // A running mIoU reads the matrix back: only where that costs no device sync.
    let cpu = model.device() == tch::Device::Cpu;
    let show = |conf: &Confusion| progress.status(&format!("mIoU {:.2}", conf.metrics().miou * 100.0));
    for (i, item) in items.enumerate() {
        if progress.cancelled() {
            progress.finish();
            return Err(crate::error::Error::Cancelled { what: format!("evaluation after {images} images") });
        }
        progress.advance(1);
        let pair = match item {
            Ok(v) => v,
            Err(e) if opts.skip_bad => {
                let s = Skipped { path: ds.samples[i].image.display().to_string(), error: format!("{e:#}") };
                progress.notice(&format!("skipping {}: {}", s.path, s.error));
                skipped.push(s);
                continue;
            }
            Err(e) => {
                progress.finish();
                return Err(e).context("evaluation stopped (use `skip_bad` to skip unreadable samples)");
            }
        };
        let other_size = pending.first().is_some_and(|(p, _)| (p.width, p.height) != (pair.0.width, pair.0.height));
        let pixels = (pending.len() + 1) * pair.0.width * pair.0.height;
        if other_size || pending.len() == opts.batch || (!pending.is_empty() && pixels > BATCH_PIXELS) {
            let before = images;
            images += add_batch(model, &mut pending, &opts.predict, &mut conf)?;
            if cpu && images / 10 > before / 10 {
                show(&conf);
            }
        }
        pending.push(pair);
    }
    images += add_batch(model, &mut pending, &opts.predict, &mut conf)?;
    if cpu && images > 0 {
        show(&conf);
    }
    progress.finish();
    let confusion = conf.matrix();
    let metrics = Metrics::from_matrix(&confusion, conf.classes);
    if metrics.pixels == 0 {
        // mIoU would be NaN: say why instead of reporting it.
        fail!(
            InvalidInput,
            &ds.root,
            "no labelled pixel was evaluated on {} ({images} images evaluated, {} skipped as unreadable)",
            ds.describe(),
            skipped.len()
        );
    }
    Ok(EvalReport { metrics, images, skipped, confusion })
}

/// Predicts the pending same-size images in one pass and counts them; empties the list.
fn add_batch(model: &Segmenter, pending: &mut Vec<(Image8, Image8)>, opts: &PredictOptions, conf: &mut Confusion) -> Result<usize> {
    if pending.is_empty() {
        return Ok(0);
    }
    let images = tch::Tensor::stack(&pending.iter().map(|(img, _)| img.to_tensor_u8()).collect::<Vec<_>>(), 0);
    let (pred, _) = model.predict_ids(&images, opts)?;
    // u8 labels through the pinned path; widened on the device.
    let labels = tch::Tensor::stack(&pending.iter().map(|(_, lbl)| lbl.to_tensor_u8()).collect::<Vec<_>>(), 0);
    conf.add(&crate::device::upload(&labels, model.device()), &pred);
    Ok(std::mem::take(pending).len())
}
