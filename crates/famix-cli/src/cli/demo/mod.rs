//! `famix demo`: the FAMix paper's ablation in miniature, on a procedural driving
//! world (see `famix_synth`) with a CLIP pretrained on captioned images of
//! that world under every condition ([`world`]). Six training recipes ([`ablation`])
//! on day-only data, three seeds, evaluated on the source and on unseen night, fog,
//! rain and snow; results as JSON, Markdown, a bar chart and a comparison picture
//! ([`results`]).

mod ablation;
mod results;
mod world;

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use famix_synth::{Condition, SynthSize};

use super::progress::Bars;
use ablation::{Row, Settings};
use world::WorldSettings;

/// Passes of style mining over the source's training images (see
/// [`Settings::mine_passes`]): with four, every class of the demo's labels is the
/// dominant class of some mining patch.
const MINE_PASSES: u64 = 4;

#[derive(Args)]
pub struct DemoArgs {
    /// Output folder (data, runs with their reports, results.json/.md/.png, comparison.png)
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// A minute-long version for tests: small data, a short pretraining, few iterations (the numbers mean nothing)
    #[arg(long)]
    quick: bool,
    /// Seeds (comma-separated): each trains every row once
    #[arg(long, default_value = "1,2,3", value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Rows of the ablation to train (comma-separated)
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Row::ALL.to_vec())]
    rows: Vec<Row>,
    /// Training iterations per run [default: 500; --quick: 20]
    #[arg(long)]
    iters: Option<u64>,
    /// Head learning rate (the backbone's is 0.1 ×) [default: 0.1]
    #[arg(long)]
    lr: Option<f64>,
    /// Train without the reference's augmentation (colour jitter 0.8, horizontal flip): better on the source and dusk, far worse on the test conditions (see the miniature's tutorial)
    #[arg(long)]
    no_augment: bool,
    /// Mining batches per style bank [default: every batch of --mine-passes passes]
    #[arg(long, value_parser = at_least_one::<u64>)]
    mine_batches: Option<u64>,
    #[arg(long, value_parser = at_least_one::<u64>, help = format!("Passes of style mining over the source's training images, each with new random crops of 72² in batches of 16 [default: {MINE_PASSES}; --quick: 1]"))]
    mine_passes: Option<u64>,
    /// PIN steps per mined style [default: 100, as the paper; --quick: 3]
    #[arg(long, value_parser = at_least_one::<usize>)]
    pin_iters: Option<usize>,
    /// Pretraining steps of the demo CLIP [default: 200; --quick: 6]
    #[arg(long, value_parser = at_least_one::<u64>)]
    pretrain_iters: Option<u64>,
    /// Input resolution of the demo CLIP (a multiple of 32, 32 to 512) [default: 64]
    #[arg(long, value_parser = clip_resolution)]
    clip_resolution: Option<i64>,
    /// Where the pretrained demo CLIP is cached [default: $XDG_CACHE_HOME/famix or ~/.cache/famix]
    #[arg(long)]
    cache: Option<PathBuf>,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// A count flag of the demo: a whole number, at least 1.
fn at_least_one<T: std::str::FromStr + PartialOrd + From<u8>>(v: &str) -> std::result::Result<T, String> {
    match v.parse::<T>() {
        Ok(n) if n < T::from(1) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{v:?} is not a whole number")),
    }
}

/// `--clip-resolution`: a multiple of 32 (the CLIP ResNet's total stride), 32 to 512.
fn clip_resolution(v: &str) -> std::result::Result<i64, String> {
    let r: i64 = v.parse().map_err(|_| format!("{v:?} is not a whole number"))?;
    if r % 32 != 0 || !(32..=512).contains(&r) {
        return Err(format!("{r} is not a multiple of 32 from 32 to 512"));
    }
    Ok(r)
}

/// The per-user cache folder.
fn default_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("famix")
}

fn world_settings(a: &DemoArgs) -> WorldSettings {
    let size = SynthSize { width: 128, height: 96 };
    if a.quick {
        return WorldSettings {
            size,
            train: 24,
            val: 6,
            captioned: 96,
            pretrain_iters: a.pretrain_iters.unwrap_or(6),
            pretrain_batch: 16,
            resolution: a.clip_resolution.unwrap_or(64),
            context: 32,
            seed: 1,
        };
    }
    WorldSettings {
        size,
        train: 200,
        val: 48,
        captioned: 3000,
        pretrain_iters: a.pretrain_iters.unwrap_or(200),
        pretrain_batch: 128,
        resolution: a.clip_resolution.unwrap_or(64),
        context: 32,
        seed: 1,
    }
}

