//! `famix mine-styles` and `famix styles show|import`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use famix::data::DatasetKind;
use famix::style::bank::StyleBank;
use famix::style::mining::{mine_job, MineJob, MineSettings};
use famix::style::PinConfig;

/// `text` and the default the library gives the setting (`MineSettings::reference`,
/// `PinConfig::default`): the help prints the library's value instead of restating it.
fn mining_default(text: &str, pick: fn(&MineSettings, &PinConfig) -> f64) -> String {
    format!("{text} [default: {}]", super::number(pick(&MineSettings::reference(1), &PinConfig::default())))
}

fn pin_lr_help() -> String {
    let p = PinConfig::default();
    let text = format!("PIN learning rate (SGD, momentum {}, weight decay {})", super::number(p.momentum), super::number(p.weight_decay));
    mining_default(&text, |_, p| p.lr)
}

#[derive(Args)]
pub struct MineArgs {
    /// CLIP checkpoint with both towers (e.g. RN50.pt)
    #[arg(long)]
    clip: PathBuf,
    /// Source dataset
    #[arg(long, value_parser = super::choice::<DatasetKind>())]
    dataset: DatasetKind,
    /// Source dataset root folder
    #[arg(long)]
    data_root: PathBuf,
    /// Split to mine from
    #[arg(long, default_value = "train")]
    split: String,
    /// ACDC condition (night, snow, rain, fog)
    #[arg(long)]
    condition: Option<String>,
    /// Output style bank (.safetensors; a .json summary is written beside it)
    #[arg(long)]
    out: PathBuf,
    #[arg(long, help = mining_default("Crops per batch", |m, _| m.batch as f64))]
    batch: Option<usize>,
    #[arg(long, help = mining_default("Random crop size, divisible by 4 × grid", |m, _| m.crop as f64))]
    crop: Option<usize>,
    #[arg(long, help = mining_default("PIN iterations per batch", |_, p| p.iters as f64))]
    iters: Option<usize>,
    #[arg(long, help = pin_lr_help())]
    lr: Option<f64>,
    #[arg(long, help = mining_default("Patches per side", |_, p| p.grid as f64))]
    grid: Option<usize>,
    #[arg(long, help = mining_default("Seed for data order, crops and style choice", |m, _| m.seed as f64))]
    seed: Option<u64>,
    #[arg(long, help = mining_default("Passes over the dataset, each with a new order and new random crops (more than one gives a small dataset's rare classes more chances to dominate a patch)", |m, _| m.passes as f64))]
    passes: Option<u64>,
    /// Mine only the first N batches
    #[arg(long)]
    limit: Option<u64>,
    /// Style vocabulary: a JSON list of styles, or a prompts JSON (class_names, templates, random_styles, ignore_class_prompt)
    #[arg(long)]
    styles: Option<PathBuf>,
    /// Class file (JSON): the classes to mine styles for, with the words their prompts use; the bank records it [default: Cityscapes' 19 classes]
    #[arg(long, value_name = "FILE")]
    classes: Option<PathBuf>,
    /// Target-aware mining (PØDA-style): this description instead of random styles, e.g. "driving at night"
    #[arg(long)]
    prompt: Option<String>,
    #[arg(long, help = mining_default("Batches optimised together in one launch (same result as one by one; faster on GPUs)", |m, _| m.group as f64))]
    group: Option<usize>,
    #[arg(long, help = mining_default("Write the bank every N batches (it is always written at the end)", |m, _| m.save_every as f64))]
    save_every: Option<u64>,
    /// Continue an interrupted run from the bank at --out
    #[arg(long)]
    resume: bool,
    /// Overwrite an existing bank at --out
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    shard: super::ShardArgs,
    #[command(flatten)]
    numerics: super::NumericsArgs,
    #[command(flatten)]
    job: super::DataJobArgs,
}

