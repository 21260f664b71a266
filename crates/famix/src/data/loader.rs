//! The training/mining loader: deterministic epoch order (drop-last batches),
//! per-sample augmentation seeded by (seed, epoch, index), decoding and augmenting on
//! worker threads with a bounded prefetch queue, batches as u8 tensors (4× less to
//! copy to the device than f32; normalisation happens there).

use std::sync::{Arc, Mutex};

use crate::error::{fail, Result};
use tch::Tensor;

use super::augment::{augment_train, dominant_classes, TrainAugment};
use super::datasets::Dataset;
use super::prefetch::{ordered_map, OrderedMap};
use super::Skipped;
use crate::imageops::Image8;
use crate::rng::{stream, Rng};

#[derive(Debug, Clone)]
/// How the loader batches and augments.
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch: usize,
    /// The augmentation.
    pub augment: TrainAugment,
    /// Style grid: each sample also reports its cells' dominant classes.
    pub grid: usize,
    /// Seed of the epoch order and the augmentation draws.
    pub seed: u64,
    /// Decoding threads.
    pub workers: usize,
    /// Samples decoded ahead of the consumer.
    pub prefetch: usize,
    /// Replace unreadable samples by the next readable one (reported once each)
    /// instead of failing; deterministic, so resume stays exact.
    pub skip_bad: bool,
}

/// A collated batch.
pub struct Batch {
    /// (B, 3, H, W) u8
    pub images: Tensor,
    /// (B, H, W) u8 train ids
    pub labels: Tensor,
    /// Per sample, the dominant class of each grid cell (row-major).
    pub dominant: Vec<Vec<u8>>,
    /// Dataset indices of the samples.
    pub indices: Vec<usize>,
}

/// One loaded, augmented sample.
pub struct Item {
    /// RGB crop.
    pub image: Image8,
    /// Train-id crop.
    pub label: Image8,
    /// Dominant class of each grid cell.
    pub dominant: Vec<u8>,
    /// Dataset index actually used (after skipping unreadable samples).
    pub index: usize,
}

/// Which dataset sample is at `position` of the epoch order (shuffled with `seed`).
pub struct EpochOrder {
    n: usize,
    seed: u64,
    cache: Mutex<Option<(u64, Arc<Vec<usize>>)>>,
}

impl EpochOrder {
    /// The order of `n` samples under `seed`.
    pub fn new(n: usize, seed: u64) -> Self {
        EpochOrder { n, seed, cache: Mutex::new(None) }
    }
    /// The permutation of epoch `epoch` (cached for the current epoch).
    pub fn permutation(&self, epoch: u64) -> Arc<Vec<usize>> {
        let mut c = self.cache.lock().unwrap();
        if let Some((e, p)) = c.as_ref() {
            if *e == epoch {
                return p.clone();
            }
        }
        let mut p: Vec<usize> = (0..self.n).collect();
        Rng::derive(self.seed, &[stream::SHUFFLE, epoch]).shuffle(&mut p);
        let p = Arc::new(p);
        *c = Some((epoch, p.clone()));
        p
    }
}

/// Batches per epoch (incomplete last batches are dropped, as the reference).
pub(crate) fn batches_per_epoch(n: usize, batch: usize) -> u64 {
    (n / batch) as u64
}

/// (epoch, dataset index) of sample `k` of step `step`.
pub(crate) fn locate(order: &EpochOrder, n: usize, batch: usize, step: u64, k: usize) -> (u64, usize) {
    let per = batches_per_epoch(n, batch);
    let epoch = step / per;
    let pos = (step % per) as usize * batch + k;
    (epoch, order.permutation(epoch)[pos])
}

/// Samples replaced because they could not be read, each reported once per loader.
#[derive(Default)]
struct SkipLog {
    seen: std::collections::HashSet<std::path::PathBuf>,
    fresh: Vec<Skipped>,
}

impl SkipLog {
    fn record(log: &Mutex<SkipLog>, path: &std::path::Path, e: &crate::error::Error) {
        let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
        if l.seen.insert(path.to_path_buf()) {
            l.fresh.push(Skipped { path: path.display().to_string(), error: format!("{e:#}") });
        }
    }
}

