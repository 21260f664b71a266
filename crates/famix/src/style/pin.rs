//! Patch-wise PIN, the optimisation at the heart of style mining (docs/src/design.md, "Style mining").
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

use crate::error::{bail, Result};
use tch::{Kind, Tensor};

use crate::clip::ModifiedResNet;
use crate::optim::Sgd;

#[derive(Debug, Clone)]
/// PIN's optimisation settings (the reference's by default).
pub struct PinConfig {
    /// SGD iterations per batch.
    pub iters: usize,
    /// Learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// SGD weight decay.
    pub weight_decay: f64,
    /// Patches per side.
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
    /// Image in the batch.
    pub image: usize,
    /// Grid cell (row-major).
    pub cell: usize,
    /// Its dominant class.
    pub class: u8,
}

/// The first patch of each distinct dominant class, in patch order
/// (grid-cell-major, then image). `dominant[b][cell]`.
pub(crate) fn select_patches(dominant: &[Vec<u8>], grid: usize) -> Vec<Selection> {
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
pub(crate) fn gather_patches(f1: &Tensor, sel: &[Selection], grid: usize) -> Tensor {
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

/// What PIN learnt for one batch.
pub struct PinResult {
    /// (n, C) learnt means and deviations.
    pub mu: Tensor,
    /// (n, C) learnt deviations.
    pub sigma: Tensor,
    /// Loss of each iteration (before its update), as the reference logs it.
    pub losses: Vec<f64>,
}

/// Optimises μ, σ for several batches at once (see the module docs); returns one
/// result per problem, in order.
pub(crate) fn optimise(visual: &ModifiedResNet, problems: &[PinProblem], cfg: &PinConfig) -> Result<Vec<PinResult>> {
    if problems.is_empty() {
        return Ok(vec![]);
    }
    let device = problems[0].patches.device();
    let res = visual.config.input_resolution / 4;
    let counts: Vec<i64> = problems.iter().map(|p| p.patches.size()[0]).collect();
    if counts.contains(&0) {
        bail!("internal: a mining batch has no patches");
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
        let emb = visual.embed_layer4(&feats)?;
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