fn settings(a: &DemoArgs) -> Settings {
    Settings {
        iters: a.iters.unwrap_or(if a.quick { 20 } else { 500 }),
        batch: 8,
        crop: 64,
        lr: a.lr.unwrap_or(0.1),
        augment: !a.no_augment,
        mine_batches: a.mine_batches,
        mine_passes: a.mine_passes.unwrap_or(if a.quick { 1 } else { MINE_PASSES }),
        mine_batch: 16,
        mine_crop: 72,
        pin_iters: a.pin_iters.unwrap_or(if a.quick { 3 } else { 100 }),
        rows: a.rows.clone(),
        tests: vec![Condition::Night, Condition::Fog, Condition::Rain, Condition::Snow],
        validation: Condition::Dusk,
    }
}

pub fn demo(a: DemoArgs) -> Result<i32> {
    if a.seeds.is_empty() || a.rows.is_empty() {
        bail!("--seeds and --rows need at least one value each");
    }
    let t0 = std::time::Instant::now();
    let step = |s: &str| eprintln!("[{:6.1} s] {s}", t0.elapsed().as_secs_f64());
    std::fs::create_dir_all(&a.out)?;
    let (ws, s) = (world_settings(&a), settings(&a));
    let cache = a.cache.clone().unwrap_or_else(default_cache);
    step("1/4 the world: street scenes under day, dusk, night, fog, rain, snow; the demo CLIP (pretrained on captioned scenes of every condition, cached)");
    let world = world::make(&a.out, &cache, &ws, a.device.device, &Bars::default())?;
    eprintln!("           CLIP: {}{}", world.clip.display(), if world.cached { " (cached)" } else { " (pretrained now)" });
    step("2/4 mining the style banks (patch-wise PIN, once for all seeds)");
    let banks = ablation::mine_banks(&world, &s, ws.seed, &a.out, a.device.device)?;
    for (name, b) in &banks {
        eprintln!("           {name} bank: {}", results::describe_bank(b));
    }
    let mut all = Vec::new();
    let training = std::time::Instant::now();
    for (i, &seed) in a.seeds.iter().enumerate() {
        // After the first seed, the time left is the mean time per seed so far.
        let left = (i > 0).then(|| training.elapsed().as_secs_f64() / i as f64 * (a.seeds.len() - i) as f64);
        let eta = left.map(|l| format!("; about {:.0} min left", (l / 60.0).ceil())).unwrap_or_default();
        step(&format!("3/4 seed {seed} ({}/{}): training {} rows on day only, evaluating each{eta}", i + 1, a.seeds.len(), s.rows.len()));
        all.extend(ablation::run_seed(&world, &s, &banks, seed, &a.out, a.device.device, &Bars::default())?);
    }
    step("4/4 writing results.json, results.md, results.png, curves.png, pin.png, comparison.png");
    let curves = results::row_curves(&s, &all)?;
    let json = results::write_json(&a.out, &world, &s, &banks, &all, &curves)?;
    let md = results::write_markdown(&a.out, &s, &all, &curves, &a.seeds)?;
    let chart = results::write_chart(&a.out, &s, &all)?;
    let curve_plot = results::write_curves(&a.out, &s, &curves)?;
    let pin = results::write_pin_curves(&a.out, &banks)?;
    let picture = results::write_comparison(&a.out, &world, &s, &all, a.device.device)?;
    print_table(&s, &all);
    if let Some(line) = results::describe_convergence(&curves) {
        println!("{line}");
    }
    println!("\nfamix demo finished in {:.1} s", t0.elapsed().as_secs_f64());
    for p in [&json, &md, &chart, &curve_plot, &picture].into_iter().chain(pin.as_ref()) {
        println!("  {}", p.display());
    }
    Ok(0)
}

fn print_table(s: &Settings, all: &[ablation::RunResult]) {
    let cols = results::columns(s);
    let sum = results::summary(all, s);
    println!("\nmIoU % (mean ± std over seeds), trained on day only; {} = validation condition", s.validation.name());
    print!("{:<28}", "row");
    for c in &cols {
        print!("{c:>15}");
    }
    println!();
    for (ri, row) in s.rows.iter().enumerate() {
        print!("{:<28}", row.title().chars().take(27).collect::<String>());
        for c in &cols {
            let (m, sd) = sum[&(ri, c.clone())];
            print!("{:>15}", format!("{m:.2} ± {sd:.2}"));
        }
        println!();
    }
    for c in results::claims(&sum, s) {
        println!("{c}");
    }
}
