//! Batches of (image, caption) pairs for pretraining: a deterministic epoch order
//! (drop-last, the segmenter loader's), images decoded and cropped on worker threads
//! behind a bounded queue, captions tokenized once up front.
//!
//! Crops: with augmentation, a random square of 80–100 % of the shorter side
//! (seeded by (seed, step, slot), so a resumed run sees the same crops), resized to
//! the input resolution (bicubic); without, CLIP's own preprocessing (shorter side
//! resized, centre crop).

use std::sync::Arc;

use tch::Tensor;

use crate::clip::preprocess::clip_crop;
use crate::clip::tokenizer::Tokenizer;
use crate::data::captions::CaptionSet;
use crate::data::loader::{locate, EpochOrder};
use crate::data::prefetch::{ordered_map, OrderedMap};
use crate::error::{fail, Context, Result};
use crate::imageops::{Filter, Image8};
use crate::rng::{stream, Rng};

/// One batch: images (N, 3, R, R) u8 and token rows (N, context) int64.
pub struct PairBatch {
    /// Images.
    pub images: Tensor,
    /// Tokens.
    pub tokens: Tensor,
}

/// How batches are made.
#[derive(Debug, Clone, Copy)]
pub struct PairLoaderConfig {
    /// Pairs per batch.
    pub batch: usize,
    /// Input resolution R.
    pub resolution: usize,
    /// Random crops instead of CLIP's centre crop.
    pub augment: bool,
    /// Seed of the order and crops.
    pub seed: u64,
    /// Decoding threads.
    pub workers: usize,
}

/// The batches of steps `start..end`.
pub struct PairLoader {
    images: OrderedMap<Result<Image8>>,
    tokens: Tensor,
    order: Vec<usize>,
    batch: usize,
    next_item: usize,
}

/// Token rows of every caption (truncated to the context, end token kept).
pub(crate) fn tokenize_all(set: &CaptionSet, context: usize) -> Result<Tensor> {
    let texts: Vec<String> = set.items.iter().map(|(_, t)| t.clone()).collect();
    Tokenizer::global().batch(&texts, context, true)
}

fn crop(img: &Image8, cfg: &PairLoaderConfig, step: u64, slot: usize) -> Image8 {
    if !cfg.augment {
        return clip_crop(img, cfg.resolution);
    }
    let mut rng = Rng::derive(cfg.seed, &[stream::PRETRAIN_CROP, step, slot as u64]);
    let short = img.width.min(img.height) as f64;
    let side = ((short * rng.uniform_range(0.8, 1.0)).round() as usize).clamp(1, img.width.min(img.height));
    let left = rng.below((img.width - side + 1) as u64) as i64;
    let top = rng.below((img.height - side + 1) as u64) as i64;
    img.crop(left, top, side, side, 0).resize(cfg.resolution, cfg.resolution, Filter::Bicubic)
}

impl PairLoader {
    /// Starts decoding the batches of steps `start..end`.
    pub fn new(set: &CaptionSet, tokens: Tensor, cfg: PairLoaderConfig, start: u64, end: u64) -> Result<Self> {
        let n = set.len();
        if n < cfg.batch || cfg.batch < 2 {
            fail!(
                InvalidInput,
                &set.file,
                "{} has {n} captions, fewer than one batch of {} (and a batch needs at least 2)",
                set.file.display(),
                cfg.batch
            );
        }
        let order = EpochOrder::new(n, cfg.seed);
        let steps: Vec<u64> = (start..end).collect();
        let plan: Vec<usize> =
            steps.iter().flat_map(|&s| (0..cfg.batch).map(move |k| (s, k))).map(|(s, k)| locate(&order, n, cfg.batch, s, k).1).collect();
        let paths: Arc<Vec<_>> = Arc::new(set.items.iter().map(|(p, _)| p.clone()).collect());
        let plan_arc = Arc::new(plan.clone());
        let images = ordered_map(plan.len(), cfg.workers, 2 * cfg.batch, move |i| {
            let path = &paths[plan_arc[i]];
            let img = Image8::open_rgb(path).with_context(|| format!("caption image {}", path.display()))?;
            Ok(crop(&img, &cfg, start + (i / cfg.batch) as u64, i % cfg.batch))
        });
        Ok(PairLoader { images, tokens, order: plan, batch: cfg.batch, next_item: 0 })
    }
}

impl Iterator for PairLoader {
    type Item = Result<PairBatch>;
    fn next(&mut self) -> Option<Result<PairBatch>> {
        if self.next_item >= self.order.len() {
            return None;
        }
        let idx: Vec<i64> = self.order[self.next_item..self.next_item + self.batch].iter().map(|&i| i as i64).collect();
        self.next_item += self.batch;
        let mut imgs = Vec::with_capacity(self.batch);
        for _ in 0..self.batch {
            match self.images.next()? {
                Ok(im) => imgs.push(im.to_tensor_u8()),
                Err(e) => return Some(Err(e)),
            }
        }
        let tokens = self.tokens.index_select(0, &Tensor::from_slice(&idx));
        Some(Ok(PairBatch { images: Tensor::stack(&imgs, 0), tokens }))
    }
}
