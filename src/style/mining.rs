//! Language-driven style mining, patch-wise PIN (SPEC §3).
//!
//! For each batch of source crops: layer1 features (frozen CLIP backbone, BN eval),
//! a grid of patches, the dominant class of each patch's labels; the first patch of
//! every distinct class (patches ordered grid-cell-major, then image) is mined: its
//! per-channel mean/std initialise learnable μ, σ; the restyled patch
//! ReLU(norm·σ + μ) is average-pooled to the CLIP grid (input resolution / 4), sent
//! through layer2..4 and the attention pool, and μ, σ are optimised (SGD lr 1,
//! momentum 0.9, weight decay 1e-4) so the image embedding moves toward the class
//! prompt's text embedding: loss = mean over the batch's patches of 1 − cosine.
//!
//! Several batches can be optimised in one launch (`group`): every patch's μ, σ
//! only affect its own embedding (BN is frozen), so summing the per-batch mean losses
//! gives each patch exactly the gradient of its own batch's loss, and SGD's update is
//! per element — the result equals mining the batches one by one. Per-batch loss
//! trajectories are kept on the device (no per-iteration host round trip).

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use crate::clip::ModifiedResNet;
use crate::train::sgd::Sgd;

#[derive(Debug, Clone)]
pub struct PinConfig {
    pub iters: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub grid: usize,
}

impl Default for PinConfig {
    fn default() -> Self {
        PinConfig { iters: 100, lr: 1.0, momentum: 0.9, weight_decay: 1e-4, grid: 3 }
    }
}

/// A patch chosen for mining.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Index in the batch's patch order (cell · B + image).
    pub patch: usize,
    pub image: usize,
    pub cell: usize,
    pub class: u8,
}

/// The first patch of each distinct dominant class, in patch order
/// (grid-cell-major, then image). `dominant[b][cell]`.
pub fn select_patches(dominant: &[Vec<u8>], grid: usize) -> Vec<Selection> {
    let b = dominant.len();
    let mut seen = [false; 256];
    let mut out = Vec::new();
    for cell in 0..grid * grid {
        for (image, d) in dominant.iter().enumerate() {
            let class = d[cell];
            if !seen[class as usize] {
                seen[class as usize] = true;
                out.push(Selection { patch: cell * b + image, image, cell, class });
            }
        }
    }
    out
}

/// Per-channel mean and sqrt(unbiased variance + 1e-5) over the spatial dims:
/// (N, C, H, W) → two (N, C, 1, 1) tensors.
pub fn mean_std(x: &Tensor) -> (Tensor, Tensor) {
    let (n, c, _, _) = x.size4().unwrap();
    let flat = x.reshape([n, c, -1]);
    let mean = flat.mean_dim(-1, false, Kind::Float).view([n, c, 1, 1]);
    let std = (flat.var_dim(-1, true, false) + 1e-5).sqrt().view([n, c, 1, 1]);
    (mean, std)
}

/// Cuts the selected patches out of layer1 features (B, C, H, W) → (n, C, H/g, W/g).
pub fn gather_patches(f1: &Tensor, sel: &[Selection], grid: usize) -> Tensor {
    let (_, _, h, w) = f1.size4().unwrap();
    let (ph, pw) = (h / grid as i64, w / grid as i64);
    let patches: Vec<Tensor> = sel
        .iter()
        .map(|s| {
            let (gy, gx) = ((s.cell / grid) as i64, (s.cell % grid) as i64);
            f1.get(s.image as i64).narrow(1, gy * ph, ph).narrow(2, gx * pw, pw)
        })
        .collect();
    Tensor::stack(&patches, 0)
}

/// One batch's mining problem.
pub struct PinProblem {
    /// (n, C, ph, pw) selected layer1 patches.
    pub patches: Tensor,
    /// (n, E) L2-normalised text targets.
    pub targets: Tensor,
}

