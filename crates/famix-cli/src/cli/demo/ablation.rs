//! The paper's ablation in miniature: five ways to train the same segmenter on the
//! same day-only data, iterations and seed, each evaluated on the source and on every
//! unseen condition.
//!
//! | row | what trains | styles |
//! |---|---|---|
//! | (i) `full-ft` | everything | none |
//! | (ii) `minimal` | layer4's last block + head (the freeze policy) | none |
//! | (iii) `styles-no-mix` | as (ii) | generic vocabulary, applied unmixed |
//! | (iv) `famix` | as (ii) | generic vocabulary, local mixing |
//! | (v) `poda` | as (ii) | prompts naming the test conditions, local mixing |
//! | (vi) `random-styles` | as (ii) | none: statistics drawn around the source's, local mixing |
//!
//! The generic vocabulary is the demo world's stand-in for the paper's twenty random
//! styles: the ten photographic styles the demo CLIP learnt from its captions, each
//! mapped a priori to a style of the paper's list (see `famix_synth::Condition`:
//! sepia ↔ Rustic Charm, misty ↔ Ethereal Mist, noir ↔ Dystopian Noir, neon ↔
//! Cyberpunk Cityscape, ...). It names no driving condition;
//! (v) is the contrast that *does* name them (PØDA's premise: the target is
//! described), so it is an oracle of sorts, not a domain-generalisation method.
//! (vi) is the control without language: the same local mixing with per-patch
//! statistics drawn at random around the source's (`StyleMode::RandomMix`), so
//! (iv) − (vi) is what mining styles with words adds to style randomisation.
//! Validation during training uses the source (it chooses `best`); the validation
//! condition is monitored at the same iterations (learning curves, never a choice);
//! the final weights are evaluated.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use famix::data::{Dataset, DatasetKind};
use famix::eval::{evaluate, EvalOptions};
use famix::io::run_folder::RunFolder;
use famix::io::sha256_file;
use famix::model::{FreezePolicy, HeadConfig};
use famix::report::{write_report, ReportOptions};
use famix::style::mining::{mine, run_identity, MineSettings, Miner};
use famix::style::mixing::StyleMode;
use famix::style::prompts::PromptSet;
use famix::style::PinConfig;
use famix::train::{train, RunOptions, TrainConfig, ValSpec};
use famix::{Progress, Segmenter, Silent};
use famix_synth::Condition;

use super::world::World;

/// A row of the ablation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Row {
    /// (i) full fine-tuning.
    FullFt,
    /// (ii) minimal fine-tuning.
    Minimal,
    /// (iii) + language-driven styles, no mixing.
    StylesNoMix,
    /// (iv) FAMix.
    Famix,
    /// (v) PØDA-style prompts naming the target conditions.
    Poda,
    /// (vi) random styles: local mixing with statistics drawn around the source's.
    RandomStyles,
}

impl Row {
    /// Every row, in table order.
    pub const ALL: [Row; 6] = [Row::FullFt, Row::Minimal, Row::StylesNoMix, Row::Famix, Row::Poda, Row::RandomStyles];

    /// The row's id in results.json.
    pub fn id(self) -> &'static str {
        match self {
            Row::FullFt => "full-ft",
            Row::Minimal => "minimal",
            Row::StylesNoMix => "styles-no-mix",
            Row::Famix => "famix",
            Row::Poda => "poda",
            Row::RandomStyles => "random-styles",
        }
    }

    /// Its name in tables and figures.
    pub fn title(self) -> &'static str {
        match self {
            Row::FullFt => "(i) full fine-tuning",
            Row::Minimal => "(ii) minimal fine-tuning",
            Row::StylesNoMix => "(iii) + styles, no mixing",
            Row::Famix => "(iv) FAMix",
            Row::Poda => "(v) PØDA-style prompts (name the test conditions)",
            Row::RandomStyles => "(vi) random styles (no language)",
        }
    }

    fn freeze(self) -> FreezePolicy {
        if self == Row::FullFt {
            FreezePolicy::Nothing
        } else {
            FreezePolicy::Synthetic
        }
    }

    fn style_mode(self) -> StyleMode {
        match self {
            Row::FullFt | Row::Minimal => StyleMode::NoStyles,
            Row::StylesNoMix => StyleMode::NoMix,
            Row::Famix | Row::Poda => StyleMode::Mix,
            Row::RandomStyles => StyleMode::RandomMix,
        }
    }

    fn vocabulary(self) -> Option<Vocabulary> {
        match self {
            Row::FullFt | Row::Minimal | Row::RandomStyles => None,
            Row::StylesNoMix | Row::Famix => Some(Vocabulary::Generic),
            Row::Poda => Some(Vocabulary::TestConditions),
        }
    }
}

/// The style words a bank is mined with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vocabulary {
    /// Photographic styles of the CLIP's world; no driving condition.
    Generic,
    /// The test conditions' words (PØDA-style).
    TestConditions,
}

