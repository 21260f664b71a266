//! Local style mixing (docs/src/design.md §4), vectorised on the device.
//!
//! Per grid patch of the layer1 features: mean and sqrt(unbiased var + 1e-5),
//! normalise; a style (μ_t, σ_t) from the bank of the patch's dominant class (an
//! empty bank falls back to the ignore class's); s ~ Beta(0.1, 0.1) of shape
//! (B, C, 1, 1) per iteration, shared by the image's patches;
//! μ_mix = s·μ + (1 − s)·μ_t, σ_mix likewise; features = ReLU(norm·σ_mix + μ_mix).
//! The only host work is choosing B·g² bank rows and drawing B·C Beta samples
//! (tiny uploads); no full-size tensor ever lives on the host.
//!
//! The random-style control ([`StyleMode::RandomMix`]) mixes the same way with
//! targets drawn without language: per patch, μ_t = μ + ε₁·Σ_μ and
//! σ_t = max(σ + ε₂·Σ_σ, 10⁻³), ε ~ N(0, 1) per (image, cell, channel), where Σ_μ and
//! Σ_σ are the per-channel standard deviations of the batch's patch means and standard
//! deviations (DSU's "statistics drawn around the source's", Li et al., ICLR 2022).
//! Comparing it with FAMix separates what any style randomisation buys from what
//! styles mined with words buy.

use crate::error::Result;
use rand_distr::{Beta, Distribution};
use tch::{Kind, Tensor};

use crate::rng::{stream, Rng};
use crate::style::bank::BankTables;

/// How the sampled style is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StyleMode {
    /// FAMix: mix patch statistics with the sampled style (s ~ Beta(0.1, 0.1)).
    Mix,
    /// Apply the sampled style as is (the reference's `mix=False`).
    NoMix,
    /// No style transfer: plain minimal fine-tuning.
    NoStyles,
    /// The control without language: local mixing with statistics drawn at random
    /// around the batch's own (no style bank).
    RandomMix,
}

impl StyleMode {
    /// "mix", "no-mix" or "no-styles".
    pub fn name(self) -> &'static str {
        match self {
            StyleMode::Mix => "mix",
            StyleMode::NoMix => "no-mix",
            StyleMode::NoStyles => "no-styles",
            StyleMode::RandomMix => "random-mix",
        }
    }

    /// Whether the mode samples a style bank.
    pub(crate) fn needs_bank(self) -> bool {
        matches!(self, StyleMode::Mix | StyleMode::NoMix)
    }
}
crate::names::named!(StyleMode, [StyleMode::Mix, StyleMode::NoMix, StyleMode::NoStyles, StyleMode::RandomMix]);

/// The style draws of one iteration.
pub struct StyleDraw {
    /// Bank rows, (B·g²) int64, image-major then cell.
    pub rows: Tensor,
    /// (B, C, 1, 1) mixing weights (None when not mixing).
    pub s: Option<Tensor>,
}

/// Draws bank rows for each (image, cell) and the Beta weights for iteration `step`,
/// on the tables' device (one weight per image and layer1 channel, the tables' width).
pub fn draw(tables: &BankTables, dominant: &[Vec<u8>], mode: StyleMode, alpha: f64, seed: u64, step: u64) -> Result<StyleDraw> {
    let (channels, device) = (tables.mu.size()[1] as usize, tables.mu.device());
    let mut pick = Rng::derive(seed, &[stream::STYLE_PICK, step]);
    let mut rows = Vec::with_capacity(dominant.len() * dominant.first().map_or(0, |d| d.len()));
    for d in dominant {
        for &class in d {
            match tables.pick(class, pick.uniform()) {
                Some(r) => rows.push(r as i64),
                None => crate::error::fail!(
                    Incompatible,
                    "style bank",
                    "the style bank has no styles for class {class} and no ignore-class (255) styles to fall back on"
                ),
            }
        }
    }
    let s = if mode == StyleMode::Mix { Some(beta_weights(dominant.len(), channels, alpha, seed, step, device)?) } else { None };
    Ok(StyleDraw { rows: crate::device::upload(&Tensor::from_slice(&rows), device), s })
}

