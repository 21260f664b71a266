//! The style-mining run (docs/src/design.md, "Style mining"): streams crops of the source
//! dataset, selects one patch per dominant class in each batch, picks a prompt per
//! patch (seeded by the batch index), runs patch-wise PIN (`style::pin`) and
//! appends the learnt μ, σ to the style bank, saving it every few batches so an
//! interrupted run resumes exactly where it stopped.

use std::path::Path;
use std::sync::Arc;

use tch::Tensor;

use crate::error::{fail, Context, Error, Result};
use crate::progress::{Progress, Unit};
use crate::style::pin::{gather_patches, optimise, select_patches, PinConfig, PinProblem, PinResult, Selection};

use crate::clip::Clip;
use crate::data::augment::TrainAugment;
use crate::data::classes::ClassSet;
use crate::data::loader::{batches_per_epoch, Batch, BatchLoader, LoaderConfig};
use crate::data::Dataset;
use crate::model::inference::normalize_u8;
use crate::rng::{stream, Rng};
use crate::shard::Shard;
use crate::style::bank::{StyleBank, StyleOrigin};
use crate::style::prompts::{PromptEmbedder, PromptSet};

#[derive(Debug, Clone)]
/// How a mining run reads data and saves.
pub struct MineSettings {
    /// Crops per batch.
    pub batch: usize,
    /// Crop size.
    pub crop: usize,
    /// Seed of data order, crops and prompt choice.
    pub seed: u64,
    /// Passes over the dataset (the reference: 1). Each pass shuffles the images again
    /// and draws new random crops (the loader seeds crops by pass and image), so a small
    /// dataset's rare classes get more chances to be the dominant class of a patch.
    pub passes: u64,
    /// Mine at most this many batches (default: every batch of `passes` passes).
    pub limit: Option<u64>,
    /// Batches optimised together in one launch.
    pub group: usize,
    /// Write the bank every N batches (and at the end).
    pub save_every: u64,
    /// Target-aware mining: this description instead of random styles.
    pub description: Option<String>,
    /// Decoding threads.
    pub workers: usize,
    /// Replace unreadable samples by the next readable one.
    pub skip_bad: bool,
    /// Mine only this shard's batches (whole launch groups, see [`shard_batches`]).
    pub shard: Option<Shard>,
    /// CUDA numerics (applied by [`mine`]; recorded in the bank's settings when not
    /// libtorch's defaults).
    pub numerics: crate::device::Numerics,
}

impl MineSettings {
    /// The reference's mining run (batches of 16 crops of 768², seed 1, one pass over
    /// the dataset), one batch per launch, saving every 10 batches.
    pub fn reference(workers: usize) -> Self {
        MineSettings {
            batch: 16,
            crop: 768,
            seed: 1,
            passes: 1,
            limit: None,
            group: 1,
            save_every: 10,
            description: None,
            workers,
            skip_bad: false,
            shard: None,
            numerics: crate::device::Numerics::default(),
        }
    }
}

/// The most batches one run mines (its list of batches is held in memory).
const MAX_BATCHES: u64 = 10_000_000;

/// The batches of a run of `total` batches that `shard` mines, in order: whole launch
/// groups (`group` batches) `g` with `g mod N = I`, so every group is optimised exactly
/// as in the unsharded run. Without a shard: all of them.
pub fn shard_batches(total: u64, group: usize, shard: Option<Shard>) -> Vec<u64> {
    let group = group.max(1) as u64;
    (0..total).filter(|b| shard.is_none_or(|s| s.owns((b / group) as usize))).collect()
}