impl Vocabulary {
    fn words(self, tests: &[Condition]) -> Vec<String> {
        match self {
            Vocabulary::Generic => Condition::ALL.iter().filter(|c| c.is_style()).map(|c| c.word().to_string()).collect(),
            Vocabulary::TestConditions => tests.iter().map(|c| c.word().to_string()).collect(),
        }
    }
    fn id(self) -> &'static str {
        match self {
            Vocabulary::Generic => "generic",
            Vocabulary::TestConditions => "test-conditions",
        }
    }
}

/// The demo's training and mining settings (chosen on the source validation and the
/// validation condition, see README).
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Training iterations per run.
    pub iters: u64,
    /// Batch size.
    pub batch: usize,
    /// Crop size.
    pub crop: usize,
    /// Head learning rate.
    pub lr: f64,
    /// The reference's augmentation (colour jitter, flip).
    pub augment: bool,
    /// Mining batches (None: every batch of `mine_passes` passes).
    pub mine_batches: Option<u64>,
    /// Passes over the source's training images, each with new random crops: the paper
    /// mines 25,000 GTA5 images, enough for every class to be the dominant class of
    /// some patch; the miniature's 200 need several crops each for the rarest classes
    /// (traffic lights, poles, bicycles) to dominate one.
    pub mine_passes: u64,
    /// Crops per mining batch (the paper's 16).
    pub mine_batch: usize,
    /// Mining crop size (divisible by 4 × the 3×3 grid).
    pub mine_crop: usize,
    /// PIN steps per style.
    pub pin_iters: usize,
    /// Rows to train.
    pub rows: Vec<Row>,
    /// The unseen test conditions.
    pub tests: Vec<Condition>,
    /// The validation condition (settings may be chosen on it; never a test condition).
    pub validation: Condition,
}

/// One trained model's evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Its row.
    pub row: Row,
    /// Its seed.
    pub seed: u64,
    /// Its final checkpoint.
    pub checkpoint: PathBuf,
    /// mIoU in % on "source" and on each condition.
    pub miou: BTreeMap<String, f64>,
}

/// The prompts of a vocabulary: FAMix's classes and ignore prompt, templates in the
/// demo world's caption language, the vocabulary's words as styles.
fn prompts(v: Vocabulary, tests: &[Condition]) -> PromptSet {
    PromptSet {
        templates: ["a photo of a {}.", "a {} on a street.", "a street with a {}."].map(String::from).to_vec(),
        random_styles: v.words(tests),
        ..PromptSet::default()
    }
}

/// A mined bank: its file, its PIN loss curve (mean over batches), its styles, the
/// classes (not the ignore class) that have any and those the source's labels hold.
pub struct MinedBank {
    /// The bank file.
    pub path: PathBuf,
    /// (step, mean PIN loss).
    pub pin_curve: Vec<(usize, f64)>,
    /// Styles in all.
    pub styles: usize,
    /// Names of the classes with styles.
    pub with_styles: Vec<String>,
    /// Names of the classes that occur in the source's training labels.
    pub in_source: Vec<String>,
}

impl MinedBank {
    /// Classes of the source's training labels that have no style.
    pub fn missing(&self) -> Vec<&str> {
        self.in_source.iter().filter(|c| !self.with_styles.contains(c)).map(String::as_str).collect()
    }
}

/// The classes (train ids, not the ignore class) that occur in a dataset's labels.
fn classes_in_labels(ds: &Dataset) -> Result<BTreeSet<u8>> {
    let mut seen = [false; 256];
    for i in 0..ds.len() {
        ds.load(i)?.1.data.iter().for_each(|&v| seen[v as usize] = true);
    }
    Ok((0..255u8).filter(|&c| seen[c as usize]).collect())
}

/// Mines a style bank with vocabulary `v` for `seed` into `out`.
fn mine_bank(world: &World, s: &Settings, v: Vocabulary, seed: u64, out: &Path, device: tch::Device) -> Result<MinedBank> {
    let clip = famix::clip::Clip::load(&world.clip, device, famix::clip::OutputStride::Os32)?;
    let prompts = prompts(v, &s.tests);
    let pin = PinConfig { iters: s.pin_iters, ..Default::default() };
    let settings = MineSettings {
        batch: s.mine_batch,
        crop: s.mine_crop,
        seed,
        passes: s.mine_passes,
        limit: s.mine_batches,
        group: 2,
        save_every: 1000,
        ..MineSettings::reference(famix::data::prefetch::default_workers())
    };
    let src = Arc::new(Dataset::open(DatasetKind::Folder, world.root(Condition::Day), "train", None)?);
    let bank = out.join(format!("styles-{}.safetensors", v.id()));
    let _ = std::fs::remove_file(&bank);
    let classes = famix::data::classes::ClassSet::cityscapes();
    let identity = run_identity(&sha256_file(&world.clip)?, &src, &settings, &pin, &prompts, &classes);
    let in_source = classes_in_labels(&src)?;
    let mined = mine(&mut Miner::new(&clip, &prompts, &pin)?, src, &settings, &bank, identity, false, &Silent)?;
    let names = classes.names();
    let name = |c: u8| names.get(c as usize).cloned().unwrap_or_else(|| c.to_string());
    Ok(MinedBank {
        path: bank,
        pin_curve: mined.summary.pin_curve(),
        styles: mined.total(),
        with_styles: (0..classes.len() as u8).filter(|&c| mined.count(c) > 0).map(name).collect(),
        in_source: in_source.into_iter().map(name).collect(),
    })
}

