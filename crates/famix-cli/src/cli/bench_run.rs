//! The workloads `famix bench` times: timings of the real code paths (`train`'s iteration, `predict`'s
//! forward, `mine-styles`' per-batch mining, the data loader) on random-weight
//! models of the real sizes, with device synchronisation.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use famix::clip::{Clip, OutputStride, ResNetConfig, TextConfig};
use famix::data::augment::TrainAugment;
use famix::data::loader::{Batch, BatchLoader, LoaderConfig};
use famix::data::{Dataset, DatasetKind};
use famix::device::{cuda_memory_mb, cuda_reset_peak, device_name, synchronize, Autocast};
use famix::imageops::Image8;
use famix::model::{FreezePolicy, HeadConfig, Precision, PredictOptions, Segmenter, SegmenterConfig};
use famix::optim::Sgd;
use famix::rng::Rng;
use famix::style::bank::StyleBank;
use famix::style::mining::Miner;
use famix::style::prompts::PromptSet;
use famix::style::PinConfig;
use famix::train::Stepper;
use famix::train::TrainConfig;

/// Model sizes `bench` can time (random weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    Rn50,
    Rn101,
    /// A small model for quick checks (CI).
    Tiny,
}

impl Arch {
    fn visual(self) -> ResNetConfig {
        match self {
            Arch::Rn50 => ResNetConfig::rn50(),
            Arch::Rn101 => ResNetConfig::rn101(),
            Arch::Tiny => ResNetConfig::tiny(),
        }
    }
    fn text(self) -> TextConfig {
        match self {
            Arch::Rn50 => TextConfig::rn50(),
            Arch::Rn101 => TextConfig::rn101(),
            Arch::Tiny => TextConfig::tiny(),
        }
    }
    fn head(self) -> HeadConfig {
        match self {
            Arch::Tiny => HeadConfig::tiny(19),
            _ => HeadConfig::reference(19),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub arch: Arch,
    pub device: Device,
    pub batch: usize,
    pub crop: usize,
    pub infer_size: (usize, usize),
    pub mine_batch: usize,
    pub mine_crop: usize,
    pub mine_iters: usize,
    pub warmup: usize,
    pub iters: usize,
    pub precision: Precision,
    pub workers: usize,
    /// Inference on the plain path (no folded batch norms, no channels-last).
    pub no_fold: bool,
    /// Inference with this checkpoint's weights instead of a random model of `arch`.
    pub checkpoint: Option<std::path::PathBuf>,
    /// Inference on this image (resized to `infer_size`) instead of random pixels.
    pub image: Option<std::path::PathBuf>,
    /// The inference engine.
    pub engine: famix::engine::Engine,
    /// int8 on ONNX Runtime instead of `engine`: with this calibration, or (an empty
    /// path) ranges measured on the timed input.
    pub int8: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub what: String,
    pub device: String,
    pub arch: String,
    pub amp: String,
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub iters: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub peak_mem_mb: Option<f64>,
    /// Peak resident memory of the process during the workload (MiB; Linux).
    pub peak_rss_mb: Option<f64>,
    pub images_per_s: f64,
    /// infer with bf16: fraction of pixels whose predicted class equals fp32's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fp32_agreement: Option<f64>,
    /// infer: "fused" (the fast path) or "plain".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// infer with --checkpoint: the checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// infer: the engine that ran it (torch, onnxruntime).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
}

/// Resets the kernel's peak-RSS counter of this process (Linux `clear_refs` 5); false
/// where that is not possible, and the peak then covers the whole process so far.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The process's peak resident memory (VmHWM) in MiB, on Linux.
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn timed(cfg: &BenchConfig, mut f: impl FnMut() -> Result<()>) -> Result<(Vec<f64>, Option<f64>)> {
    for _ in 0..cfg.warmup {
        f()?;
    }
    synchronize(cfg.device);
    cuda_reset_peak(cfg.device);
    let mut ms = Vec::with_capacity(cfg.iters);
    for _ in 0..cfg.iters.max(1) {
        let t = Instant::now();
        f()?;
        synchronize(cfg.device);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((ms, cuda_memory_mb(cfg.device).map(|m| m.1)))
}

fn result(cfg: &BenchConfig, what: &str, batch: usize, h: usize, w: usize, mut ms: Vec<f64>, peak: Option<f64>) -> BenchResult {
    ms.sort_by(|a, b| a.total_cmp(b));
    let median = ms[ms.len() / 2];
    BenchResult {
        what: what.into(),
        device: device_name(cfg.device),
        arch: format!("{:?}", cfg.arch).to_lowercase(),
        amp: cfg.precision.name().into(),
        batch,
        height: h,
        width: w,
        iters: ms.len(),
        median_ms: median,
        min_ms: ms[0],
        max_ms: ms[ms.len() - 1],
        peak_mem_mb: peak,
        peak_rss_mb: None,
        images_per_s: batch as f64 * 1e3 / median,
        fp32_agreement: None,
        path: None,
        checkpoint: None,
        engine: None,
    }
}

fn segmenter(cfg: &BenchConfig, freeze: FreezePolicy) -> Result<Segmenter> {
    let mut sc = SegmenterConfig::new(cfg.arch.visual(), 19, OutputStride::Os16, freeze);
    sc.head = cfg.arch.head();
    tch::manual_seed(0);
    Ok(Segmenter::new(sc, cfg.device)?)
}

/// The inference model: [`segmenter`] on the fast path unless `--no-fold`.
fn inference_segmenter(cfg: &BenchConfig) -> Result<Segmenter> {
    let mut m = match &cfg.checkpoint {
        Some(p) => famix::model::checkpoint::load(p, cfg.device, None)?.model,
        None => segmenter(cfg, FreezePolicy::Synthetic)?,
    };
    if !cfg.no_fold {
        m.fold();
    }
    Ok(m)
}

/// A synthetic batch like the loader's: u8 images, blocky labels, dominant classes.
pub fn synthetic_batch(b: usize, size: usize, grid: usize, seed: u64) -> Batch {
    let mut rng = Rng::new(seed);
    let mut items = Vec::with_capacity(b);
    for i in 0..b {
        let mut img = Image8::new(size, size, 3, 0);
        for v in img.data.iter_mut() {
            *v = rng.below(256) as u8;
        }
        let mut lbl = Image8::new(size, size, 1, 0);
        let block = (size / 8).max(1);
        let classes: Vec<u8> = (0..64).map(|_| if rng.below(10) == 0 { 255 } else { rng.below(19) as u8 }).collect();
        for y in 0..size {
            for x in 0..size {
                lbl.data[y * size + x] = classes[((y / block).min(7)) * 8 + (x / block).min(7)];
            }
        }
        let dominant = famix::data::augment::dominant_classes(&lbl, grid);
        items.push(famix::data::loader::Item { image: img, label: lbl, dominant, index: i });
    }
    famix::data::loader::collate(items)
}

fn random_bank(channels: usize, dir: &Path) -> Result<std::path::PathBuf> {
    let mut bank = StyleBank::new(channels, famix::data::classes::ClassSet::cityscapes());
    let mut rng = Rng::new(3);
    for class in (0..19u8).chain([255]) {
        for _ in 0..4 {
            let mu: Vec<f32> = (0..channels).map(|_| rng.uniform() as f32).collect();
            let sd: Vec<f32> = (0..channels).map(|_| 0.2 + rng.uniform() as f32).collect();
            bank.push(class, mu, sd, None);
        }
    }
    let p = dir.join("bench_bank.safetensors");
    bank.save(&p)?;
    Ok(p)
}

/// `predict`'s forward ([`Segmenter::predict_ids`]: normalisation, network, argmax)
/// on one random image; with bf16 or int8, the share of pixels whose class equals
/// libtorch fp32's.
pub fn bench_infer(cfg: &BenchConfig) -> Result<BenchResult> {
    let mut model = inference_segmenter(cfg)?;
    let (h, w) = cfg.infer_size;
    let x = match &cfg.image {
        Some(p) => famix::Image8::open_rgb(p)?.resize(w, h, famix::imageops::Filter::Bilinear).to_tensor_u8().unsqueeze(0),
        None => Tensor::randint(256, [1, 3, h as i64, w as i64], (Kind::Uint8, Device::Cpu)),
    };
    let engine = match &cfg.int8 {
        Some(path) => attach_int8(&mut model, path, &x)?,
        None => famix::engine::attach(&mut model, cfg.engine, cfg.precision)?.0.name(),
    };
    let opts = PredictOptions { precision: cfg.precision, ..Default::default() };
    let (ms, peak) = timed(cfg, || {
        let _ = model.predict_ids(&x, &opts)?;
        Ok(())
    })?;
    let mut r = result(cfg, "infer", 1, h, w, ms, peak);
    r.path = Some(if model.is_folded() { "fused" } else { "plain" }.into());
    r.checkpoint = cfg.checkpoint.as_ref().map(|p| p.display().to_string());
    r.engine = Some(engine.into());
    if cfg.precision == Precision::Bf16 || cfg.int8.is_some() {
        let (reduced, _) = model.predict_ids(&x, &opts)?;
        model.set_engine(None);
        let (fp32, _) = model.predict_ids(&x, &PredictOptions::default())?;
        r.fp32_agreement = Some(reduced.eq_tensor(&fp32).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]));
    }
    if cfg.int8.is_some() {
        r.amp = "int8".into();
    }
    Ok(r)
}

/// Puts `model` on int8 ONNX Runtime with the calibration at `path`, or (an empty
/// path) with ranges measured on `x`; returns the engine's name.
fn attach_int8(model: &mut Segmenter, path: &std::path::Path, x: &Tensor) -> Result<&'static str> {
    use famix::engine::calibration::{Calibration, Calibrator};
    let c = if path.as_os_str().is_empty() {
        let mut c = Calibrator::new(model)?;
        c.observe_u8(x)?;
        c.finish(model, "bench input")?
    } else {
        Calibration::load(path)?
    };
    famix::engine::attach_int8(model, &c)?;
    Ok(model.engine_name())
}