pub struct PinResult {
    /// (n, C) learnt means and deviations.
    pub mu: Tensor,
    pub sigma: Tensor,
    /// Loss of each iteration (before its update), as the reference logs it.
    pub losses: Vec<f64>,
}

/// Optimises μ, σ for several batches at once (see the module docs); returns one
/// result per problem, in order.
pub fn optimise(visual: &ModifiedResNet, problems: &[PinProblem], cfg: &PinConfig) -> Result<Vec<PinResult>> {
    if problems.is_empty() {
        return Ok(vec![]);
    }
    let device = problems[0].patches.device();
    let res = visual.config.input_resolution / 4;
    let counts: Vec<i64> = problems.iter().map(|p| p.patches.size()[0]).collect();
    if counts.iter().any(|&n| n == 0) {
        bail!("a mining batch has no patches");
    }
    let patches = Tensor::cat(&problems.iter().map(|p| p.patches.shallow_clone()).collect::<Vec<_>>(), 0);
    let targets = Tensor::cat(&problems.iter().map(|p| p.targets.shallow_clone()).collect::<Vec<_>>(), 0);
    let (mu0, sigma0) = mean_std(&patches);
    let norm = ((&patches - &mu0) / &sigma0).detach();
    let mu = mu0.detach().copy().set_requires_grad(true);
    let sigma = sigma0.detach().copy().set_requires_grad(true);
    // Patch i's loss weight is 1 / (patches in its batch): the sum of these weighted
    // losses is the sum of the per-batch means.
    let owner: Vec<i64> = counts.iter().enumerate().flat_map(|(b, &n)| std::iter::repeat_n(b as i64, n as usize)).collect();
    let owner = Tensor::from_slice(&owner).to_device(device);
    let weights: Vec<f32> = counts.iter().flat_map(|&n| std::iter::repeat_n(1.0 / n as f32, n as usize)).collect();
    let weights = Tensor::from_slice(&weights).to_device(device);
    let g = problems.len() as i64;
    let history = Tensor::zeros([cfg.iters as i64, g], (Kind::Float, device));
    let params = vec![("mu".to_string(), mu.shallow_clone()), ("sigma".to_string(), sigma.shallow_clone())];
    let mut sgd = Sgd::new(cfg.momentum, cfg.weight_decay);
    for it in 0..cfg.iters {
        Sgd::zero_grad(&params);
        let styled = (&norm * &sigma + &mu).relu();
        let pooled = styled.adaptive_avg_pool2d([res, res]);
        let feats = visual.forward_high(&pooled, &|_, _| false);
        let emb = visual.attnpool(&feats)?;
        let emb = &emb / emb.norm_scalaropt_dim(2.0, [-1], true).detach();
        let per = Tensor::cosine_similarity(&targets, &emb, 1, 1e-8).neg() + 1.0;
        let weighted = &per * &weights;
        let loss = weighted.sum(Kind::Float);
        tch::no_grad(|| {
            let per_batch = Tensor::zeros([g], (Kind::Float, device)).index_add(0, &owner, &weighted.detach());
            history.get(it as i64).copy_(&per_batch);
        });
        loss.backward();
        sgd.step(&[(cfg.lr, &params)]);
    }
    let history = Vec::<f32>::try_from(history.to_device(tch::Device::Cpu).flatten(0, -1))?;
    let (n_all, c) = (patches.size()[0], patches.size()[1]);
    let mu = mu.detach().view([n_all, c]);
    let sigma = sigma.detach().view([n_all, c]);
    let mut out = Vec::with_capacity(problems.len());
    let mut off = 0;
    for (b, &n) in counts.iter().enumerate() {
        out.push(PinResult {
            mu: mu.narrow(0, off, n),
            sigma: sigma.narrow(0, off, n),
            losses: (0..cfg.iters).map(|i| history[i * problems.len() + b] as f64).collect(),
        });
        off += n;
    }
    Ok(out)
}