/// The settings a resumed run must share with the run it continues (and the parts of
/// a sharded run with each other: with a shard, `shard` holds index, count and group).
pub fn run_identity(
    clip_sha: &str,
    ds: &Dataset,
    s: &MineSettings,
    pin: &PinConfig,
    prompts: &PromptSet,
    classes: &ClassSet,
) -> serde_json::Value {
    let mut v = identity_fields(clip_sha, ds, s, pin, prompts);
    if let Some(c) = classes.unless_cityscapes() {
        v["classes"] = serde_json::json!(c);
    }
    if s.passes != 1 {
        // Only when not the reference's one pass, so banks written before the setting
        // existed keep their identity (and can be resumed).
        v["passes"] = serde_json::json!(s.passes);
    }
    if let Some(sh) = s.shard {
        v["shard"] = serde_json::json!({"index": sh.index, "count": sh.count, "group": s.group.max(1)});
    }
    if s.numerics != crate::device::Numerics::default() {
        v["numerics"] = serde_json::json!(s.numerics);
    }
    v
}

fn identity_fields(clip_sha: &str, ds: &Dataset, s: &MineSettings, pin: &PinConfig, prompts: &PromptSet) -> serde_json::Value {
    serde_json::json!({
        "clip_sha256": clip_sha,
        "dataset": ds.kind.name(), "data_root": ds.root.display().to_string(), "split": ds.split,
        "condition": ds.condition, "batch": s.batch, "crop": s.crop, "seed": s.seed, "grid": pin.grid,
        "iters": pin.iters, "lr": pin.lr, "momentum": pin.momentum, "weight_decay": pin.weight_decay,
        "prompt": s.description, "random_styles": prompts.random_styles, "templates": prompts.templates.len(),
    })
}

/// The bank a run writes into: the one at `out` when resuming (its settings must
/// equal `identity`, the data root aside), else a new one.
fn open_bank(out: &Path, resume: bool, identity: serde_json::Value, channels: usize, classes: &ClassSet) -> Result<StyleBank> {
    if !(resume && out.exists()) {
        let mut b = StyleBank::new(channels, classes.clone());
        b.summary.config = identity;
        return Ok(b);
    }
    let b = StyleBank::load(out)?;
    let (saved, now) = (settings_without(&b.summary.config, &[]), settings_without(&identity, &[]));
    if saved != now {
        fail!(
            Incompatible,
            out,
            "{}: the bank was mined with other settings; resume needs the same ones\n  bank: {}\n  now:  {}",
            out.display(),
            saved,
            now
        );
    }
    Ok(b)
}

/// A run identity with the data root (which may differ between machines mounting the
/// same data) and the `extra` keys left out: what two runs must share to continue or
/// complete each other.
fn settings_without(config: &serde_json::Value, extra: &[&str]) -> serde_json::Value {
    let mut c = config.clone();
    if let Some(o) = c.as_object_mut() {
        for k in ["data_root"].iter().chain(extra) {
            o.remove(*k);
        }
    }
    c
}

/// Appends a mined batch's styles to the bank.
fn add_to_bank(bank: &mut StyleBank, m: MinedBatch) -> Result<f64> {
    let mu = m.result.mu.to_device(tch::Device::Cpu);
    let sigma = m.result.sigma.to_device(tch::Device::Cpu);
    let last = *m.result.losses.last().unwrap_or(&f64::NAN);
    for (i, (p, t)) in m.selections.iter().zip(m.prompts).enumerate() {
        let mv = Vec::<f32>::try_from(mu.get(i as i64))?;
        let sv = Vec::<f32>::try_from(sigma.get(i as i64))?;
        bank.push(p.class, mv, sv, Some(StyleOrigin { batch: m.index, patch: p.patch, prompt: t, final_loss: last }));
    }
    let diverged = |what: String| format!("PIN diverged in mining batch {} ({what}); lower `lr`", m.index);
    if !last.is_finite() {
        fail!(Diverged, "{}", diverged(format!("loss {last}")));
    }
    for c in m.selections.iter().map(|p| p.class) {
        bank.check_values(c).map_err(|e| Error::Diverged { problem: diverged(e.to_string()) })?;
    }
    bank.summary.batch_losses.push(last);
    bank.summary.pin_curves.push(super::bank::sample_curve(&m.result.losses));
    // Batches of this run's list done (the global index + 1 for an unsharded run).
    bank.summary.batches_done += 1;
    Ok(last)
}

