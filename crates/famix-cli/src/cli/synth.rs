//! `famix data synth`: writes the procedural driving world's datasets — the same
//! street layouts under several conditions (one `folder` dataset per condition) and,
//! on request, a captioned set for `famix clip-pretrain`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use famix_synth::{write_captioned, write_segmentation, Condition, SynthSize};

#[derive(Args)]
pub struct SynthArgs {
    /// Output folder: OUT/CONDITION/{images,labels}/SPLIT/NNNN.png per condition, OUT/captioned/ for --captioned
    #[arg(long)]
    out: PathBuf,
    /// Conditions of the segmentation sets (comma-separated): day, dusk, night, fog, rain, snow (and the styles sepia, overexposed, painterly, monochrome, vintage, noir, misty, neon, pastel, pop-art)
    #[arg(long, default_value = "day,dusk,night,fog,rain,snow")]
    conditions: String,
    /// A split and its number of scenes, NAME=N (repeatable); every condition shows the same scenes
    #[arg(long = "split", value_name = "NAME=N", default_values_t = ["train=96".to_string(), "val=48".to_string()])]
    splits: Vec<String>,
    /// Image size WIDTHxHEIGHT
    #[arg(long, default_value = "128x96")]
    size: String,
    /// Seed of layouts and renderings
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write N captioned images (OUT/captioned/images, OUT/captioned/captions.jsonl) from other layouts, cycling over --captioned-conditions
    #[arg(long, default_value_t = 0)]
    captioned: usize,
    /// Conditions of the captioned images (comma-separated or `all`)
    #[arg(long, default_value = "all")]
    captioned_conditions: String,
}

/// "128x96" → size (each side 32..=4096).
pub fn parse_size(s: &str, flag: &str) -> Result<SynthSize> {
    let parts: Vec<&str> = s.split('x').collect();
    let dims: Option<Vec<usize>> = (parts.len() == 2).then(|| parts.iter().map(|p| p.trim().parse().ok()).collect()).flatten();
    match dims.as_deref() {
        Some(&[w, h]) if (32..=4096).contains(&w) && (32..=4096).contains(&h) => Ok(SynthSize { width: w, height: h }),
        _ => bail!("{flag}: {s:?} is not WIDTHxHEIGHT with sides from 32 to 4096"),
    }
}

fn parse_splits(specs: &[String]) -> Result<Vec<(String, usize)>> {
    specs
        .iter()
        .map(|s| match s.split_once('=') {
            Some((name, n)) if !name.trim().is_empty() && !name.contains(['/', '\\']) => match n.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok((name.trim().to_string(), n)),
                _ => bail!("--split {s:?}: N must be a positive number"),
            },
            _ => bail!("--split {s:?}: expected NAME=N (e.g. train=96)"),
        })
        .collect()
}

/// Generation is pure CPU work with nothing else running: every core renders.
fn workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

pub fn synth(a: SynthArgs) -> Result<i32> {
    let size = parse_size(&a.size, "--size")?;
    let conditions = Condition::parse_list(&a.conditions)?;
    let splits = parse_splits(&a.splits)?;
    write_segmentation(&a.out, &conditions, &splits, size, a.seed, workers())?;
    for c in &conditions {
        println!("{}", a.out.join(c.name()).display());
    }
    if a.captioned > 0 {
        let cc = if a.captioned_conditions == "all" { Condition::ALL.to_vec() } else { Condition::parse_list(&a.captioned_conditions)? };
        let file = write_captioned(&a.out.join("captioned"), &cc, a.captioned, size, a.seed, workers())?;
        println!("{}", file.display());
    }
    Ok(0)
}