// ------------------------------------------------------------------ the mining run

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::clip::preprocess::normalize_u8;
use crate::clip::Clip;
use crate::data::augment::TrainAugment;
use crate::data::loader::{batches_per_epoch, BatchLoader, LoaderConfig};
use crate::data::Dataset;
use crate::rng::{stream, Rng};
use crate::style::bank::{StyleBank, StyleOrigin};
use crate::style::prompts::{PromptEmbedder, PromptSet};

#[derive(Debug, Clone)]
pub struct MineSettings {
    pub batch: usize,
    pub crop: usize,
    pub seed: u64,
    /// Mine at most this many batches (default: one pass over the dataset).
    pub limit: Option<u64>,
    /// Batches optimised together in one launch.
    pub group: usize,
    /// Write the bank every N batches (and at the end).
    pub save_every: u64,
    /// Target-aware mining: this description instead of random styles.
    pub description: Option<String>,
    pub workers: usize,
    /// Replace unreadable samples by the next readable one.
    pub skip_bad: bool,
}

/// The settings a resumed run must share with the run it continues.
pub fn run_identity(clip_sha: &str, ds: &Dataset, s: &MineSettings, pin: &PinConfig, prompts: &PromptSet) -> serde_json::Value {
    serde_json::json!({
        "clip_sha256": clip_sha,
        "dataset": ds.kind.name(), "data_root": ds.root.display().to_string(), "split": ds.split,
        "condition": ds.condition, "batch": s.batch, "crop": s.crop, "seed": s.seed, "grid": pin.grid,
        "iters": pin.iters, "lr": pin.lr, "momentum": pin.momentum, "weight_decay": pin.weight_decay,
        "prompt": s.description, "random_styles": prompts.random_styles, "templates": prompts.templates.len(),
    })
}

/// Mines a whole dataset pass into the bank at `out`, resuming from its saved
/// progress when `resume` is set. Returns the finished bank.
#[allow(clippy::too_many_arguments)]
pub fn mine(
    clip: &Clip,
    ds: Arc<Dataset>,
    prompts: &PromptSet,
    pin: &PinConfig,
    s: &MineSettings,
    out: &Path,
    identity: serde_json::Value,
    resume: bool,
    progress: bool,
) -> Result<StyleBank> {
    if s.crop % (4 * pin.grid) != 0 {
        bail!("--crop {} must be divisible by 4 × grid = {}", s.crop, 4 * pin.grid);
    }
    let per_epoch = batches_per_epoch(ds.len(), s.batch);
    if per_epoch == 0 {
        bail!("{} has fewer samples than one batch of {}", ds.describe(), s.batch);
    }
    let total = s.limit.map(|l| l.min(per_epoch)).unwrap_or(per_epoch);
    let channels = clip.visual.config.low_level_channels() as usize;
    let mut bank = if resume && out.exists() {
        let b = StyleBank::load(out)?;
        let mut saved = b.summary.config.clone();
        let mut now = identity.clone();
        for v in [&mut saved, &mut now] {
            if let Some(o) = v.as_object_mut() {
                o.remove("data_root");
            }
        }
        if saved != now {
            bail!(
                "{}: the bank was mined with other settings; resume needs the same ones\n  bank: {}\n  now:  {}",
                out.display(),
                saved,
                now
            );
        }
        b
    } else {
        let mut b = StyleBank::new(channels, prompts.class_names.clone());
        b.summary.config = identity;
        b
    };
    let start = bank.summary.batches_done;
    bank.summary.batches_total = total;
    if start >= total {
        return Ok(bank);
    }
    let mut embedder = PromptEmbedder::new(clip, prompts.templates.clone())?;
    let loader = BatchLoader::new(
        ds.clone(),
        LoaderConfig {
            batch: s.batch,
            augment: TrainAugment::crop_only(s.crop),
            grid: pin.grid,
            seed: s.seed,
            workers: s.workers,
            prefetch: 2 * s.batch * s.group.max(1),
            skip_bad: s.skip_bad,
        },
        start,
        total,
    )?;
    let bar = if progress { crate::cli::progress_bar(total, "mine") } else { indicatif::ProgressBar::hidden() };
    bar.set_position(start);
    let mut batch_index = start;
    let mut since_save = 0u64;
    let mut loader = loader.peekable();
    while loader.peek().is_some() {
        let mut group = Vec::new();
        while group.len() < s.group.max(1) {
            match loader.next() {
                Some(b) => group.push(b.with_context(|| format!("loading mining batch {}", batch_index + group.len() as u64))?),
                None => break,
            }
        }
        let mined = mine_batches(clip, &mut embedder, prompts, pin, s.seed, s.description.as_deref(), batch_index, &group)?;
        for m in mined {
            let mu = m.result.mu.to_device(tch::Device::Cpu);
            let sigma = m.result.sigma.to_device(tch::Device::Cpu);
            let last = *m.result.losses.last().unwrap_or(&f64::NAN);
            for (i, (p, t)) in m.selections.iter().zip(m.prompts).enumerate() {
                let mv = Vec::<f32>::try_from(mu.get(i as i64))?;
                let sv = Vec::<f32>::try_from(sigma.get(i as i64))?;
                bank.push(p.class, mv, sv, Some(StyleOrigin { batch: m.index, patch: p.patch, prompt: t, final_loss: last }));
            }
            bank.summary.batch_losses.push(last);
            bank.summary.batches_done = m.index + 1;
            bar.set_prefix(format!("{} styles, loss {last:.4}", bank.total()));
            bar.inc(1);
        }
        batch_index += group.len() as u64;
        since_save += group.len() as u64;
        if since_save >= s.save_every.max(1) {
            bank.save(out)?;
            since_save = 0;
        }
    }
    bank.save(out)?;
    bar.finish_and_clear();
    Ok(bank)
}