/// Loads, augments and analyses sample `index` of `epoch`; with `skip_bad`, an
/// unreadable sample is replaced by the next readable one and recorded in `skips`.
fn load_item(ds: &Dataset, cfg: &LoaderConfig, epoch: u64, index: usize, skips: &Mutex<SkipLog>) -> Result<Item> {
    let mut index = index;
    let mut attempts = 0;
    let (img, lbl) = loop {
        match ds.load(index) {
            Ok(v) => break v,
            Err(e) if cfg.skip_bad => {
                SkipLog::record(skips, &ds.samples[index].image, &e);
                attempts += 1;
                if attempts >= ds.len() {
                    crate::error::fail!(InvalidInput, &ds.root, "no readable sample in {}", ds.describe());
                }
                index = (index + 1) % ds.len();
            }
            Err(e) => return Err(e.context("use `skip_bad` to skip unreadable samples")),
        }
    };
    let mut rng = Rng::derive(cfg.seed, &[stream::AUGMENT, epoch, index as u64]);
    let (image, label) = augment_train(&img, &lbl, &cfg.augment, &mut rng);
    let dominant = dominant_classes(&label, cfg.grid);
    Ok(Item { image, label, dominant, index })
}

/// Batches for steps `start..end`, decoded ahead on worker threads.
pub struct BatchLoader {
    items: OrderedMap<Result<Item>>,
    skips: Arc<Mutex<SkipLog>>,
    batch: usize,
    remaining: u64,
}

impl BatchLoader {
    /// Starts loading the batches of steps `start..end` on `cfg.workers` threads.
    pub fn new(ds: Arc<Dataset>, cfg: LoaderConfig, start: u64, end: u64) -> Result<Self> {
        Self::for_steps(ds, cfg, (start..end).collect())
    }

    /// Starts loading the batches of the given steps, in that order (a shard's steps);
    /// each batch is the one step `s` has in the whole run.
    pub(crate) fn for_steps(ds: Arc<Dataset>, cfg: LoaderConfig, step_list: Vec<u64>) -> Result<Self> {
        let n = ds.len();
        if n < cfg.batch || cfg.batch == 0 {
            fail!(InvalidInput, &ds.root, "{} has {n} samples, fewer than one batch of {}", ds.describe(), cfg.batch);
        }
        let order = Arc::new(EpochOrder::new(n, cfg.seed));
        let steps = step_list.len() as u64;
        let total = steps as usize * cfg.batch;
        let batch = cfg.batch;
        let prefetch = cfg.prefetch.max(batch);
        let workers = cfg.workers;
        let skips = Arc::new(Mutex::new(SkipLog::default()));
        let log = skips.clone();
        let items = ordered_map(total, workers, prefetch, move |i| {
            let step = step_list[i / batch];
            let (epoch, index) = locate(&order, n, batch, step, i % batch);
            load_item(&ds, &cfg, epoch, index, &log)
        });
        Ok(BatchLoader { items, skips, batch, remaining: steps })
    }

    /// Samples skipped (with `skip_bad`) since the last call, each file once.
    pub(crate) fn take_skipped(&self) -> Vec<Skipped> {
        std::mem::take(&mut self.skips.lock().unwrap_or_else(|p| p.into_inner()).fresh)
    }
}

/// Stacks items into a batch.
pub fn collate(items: Vec<Item>) -> Batch {
    let images = Tensor::stack(&items.iter().map(|it| it.image.to_tensor_u8()).collect::<Vec<_>>(), 0);
    let labels = Tensor::stack(&items.iter().map(|it| it.label.to_tensor_u8().squeeze_dim(0)).collect::<Vec<_>>(), 0);
    Batch {
        images,
        labels,
        dominant: items.iter().map(|it| it.dominant.clone()).collect(),
        indices: items.iter().map(|it| it.index).collect(),
    }
}

impl Iterator for BatchLoader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let mut items = Vec::with_capacity(self.batch);
        for _ in 0..self.batch {
            match self.items.next()? {
                Ok(it) => items.push(it),
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(collate(items)))
    }
}