pub fn mine_styles(a: MineArgs) -> Result<i32> {
    let reference = PinConfig::default();
    let pin = PinConfig {
        iters: a.iters.unwrap_or(reference.iters),
        lr: a.lr.unwrap_or(reference.lr),
        grid: a.grid.unwrap_or(reference.grid),
        ..reference
    };
    let mut settings = MineSettings::reference(a.job.workers());
    settings.batch = a.batch.unwrap_or(settings.batch);
    settings.crop = a.crop.unwrap_or(settings.crop);
    settings.seed = a.seed.unwrap_or(settings.seed);
    settings.group = a.group.unwrap_or(settings.group);
    settings.save_every = a.save_every.unwrap_or(settings.save_every);
    settings.passes = a.passes.unwrap_or(settings.passes);
    settings.limit = a.limit;
    settings.description = a.prompt.clone();
    settings.skip_bad = a.job.skip_bad;
    settings.shard = a.shard.shard()?;
    settings.numerics = a.numerics.numerics();
    super::cublas_workspace_for(settings.numerics);
    let job = MineJob {
        clip: a.clip.clone(),
        device: a.job.device.device,
        dataset: a.dataset,
        data_root: a.data_root.clone(),
        split: a.split.clone(),
        condition: a.condition.clone(),
        prompts: a.styles.clone(),
        classes: a.classes.as_ref().map(|p| famix::data::classes::ClassSet::from_file(p)).transpose()?,
        out: a.out.clone(),
        resume: a.resume,
        force: a.force,
    };
    eprintln!("mining styles from {} ({}) with {}", a.data_root.display(), a.dataset.name(), a.clip.display());
    let t0 = std::time::Instant::now();
    let bank = mine_job(&job, &settings, &pin, &super::progress::Bars::default())?;
    eprintln!(
        "{} styles from {} batches in {:.1} s → {}",
        bank.total(),
        bank.summary.batches_done,
        t0.elapsed().as_secs_f64(),
        a.out.display()
    );
    print!("{}", describe(&bank));
    Ok(0)
}

#[derive(Subcommand)]
pub enum StylesCommand {
    /// Per-class counts and statistics of a style bank.
    Show {
        bank: PathBuf,
        /// Print the summary as JSON
        #[arg(long)]
        json: bool,
    },
    /// Combine the banks of all shards of a `mine-styles --shard I/N` run into the bank the unsharded run writes.
    Merge {
        /// The shards' banks (all N, any order)
        #[arg(required = true)]
        banks: Vec<PathBuf>,
        /// The merged bank
        #[arg(long)]
        out: PathBuf,
    },
    /// Convert the reference's saved_params.pkl into a famix style bank.
    Import {
        /// The reference's saved_params.pkl
        pkl: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn describe(bank: &StyleBank) -> String {
    let mut s = format!("{:<14} {:>6} {:>10} {:>10} {:>10} {:>10}\n", "class", "styles", "mean(μ)", "std(μ)", "mean(σ)", "std(σ)");
    let stats = |rows: &Vec<Vec<f32>>| {
        let v: Vec<f64> = rows.iter().flatten().map(|&x| x as f64).collect();
        let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
        let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt();
        (m, sd)
    };
    for (c, (mu, sigma)) in &bank.entries {
        let (mm, ms) = stats(mu);
        let (sm, ss) = stats(sigma);
        s.push_str(&format!("{:<14} {:>6} {:>10.4} {:>10.4} {:>10.4} {:>10.4}\n", bank.key(*c), mu.len(), mm, ms, sm, ss));
    }
    s.push_str(&format!("total {} styles, {} channels", bank.total(), bank.channels));
    if bank.summary.batches_total > 0 {
        s.push_str(&format!(", {}/{} batches mined", bank.summary.batches_done, bank.summary.batches_total));
    }
    s.push('\n');
    s
}

pub fn styles(cmd: StylesCommand) -> Result<i32> {
    match cmd {
        StylesCommand::Show { bank, json } => {
            let b = StyleBank::load(&bank)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&b.summary)?);
            } else {
                print!("{}", describe(&b));
            }
        }
        StylesCommand::Merge { banks, out } => {
            let parts: Vec<(PathBuf, StyleBank)> = banks.iter().map(|p| Ok((p.clone(), StyleBank::load(p)?))).collect::<Result<_>>()?;
            let mut b = famix::style::mining::merge_shards(&parts)?;
            b.save(&out)?;
            eprintln!("merged {} shards → {}", parts.len(), out.display());
            print!("{}", describe(&b));
        }
        StylesCommand::Import { pkl, out } => {
            let mut b = StyleBank::import_reference(&pkl)?;
            b.save(&out)?;
            print!("{}", describe(&b));
        }
    }
    Ok(0)
}