/// Mines `s.passes` dataset passes (or `s.limit` batches) into the bank at `out`,
/// resuming from its saved progress when `resume` is set. Returns the finished bank.
pub fn mine(
    miner: &mut Miner,
    ds: Arc<Dataset>,
    s: &MineSettings,
    out: &Path,
    identity: serde_json::Value,
    resume: bool,
    progress: &dyn Progress,
) -> Result<StyleBank> {
    let (clip, pin) = (miner.clip, miner.pin);
    check_settings(s, pin)?;
    s.numerics.apply()?;
    let _lock = crate::io::FolderLock::acquire(out, "a mining run")?;
    crate::io::clean_temp_siblings(out)?;
    crate::io::clean_temp_siblings(&crate::style::bank::sidecar(out))?;
    let per_epoch = batches_per_epoch(ds.len(), s.batch);
    if per_epoch == 0 {
        fail!(InvalidInput, &ds.root, "{} has fewer samples than one batch of {}", ds.describe(), s.batch);
    }
    let all = per_epoch.saturating_mul(s.passes);
    let total = s.limit.map(|l| l.min(all)).unwrap_or(all);
    if total > MAX_BATCHES {
        let problem = format!("{} passes of {per_epoch} batches are more than the {MAX_BATCHES} batches one run mines", s.passes);
        return Err(Error::invalid_setting("passes", problem));
    }
    let channels = clip.visual.config.low_level_channels() as usize;
    let mut bank = open_bank(out, resume, identity, channels, &miner.classes)?;
    let list = shard_batches(total, s.group, s.shard);
    let start = bank.summary.batches_done as usize;
    bank.summary.batches_total = list.len() as u64;
    if start >= list.len() {
        if !out.exists() {
            // A shard with no batches still leaves its (empty) part for `styles merge`.
            bank.save(out)?;
        }
        return Ok(bank);
    }
    if let Some(note) = ds.issues_note() {
        progress.notice(&note);
    }
    let lc = LoaderConfig {
        batch: s.batch,
        augment: TrainAugment::crop_only(s.crop),
        grid: pin.grid,
        seed: s.seed,
        workers: s.workers,
        prefetch: 2 * s.batch * s.group.max(1),
        skip_bad: s.skip_bad,
    };
    let mut loader = BatchLoader::for_steps(ds, lc, list[start..].to_vec())?;
    progress.start("mine", list.len() as u64, start as u64, Unit::Items);
    let res = mine_loop(miner, s, out, &mut bank, &mut loader, &list, progress);
    progress.finish();
    res?;
    bank.save(out)?;
    Ok(bank)
}

/// The batches of a run, `s.group` per launch, saving the bank every `s.save_every`.
fn mine_loop(
    miner: &mut Miner,
    s: &MineSettings,
    out: &Path,
    bank: &mut StyleBank,
    loader: &mut BatchLoader,
    list: &[u64],
    progress: &dyn Progress,
) -> Result<()> {
    let mut done = bank.summary.batches_done as usize;
    let mut since_save = 0u64;
    loop {
        let mut group = Vec::new();
        while group.len() < s.group.max(1) {
            match loader.next() {
                Some(b) => group.push(b.with_context(|| format!("loading mining batch {}", list[done + group.len()]))?),
                None => break,
            }
        }
        for sk in loader.take_skipped() {
            progress.notice(&format!("skipping unreadable sample {}: {}", sk.path, sk.error));
        }
        if group.is_empty() {
            return Ok(());
        }
        // A group's batches are consecutive in the run (shards take whole groups).
        for m in miner.mine_batches(s.seed, s.description.as_deref(), list[done], &group)? {
            let last = add_to_bank(bank, m)?;
            progress.status(&format!("{} styles, loss {last:.4}", bank.total()));
            progress.advance(1);
        }
        done += group.len();
        since_save += group.len() as u64;
        if since_save >= s.save_every.max(1) {
            bank.save(out)?;
            since_save = 0;
        }
        if progress.cancelled() && done < list.len() {
            bank.save(out)?;
            return Err(Error::Cancelled { what: format!("mining after {done} batches; continue with `resume` into {}", out.display()) });
        }
    }
}