pub fn bench_train(cfg: &BenchConfig, tmp: &Path) -> Result<BenchResult> {
    let mut model = segmenter(cfg, FreezePolicy::Synthetic)?;
    if !cfg.no_fold {
        model.fold_frozen();
    }
    let bank = random_bank(model.config().backbone.low_level_channels() as usize, tmp)?;
    let tc = TrainConfig {
        batch: cfg.batch,
        crop: cfg.crop,
        head: cfg.arch.head(),
        precision: cfg.precision,
        ..TrainConfig::reference("random".into(), String::new(), DatasetKind::Gta5, "synthetic".into(), Some(bank))
    };
    let tables = famix::train::bank_tables(&tc, &model)?;
    let mut stepper = Stepper::new(&model, &tc, tables, Sgd::new(0.9, 1e-4));
    let batches: Vec<Batch> = (0..2).map(|i| synthetic_batch(cfg.batch, cfg.crop, 3, i)).collect();
    let mut step = 0u64;
    let (ms, peak) = timed(cfg, || {
        let _ = stepper.step(&batches[(step % 2) as usize], step)?;
        step += 1;
        Ok(())
    })?;
    let mut r = result(cfg, "train", cfg.batch, cfg.crop, cfg.crop, ms, peak);
    r.path = Some(if cfg.no_fold { "plain" } else { "fused" }.into());
    Ok(r)
}