/// Validations per run: the points of each learning curve.
const CURVE_POINTS: u64 = 5;

fn train_config(world: &World, s: &Settings, row: Row, seed: u64, bank: Option<PathBuf>) -> Result<TrainConfig> {
    let source = world.root(Condition::Day).to_path_buf();
    let reference = TrainConfig::reference(world.clip.clone(), sha256_file(&world.clip)?, DatasetKind::Folder, source.clone(), bank);
    Ok(TrainConfig {
        iters: s.iters,
        batch: s.batch,
        crop: s.crop,
        lr: s.lr,
        augment: s.augment,
        freeze: row.freeze(),
        style_mode: row.style_mode(),
        head: HeadConfig::tiny(19),
        val: Some(ValSpec::val_split(DatasetKind::Folder, source)),
        monitor: [(s.validation.name().to_string(), ValSpec::val_split(DatasetKind::Folder, world.root(s.validation).to_path_buf()))]
            .into(),
        val_interval: (s.iters / CURVE_POINTS).max(1),
        seed,
        ..reference
    })
}

/// mIoU (%) of a model on the source's and every condition's validation split.
fn evaluate_all(model: &Segmenter, world: &World, s: &Settings) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    let sets = std::iter::once(("source".to_string(), Condition::Day))
        .chain(std::iter::once(s.validation).chain(s.tests.iter().copied()).map(|c| (c.name().to_string(), c)));
    for (name, c) in sets {
        let ds = Dataset::open(DatasetKind::Folder, world.root(c), "val", None)?;
        let rep = evaluate(model, &ds, &EvalOptions::default(), &Silent)?;
        out.insert(name, rep.metrics.miou * 100.0);
    }
    Ok(out)
}

/// Mines the style banks the rows need, once (the paper mines once per source
/// dataset, not per training seed), into `out/styles-<vocabulary>.safetensors`.
pub fn mine_banks(world: &World, s: &Settings, seed: u64, out: &Path, device: tch::Device) -> Result<BTreeMap<&'static str, MinedBank>> {
    let mut banks = BTreeMap::new();
    for v in s.rows.iter().filter_map(|r| r.vocabulary()) {
        if let std::collections::btree_map::Entry::Vacant(e) = banks.entry(v.id()) {
            e.insert(mine_bank(world, s, v, seed, out, device)?);
        }
    }
    Ok(banks)
}

/// Trains and evaluates every row for one seed under `out/seed-<seed>/`, each run with
/// its report (`RUN/report/index.html`).
pub fn run_seed(
    world: &World,
    s: &Settings,
    banks: &BTreeMap<&'static str, MinedBank>,
    seed: u64,
    out: &Path,
    device: tch::Device,
    progress: &dyn Progress,
) -> Result<Vec<RunResult>> {
    let dir = out.join(format!("seed-{seed}"));
    std::fs::create_dir_all(&dir)?;
    let mut results = Vec::new();
    for &row in &s.rows {
        let run = dir.join(row.id());
        let _ = std::fs::remove_dir_all(&run);
        let bank = row.vocabulary().map(|v| banks[v.id()].path.clone());
        let cfg = train_config(world, s, row, seed, bank)?;
        // The tiny model is loader-bound on two cores: two decoding threads keep it fed
        // (the data order and augmentation do not depend on the thread count).
        train(&cfg, &run, false, &RunOptions { workers: 2, ..RunOptions::new(device) }, progress)?;
        write_report(&run, &run.join("report"), &ReportOptions { samples: 2, device })?;
        let checkpoint = RunFolder::new(&run).latest();
        let model = Segmenter::load(&checkpoint, device)?;
        results.push(RunResult { row, seed, checkpoint, miou: evaluate_all(&model, world, s)? });
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        demo: super::super::DemoArgs,
    }

    /// `famix demo`'s bank has a style for every class of the source's training labels:
    /// the demo's world and mining settings, one PIN step per style. Which patches are
    /// mined (their dominant classes) does not depend on the CLIP's weights, so a test
    /// CLIP stands in for the pretrained one.
    #[test]
    fn the_demo_bank_has_styles_for_every_class_of_the_source() {
        let args = Cli::parse_from(["demo"]).demo;
        let (ws, s) = (super::super::world_settings(&args), super::super::settings(&args));
        let dir = tempfile::tempdir().unwrap();
        let sets = super::super::world::segmentation_sets(dir.path(), &ws).unwrap();
        let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip_a.safetensors.gz");
        let world = World { sets, clip, cached: true };
        let s = Settings { pin_iters: 1, ..s };
        let bank = mine_bank(&world, &s, Vocabulary::Generic, ws.seed, dir.path(), tch::Device::Cpu).unwrap();
        assert_eq!(bank.in_source.len(), 17, "the world draws 17 of Cityscapes' classes: {:?}", bank.in_source);
        assert!(bank.missing().is_empty(), "no style for {:?} (styles for {:?})", bank.missing(), bank.with_styles);
    }
}