/// Checks the settings a run cannot work with.
pub(crate) fn check_settings(s: &MineSettings, pin: &PinConfig) -> Result<()> {
    let bad = |name: &str, problem: String| Err(Error::invalid_setting(name, problem));
    if s.batch == 0 {
        return bad("batch", "must be at least 1".into());
    }
    if s.passes == 0 {
        return bad("passes", "must be at least 1".into());
    }
    if s.limit == Some(0) {
        return bad("limit", "0 mines nothing; give at least 1".into());
    }
    if pin.grid == 0 {
        return bad("grid", "must be at least 1".into());
    }
    if s.crop == 0 || !s.crop.is_multiple_of(4 * pin.grid) {
        return bad("crop", format!("{} must be positive and divisible by 4 × grid = {}", s.crop, 4 * pin.grid));
    }
    if pin.iters == 0 {
        return bad("iters", "must be at least 1".into());
    }
    if !(pin.lr.is_finite() && pin.lr > 0.0) {
        return bad("lr", format!("{} must be a finite positive number", pin.lr));
    }
    Ok(())
}

/// One mined batch: its selections, prompts and PIN result.
pub struct MinedBatch {
    /// The batch's index in the run.
    pub index: u64,
    /// The mined patches.
    pub selections: Vec<Selection>,
    /// One prompt per mined patch.
    pub prompts: Vec<String>,
    /// The learnt statistics.
    pub result: PinResult,
}

/// What mining a batch needs besides the batch: CLIP (its image tower gives the
/// layer1 features and runs PIN, its text tower the targets, through a cache of
/// prompt embeddings), the prompt vocabulary and PIN's settings.
pub struct Miner<'a> {
    clip: &'a Clip,
    embedder: PromptEmbedder<'a>,
    prompts: &'a PromptSet,
    pin: &'a PinConfig,
    classes: ClassSet,
}

impl<'a> Miner<'a> {
    /// A miner with `clip` (which needs its text tower), `prompts` and `pin`, for the
    /// classes the prompts name (Cityscapes' set when they are its 19 names).
    pub fn new(clip: &'a Clip, prompts: &'a PromptSet, pin: &'a PinConfig) -> Result<Self> {
        // Cityscapes' 19 names give the built-in set itself.
        let classes = ClassSet::default_for(prompts.class_names.len()).renamed(&prompts.class_names);
        Ok(Miner { clip, embedder: PromptEmbedder::new(clip, prompts.templates.clone())?, prompts, pin, classes })
    }

    /// The same miner writing banks for `classes`, whose prompt words the prompts
    /// must use (`PromptSet::class_names = classes.prompt_words()`).
    pub fn with_classes(mut self, classes: ClassSet) -> Result<Self> {
        if self.prompts.class_names != classes.prompt_words() {
            fail!(InvalidSetting, "classes", "the prompts name other classes than the class set");
        }
        self.classes = classes;
        Ok(self)
    }