/// The (B, C, 1, 1) Beta(α, α) mixing weights of iteration `step`, on `device`.
pub(crate) fn beta_weights(images: usize, channels: usize, alpha: f64, seed: u64, step: u64, device: tch::Device) -> Result<Tensor> {
    let beta = Beta::new(alpha, alpha)?;
    let mut rng = Rng::derive(seed, &[stream::MIX_BETA, step]);
    let v: Vec<f32> = (0..images * channels).map(|_| beta.sample(&mut rng) as f32).collect();
    Ok(crate::device::upload(&Tensor::from_slice(&v).view([images as i64, channels as i64, 1, 1]), device))
}

/// Per-patch channel means and standard deviations (sqrt(unbiased var + 1e-5)) of
/// (B, C, H, W) features on a `grid`² grid, each (B, g², C), cell-major as the bank
/// draws (the last row/column of cells takes the remainder).
pub fn patch_stats(f1: &Tensor, grid: usize) -> (Tensor, Tensor) {
    let (b, c) = (f1.size()[0], f1.size()[1]);
    let (h, w) = (f1.size()[2] as usize, f1.size()[3] as usize);
    let rows = crate::data::augment::cell_bounds(h, grid, 1);
    let cols = crate::data::augment::cell_bounds(w, grid, 1);
    let (mut means, mut stds) = (Vec::with_capacity(grid * grid), Vec::with_capacity(grid * grid));
    for &(y0, ph) in &rows {
        for &(x0, pw) in &cols {
            let x = f1.narrow(2, y0 as i64, ph as i64).narrow(3, x0 as i64, pw as i64);
            means.push(x.mean_dim([2i64, 3].as_slice(), false, Kind::Float));
            stds.push((x.var_dim([2i64, 3].as_slice(), true, false) + 1e-5).sqrt());
        }
    }
    let stack = |v: &[Tensor]| Tensor::stack(v, 1).view([b, (grid * grid) as i64, c]);
    (stack(&means), stack(&stds))
}

/// The random-style control's targets for iteration `step`: per (image, cell),
/// statistics drawn around the patch's own (see the module doc), each (B, g², C),
/// without gradient.
pub fn random_targets(f1: &Tensor, grid: usize, seed: u64, step: u64) -> (Tensor, Tensor) {
    tch::no_grad(|| {
        let (mu, sigma) = patch_stats(&f1.detach(), grid);
        let n = mu.size()[0] * mu.size()[1];
        let spread = |t: &Tensor| {
            if n < 2 {
                t.zeros_like().select(0, 0).select(0, 0)
            } else {
                t.flatten(0, 1).std_dim([0i64].as_slice(), true, false)
            }
        };
        let (s_mu, s_sigma) = (spread(&mu), spread(&sigma));
        let normal = rand_distr::StandardNormal;
        let mut rng = Rng::derive(seed, &[stream::RANDOM_STYLE, step]);
        let count = mu.numel();
        let eps: Vec<f32> = (0..2 * count).map(|_| normal.sample(&mut rng)).collect();
        let eps = crate::device::upload(&Tensor::from_slice(&eps), mu.device()).view([2, mu.size()[0], mu.size()[1], mu.size()[2]]);
        let mu_t = &mu + eps.get(0) * &s_mu;
        let sigma_t = (&sigma + eps.get(1) * &s_sigma).clamp_min(1e-3);
        (mu_t, sigma_t)
    })
}

/// Restyles layer1 features with the random-style control's targets and the
/// iteration's Beta weights `s` (B, C, 1, 1).
pub(crate) fn restyle_random(f1: &Tensor, s: &Tensor, grid: usize, seed: u64, step: u64) -> Tensor {
    let (mu_t, sigma_t) = random_targets(f1, grid, seed, step);
    restyle(f1, &mu_t, &sigma_t, Some(s), grid)
}