pub fn bench_mine(cfg: &BenchConfig) -> Result<BenchResult> {
    tch::manual_seed(0);
    let clip = Clip::random(&cfg.arch.visual(), Some(&cfg.arch.text()), cfg.device, OutputStride::Os32);
    let prompts = PromptSet::default();
    let pin = PinConfig { iters: cfg.mine_iters, ..Default::default() };
    let mut miner = Miner::new(&clip, &prompts, &pin)?;
    let batch = synthetic_batch(cfg.mine_batch, cfg.mine_crop, pin.grid, 7);
    let _amp = Autocast::new(cfg.device, cfg.precision == Precision::Bf16);
    let (ms, peak) = timed(cfg, || {
        miner.mine_batches(1, None, 0, std::slice::from_ref(&batch))?;
        Ok(())
    })?;
    Ok(result(cfg, "mine", cfg.mine_batch, cfg.mine_crop, cfg.mine_crop, ms, peak))
}

/// Loader throughput on GTA5-sized frames (1914×1052 PNGs) with training augmentation.
pub fn bench_loader(cfg: &BenchConfig, tmp: &Path) -> Result<BenchResult> {
    let root = tmp.join("loader");
    let n = 16;
    let mut rng = Rng::new(11);
    for i in 0..n {
        let (w, h) = (1914, 1052);
        let mut img = Image8::new(w, h, 3, 0);
        // Smooth content plus noise: PNG sizes like real frames, not incompressible noise.
        for y in 0..h {
            for x in 0..w {
                let o = (y * w + x) * 3;
                img.data[o] = ((x / 7 + y / 5) % 256) as u8;
                img.data[o + 1] = ((y / 3) % 256) as u8;
                img.data[o + 2] = (rng.below(32) as usize + (x + i * 13) % 200) as u8;
            }
        }
        img.save_png(&root.join("images/train").join(format!("{i:04}.png")))?;
        let lbl = Image8::new(w, h, 1, (i % 19) as u8);
        lbl.save_png(&root.join("labels/train").join(format!("{i:04}.png")))?;
    }
    let ds = Arc::new(Dataset::open(DatasetKind::Folder, &root, "train", None)?);
    let steps = (cfg.iters.max(1) + cfg.warmup) as u64;
    let lc = LoaderConfig {
        batch: cfg.batch,
        augment: TrainAugment::reference(cfg.crop, false),
        grid: 3,
        seed: 1,
        workers: cfg.workers,
        prefetch: 3 * cfg.batch,
        skip_bad: false,
    };
    let mut loader = BatchLoader::new(ds, lc, 0, steps)?;
    for _ in 0..cfg.warmup {
        loader.next().transpose()?;
    }
    let mut ms = Vec::new();
    for _ in 0..cfg.iters.max(1) {
        let t = Instant::now();
        if loader.next().transpose()?.is_none() {
            bail!("loader ended early");
        }
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let total_s: f64 = ms.iter().sum::<f64>() / 1e3;
    let mut r = result(cfg, "loader", cfg.batch, cfg.crop, cfg.crop, ms, None);
    // Throughput over the whole timed stretch (prefetching makes single batches uneven).
    r.images_per_s = (cfg.batch * r.iters) as f64 / total_s;
    r.device = format!("cpu ({} workers)", cfg.workers);
    Ok(r)
}