/// One mined batch: its selections, prompts and PIN result.
pub struct MinedBatch {
    pub index: u64,
    pub selections: Vec<Selection>,
    pub prompts: Vec<String>,
    pub result: PinResult,
}

/// Mines a group of loaded batches (indices `first`, `first + 1`, ...) in one launch:
/// layer1 features, patch selection, prompts (seeded per batch index), text targets,
/// PIN. Shared by `mine` and `famix bench`.
#[allow(clippy::too_many_arguments)]
pub fn mine_batches(
    clip: &Clip,
    embedder: &mut PromptEmbedder,
    prompts: &PromptSet,
    pin: &PinConfig,
    seed: u64,
    description: Option<&str>,
    first: u64,
    batches: &[crate::data::loader::Batch],
) -> Result<Vec<MinedBatch>> {
    let device = clip.device();
    let mut problems = Vec::with_capacity(batches.len());
    let mut meta = Vec::with_capacity(batches.len());
    for (k, b) in batches.iter().enumerate() {
        let bi = first + k as u64;
        let x = normalize_u8(&b.images, device);
        let f1 = tch::no_grad(|| clip.visual.forward_low(&x, false));
        let sel = select_patches(&b.dominant, pin.grid);
        let mut rng = Rng::derive(seed, &[stream::STYLE_PROMPT, bi]);
        let texts: Vec<String> = sel.iter().map(|p| prompts.class_prompt(p.class, &mut rng, description)).collect::<Result<_>>()?;
        let targets = Tensor::stack(&texts.iter().map(|t| embedder.embed(t)).collect::<Result<Vec<_>>>()?, 0);
        problems.push(PinProblem { patches: gather_patches(&f1, &sel, pin.grid), targets });
        meta.push((bi, sel, texts));
    }
    let results = optimise(&clip.visual, &problems, pin)?;
    Ok(meta
        .into_iter()
        .zip(results)
        .map(|((index, selections, prompts), result)| MinedBatch { index, selections, prompts, result })
        .collect())
}