/// Restyles layer1 features (B, C, H, W) patch by patch. `style_mu`/`style_sigma`:
/// (B, g², C) per (image, cell); `s`: (B, C, 1, 1) or None to apply styles unmixed.
pub fn restyle(f1: &Tensor, style_mu: &Tensor, style_sigma: &Tensor, s: Option<&Tensor>, grid: usize) -> Tensor {
    let (b, c, h, w) = f1.size4().unwrap();
    let g = grid as i64;
    if h % g != 0 || w % g != 0 {
        return restyle_uneven(f1, style_mu, style_sigma, s, grid);
    }
    let (ph, pw) = (h / g, w / g);
    let x = f1.view([b, c, g, ph, g, pw]);
    let mean = x.mean_dim([3i64, 5].as_slice(), true, Kind::Float);
    let std = (x.var_dim([3i64, 5].as_slice(), true, true) + 1e-5).sqrt();
    let norm = (&x - &mean) / &std;
    // (B, g², C) → (B, C, g, 1, g, 1)
    let to_grid = |t: &Tensor| t.view([b, g, g, c]).permute([0, 3, 1, 2]).unsqueeze(3).unsqueeze(5);
    let (mu_t, sd_t) = (to_grid(style_mu), to_grid(style_sigma));
    let (mu_m, sd_m) = match s {
        Some(s) => {
            let s = s.view([b, c, 1, 1, 1, 1]);
            let one_minus = s.neg() + 1.0;
            (&s * &mean + &one_minus * &mu_t, &s * &std + &one_minus * &sd_t)
        }
        None => (mu_t, sd_t),
    };
    (norm * sd_m + mu_m).relu().reshape([b, c, h, w])
}

/// The same for feature maps the grid does not divide (the last row/column of cells
/// takes the remainder): one cell at a time, still batched over images.
fn restyle_uneven(f1: &Tensor, style_mu: &Tensor, style_sigma: &Tensor, s: Option<&Tensor>, grid: usize) -> Tensor {
    let (b, c, h, w) = f1.size4().unwrap();
    let rows = crate::data::augment::cell_bounds(h as usize, grid, 1);
    let cols = crate::data::augment::cell_bounds(w as usize, grid, 1);
    let (means, stds) = patch_stats(f1, grid);
    let cell = |t: &Tensor, k: i64| t.select(1, k).view([b, c, 1, 1]);
    let mut out_rows = Vec::with_capacity(grid);
    for (gy, &(y0, ph)) in rows.iter().enumerate() {
        let band = f1.narrow(2, y0 as i64, ph as i64);
        let mut cells = Vec::with_capacity(grid);
        for (gx, &(x0, pw)) in cols.iter().enumerate() {
            let x = band.narrow(3, x0 as i64, pw as i64);
            let k = (gy * grid + gx) as i64;
            let (mean, std) = (cell(&means, k), cell(&stds, k));
            let norm = (&x - &mean) / &std;
            let (mu_t, sd_t) = (cell(style_mu, k), cell(style_sigma, k));
            let (mu_m, sd_m) = match s {
                Some(s) => {
                    let one_minus = s.neg() + 1.0;
                    (s * &mean + &one_minus * &mu_t, s * &std + &one_minus * &sd_t)
                }
                None => (mu_t, sd_t),
            };
            cells.push((norm * sd_m + mu_m).relu());
        }
        out_rows.push(Tensor::cat(&cells, 3));
    }
    Tensor::cat(&out_rows, 2)
}

/// `restyle` with the draw's bank rows looked up in `tables`.
pub(crate) fn restyle_with(f1: &Tensor, tables: &BankTables, d: &StyleDraw, grid: usize) -> Tensor {
    let (b, c) = (f1.size()[0], f1.size()[1]);
    let cells = (grid * grid) as i64;
    let mu = tables.mu.index_select(0, &d.rows).view([b, cells, c]);
    let sigma = tables.sigma.index_select(0, &d.rows).view([b, cells, c]);
    restyle(f1, &mu, &sigma, d.s.as_ref(), grid)
}
