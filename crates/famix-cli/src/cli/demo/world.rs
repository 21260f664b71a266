//! The demo's world: the segmentation data (the same street layouts under the source
//! condition, day, and under every other condition) and the demo CLIP, pretrained on
//! captioned images of *every* condition and style from other layouts — the paper's
//! premise in miniature: CLIP saw the world under many conditions, described in words;
//! the segmenter sees labels for day only.
//!
//! The CLIP is cached under the per-user cache, keyed by everything that defines it
//! (world settings, pretraining settings, seed, famix's world version), so a second
//! demo skips pretraining; an interrupted pretraining resumes from its checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use famix::clip::pretrain::{clip_path, pretrain, PretrainConfig, PretrainOptions};
use famix::clip::{ResNetConfig, TextConfig};
use famix::io::run_folder::{RunFolder, RunState};
use famix_synth::{write_captioned, write_segmentation, Condition, SynthSize};

/// Changes whenever the generator or the caption grammar changes what it draws, so a
/// cached CLIP of an older world is not reused.
const WORLD_VERSION: u32 = 6;
/// Changes whenever pretraining computes something else for the same settings (2: the
/// initialisation draws in a fixed order; before, a hash map's order varied by process).
const PRETRAIN_VERSION: u32 = 2;

/// Sizes of the demo's data and of the CLIP's pretraining.
#[derive(Debug, Clone, Serialize)]
pub struct WorldSettings {
    /// Image size.
    pub size: SynthSize,
    /// Source training scenes.
    pub train: usize,
    /// Validation/test scenes per condition.
    pub val: usize,
    /// Captioned images for the CLIP.
    pub captioned: usize,
    /// Pretraining steps.
    pub pretrain_iters: u64,
    /// Pretraining batch.
    pub pretrain_batch: usize,
    /// CLIP input resolution.
    pub resolution: i64,
    /// Text context.
    pub context: i64,
    /// Seed of the world and of the CLIP.
    pub seed: u64,
}

/// Where the demo's data lives.
pub struct World {
    /// `folder` dataset per condition (`data/<condition>`).
    pub sets: Vec<(Condition, PathBuf)>,
    /// The pretrained demo CLIP.
    pub clip: PathBuf,
    /// Whether it came from the cache.
    pub cached: bool,
}

impl World {
    /// The dataset root of a condition.
    pub fn root(&self, c: Condition) -> &Path {
        &self.sets.iter().find(|(k, _)| *k == c).expect("every driving condition is generated").1
    }
}

fn workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// Generates the segmentation sets under `out/data` (unless already there).
pub(super) fn segmentation_sets(out: &Path, s: &WorldSettings) -> Result<Vec<(Condition, PathBuf)>> {
    let root = out.join("data");
    let stamp = root.join("world.json");
    let want = serde_json::json!({"version": WORLD_VERSION, "size": s.size, "train": s.train, "val": s.val, "seed": s.seed});
    if famix::io::read_json::<serde_json::Value>(&stamp).ok() != Some(want.clone()) {
        let _ = std::fs::remove_dir_all(&root);
        let splits = [("train".to_string(), s.train), ("val".to_string(), s.val)];
        write_segmentation(&root, &Condition::DRIVING, &splits, s.size, s.seed, workers())?;
        famix::io::atomic_write_json(&stamp, &want)?;
    }
    Ok(Condition::DRIVING.iter().map(|&c| (c, root.join(c.name()))).collect())
}

/// The pretraining configuration of the demo CLIP (tiny architecture).
fn pretrain_config(captions: PathBuf, s: &WorldSettings) -> PretrainConfig {
    let visual = ResNetConfig { input_resolution: s.resolution, ..ResNetConfig::tiny() };
    let text = TextConfig { context_length: s.context, ..TextConfig::tiny() };
    let mut c = PretrainConfig::new(captions, visual, text, s.pretrain_iters);
    c.batch = s.pretrain_batch;
    c.lr = 1e-3;
    c.seed = s.seed;
    c.save_interval = 50;
    c
}

/// The cache folder of the demo CLIP with these settings.
pub fn clip_cache_dir(cache: &Path, s: &WorldSettings) -> PathBuf {
    let key = serde_json::json!({"world": WORLD_VERSION, "pretrain": PRETRAIN_VERSION, "settings": s}).to_string();
    let digest = famix::io::sha256_hex(key.as_bytes());
    cache.join(format!("demo-clip-{}", &digest[..16]))
}

/// The demo CLIP: from the cache (true), or pretrained into it (false).
fn demo_clip(cache: &Path, s: &WorldSettings, device: tch::Device, progress: &dyn famix::Progress) -> Result<(PathBuf, bool)> {
    let dir = clip_cache_dir(cache, s);
    let run = RunFolder::new(dir.join("run"));
    if done_steps(&run) == Some(s.pretrain_iters) && clip_path(run.dir()).exists() {
        return Ok((clip_path(run.dir()), true));
    }
    eprintln!("           pretraining the demo CLIP (once per machine; cached in {})", dir.display());
    let captions = dir.join("captioned").join("captions.jsonl");
    if !captions.exists() {
        write_captioned(&dir.join("captioned"), &Condition::ALL, s.captioned, s.size, s.seed + 1000, workers())?;
    }
    let resume = run.config().exists();
    let cfg = if resume { famix::io::run_folder::read_config(&run)? } else { pretrain_config(captions, s) };
    let opts = PretrainOptions {
        device,
        workers: workers().saturating_sub(1).max(1),
        stop_after: None,
        tensorboard: None,
        reset_optimizer: false,
    };
    let summary = pretrain(&cfg, run.dir(), resume, &opts, progress).context("pretraining the demo CLIP")?;
    Ok((summary.clip, false))
}

/// Steps done by the run's latest checkpoint, if it has one.
fn done_steps(run: &RunFolder) -> Option<u64> {
    let f = famix::io::archive::load_file(&run.latest()).ok()?;
    let state: RunState = serde_json::from_str(f.metadata.get(famix::io::run_folder::STATE_KEY)?).ok()?;
    Some(state.step)
}

/// Builds (or finds) the world and the CLIP.
pub fn make(out: &Path, cache: &Path, s: &WorldSettings, device: tch::Device, progress: &dyn famix::Progress) -> Result<World> {
    let sets = segmentation_sets(out, s)?;
    let (clip, cached) = demo_clip(cache, s, device, progress)?;
    Ok(World { sets, clip, cached })
}