    /// Mines a group of loaded batches (indices `first`, `first + 1`, ...) in one
    /// launch: layer1 features, patch selection, prompts (seeded per batch index),
    /// text targets, PIN. Shared by [`mine`] and `famix bench`.
    pub fn mine_batches(&mut self, seed: u64, description: Option<&str>, first: u64, batches: &[Batch]) -> Result<Vec<MinedBatch>> {
        let (clip, pin) = (self.clip, self.pin);
        let device = clip.device();
        let mut problems = Vec::with_capacity(batches.len());
        let mut meta = Vec::with_capacity(batches.len());
        for (k, b) in batches.iter().enumerate() {
            let bi = first + k as u64;
            let x = normalize_u8(&b.images, device);
            let f1 = tch::no_grad(|| clip.visual.forward_low(&x, false));
            let sel = select_patches(&b.dominant, pin.grid);
            let mut rng = Rng::derive(seed, &[stream::STYLE_PROMPT, bi]);
            let texts: Vec<String> =
                sel.iter().map(|p| self.prompts.class_prompt(p.class, &mut rng, description)).collect::<Result<_>>()?;
            let targets = Tensor::stack(&texts.iter().map(|t| self.embedder.embed(t)).collect::<Result<Vec<_>>>()?, 0);
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
}

/// Combines the banks of all shards of one sharded mining run into the bank the
/// unsharded run writes: per class, styles in batch order (each batch's styles keep
/// their order), batch losses in batch order, the run's settings without the shard.
/// Every part must be complete and agree on the settings (the data root aside).
pub fn merge_shards(parts: &[(std::path::PathBuf, StyleBank)]) -> Result<StyleBank> {
    let Some((first_path, first)) = parts.first() else { fail!(InvalidInput, "shards", "no banks to merge") };
    let mut shards = Vec::new();
    let mut lists = Vec::new();
    let common = |b: &StyleBank| settings_without(&b.summary.config, &["shard"]);
    for (path, b) in parts {
        let sh = &b.summary.config["shard"];
        let (Some(index), Some(count), Some(group)) = (sh["index"].as_u64(), sh["count"].as_u64(), sh["group"].as_u64()) else {
            fail!(Incompatible, path, "{}: not a shard of a mining run (mined without `shard`)", path.display());
        };
        if common(b) != common(first)
            || sh["count"] != first.summary.config["shard"]["count"]
            || sh["group"] != first.summary.config["shard"]["group"]
        {
            fail!(
                Incompatible,
                path,
                "{} and {} were mined with different settings: not parts of one run",
                first_path.display(),
                path.display()
            );
        }
        if b.summary.batches_done != b.summary.batches_total {
            fail!(
                Incompatible,
                path,
                "{}: shard {index}/{count} is incomplete ({} of {} batches); finish it with `resume`",
                path.display(),
                b.summary.batches_done,
                b.summary.batches_total
            );
        }
        let shard = Shard { index: index as usize, count: count as usize };
        shards.push(shard);
        lists.push((shard, group as usize));
    }
    crate::shard::check_complete(&shards)?;
    let total: u64 = parts.iter().map(|(_, b)| b.summary.batches_total).sum();
    let mut out = StyleBank::new(first.channels, first.classes.clone());
    out.summary.config = first.summary.config.clone();
    if let Some(o) = out.summary.config.as_object_mut() {
        o.remove("shard");
    }
    out.summary.batch_losses = in_batch_order(parts, &lists, total, "batch losses", true, |b| &b.summary.batch_losses)?;
    out.summary.pin_curves = in_batch_order(parts, &lists, total, "PIN curves", false, |b| &b.summary.pin_curves)?;
    let classes: std::collections::BTreeSet<u8> = parts.iter().flat_map(|(_, b)| b.entries.keys().copied()).collect();
    for class in classes {
        merge_class(&mut out, parts, class)?;
    }
    out.summary.batches_done = total;
    out.summary.batches_total = total;
    Ok(out)
}

/// A per-batch list of every part (each in its own batch order) in the run's batch
/// order (the parts' batch lists partition the run's: `check_complete`). A list that is
/// not `required` may be missing from banks written before it existed: then the merged
/// bank has none either.
fn in_batch_order<T: Clone>(
    parts: &[(std::path::PathBuf, StyleBank)],
    lists: &[(Shard, usize)],
    total: u64,
    what: &str,
    required: bool,
    get: impl Fn(&StyleBank) -> &Vec<T>,
) -> Result<Vec<T>> {
    let mut indexed = Vec::with_capacity(total as usize);
    for ((_, b), (shard, group)) in parts.iter().zip(lists) {
        let list = shard_batches(total, *group, Some(*shard));
        let values = get(b);
        if values.is_empty() && !list.is_empty() && !required {
            return Ok(Vec::new());
        }
        if list.len() != values.len() {
            fail!(Incompatible, "shards", "shard {shard}: {} {what} for {} batches", values.len(), list.len());
        }
        indexed.extend(list.into_iter().zip(values.iter().cloned()));
    }
    indexed.sort_by_key(|(bi, _)| *bi);
    Ok(indexed.into_iter().map(|(_, v)| v).collect())
}

/// One class's styles from all parts, in batch order (a stable sort keeps each
/// batch's own order).
fn merge_class(out: &mut StyleBank, parts: &[(std::path::PathBuf, StyleBank)], class: u8) -> Result<()> {
    let mut rows = Vec::new();
    for (path, b) in parts {
        let Some((mu, sigma)) = b.entries.get(&class) else { continue };
        let origins = b.summary.origins.get(&b.key(class)).cloned().unwrap_or_default();
        if origins.len() != mu.len() {
            fail!(InvalidInput, path, "{}: class {} has {} styles but {} origins", path.display(), b.key(class), mu.len(), origins.len());
        }
        rows.extend(mu.iter().zip(sigma).zip(origins).map(|((m, s), o)| (m.clone(), s.clone(), o)));
    }
    rows.sort_by_key(|r| r.2.batch);
    for (m, s, o) in rows {
        out.push(class, m, s, Some(o));
    }
    Ok(())
}

/// A whole `mine-styles` job from files: what the `famix` command and the Python
/// package both run.
#[derive(Debug, Clone)]
pub struct MineJob {
    /// CLIP checkpoint (image and text towers, attention pool).
    pub clip: std::path::PathBuf,
    /// Where CLIP runs.
    pub device: tch::Device,
    /// Source dataset layout, root, split and ACDC condition.
    pub dataset: crate::data::DatasetKind,
    /// Its root folder.
    pub data_root: std::path::PathBuf,
    /// Its split.
    pub split: String,
    /// Its ACDC condition, if any.
    pub condition: Option<String>,
    /// A prompt vocabulary file instead of the default one.
    pub prompts: Option<std::path::PathBuf>,
    /// The classes to mine styles for, when not Cityscapes' (their prompt words
    /// replace the prompt file's class names).
    pub classes: Option<ClassSet>,
    /// The bank to write.
    pub out: std::path::PathBuf,
    /// Continue mining into an existing bank.
    pub resume: bool,
    /// Start over when the bank exists.
    pub force: bool,
}

/// Runs `job` with `s` and `pin`: checks the settings and the files, loads CLIP and
/// the dataset, and mines ([`mine`]) into `job.out`.
pub fn mine_job(job: &MineJob, s: &MineSettings, pin: &PinConfig, progress: &dyn Progress) -> Result<StyleBank> {
    if job.out.exists() && !job.resume && !job.force {
        fail!(InvalidSetting, "out", "{} exists: pass `resume` to continue mining into it, or `force` to start over", job.out.display());
    }
    // Before loading CLIP, so a bad setting fails at once (`mine` checks again, for
    // callers that come to it directly).
    check_settings(s, pin)?;
    let mut prompts = match &job.prompts {
        Some(p) => PromptSet::from_file(p)?,
        None => PromptSet::default(),
    };
    if let Some(c) = &job.classes {
        prompts.class_names = c.prompt_words();
    }
    let clip = Clip::load(&job.clip, job.device, crate::clip::OutputStride::Os32)?;
    clip.text()?;
    if clip.visual.attnpool.is_none() {
        fail!(Incompatible, &job.clip, "{}: the CLIP image tower has no attention pool", job.clip.display());
    }
    let mut ds = Dataset::open(job.dataset, &job.data_root, &job.split, job.condition.as_deref())?;
    let mut miner = Miner::new(&clip, &prompts, pin)?;
    if let Some(c) = &job.classes {
        ds = ds.with_classes(c)?;
        miner = miner.with_classes(c.clone())?;
    }
    let ds = Arc::new(ds);
    ds.require_samples()?;
    // Identified by the class file's set (a prompt file's own names are not part of it).
    let classes = job.classes.clone().unwrap_or_else(ClassSet::cityscapes);
    let identity = run_identity(&crate::io::sha256_file(&job.clip)?, &ds, s, pin, &prompts, &classes);
    mine(&mut miner, ds, s, &job.out, identity, job.resume, progress)
}
