//! `famix data check`: lists a dataset's splits, decodes every pair, and reports
//! missing partners, unreadable or mismatched files, unknown label ids and the
//! label histogram.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use famix::progress::{Progress, Unit};
use serde_json::json;

use famix::data::datasets::ACDC_CONDITIONS;
use famix::data::prefetch::{default_workers, ordered_map};
use famix::data::{Dataset, DatasetKind};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Count image/label pairs per split, find missing partners, unreadable files,
    /// size mismatches and unknown label ids, and print the label histogram. Exits 2 when
    /// anything is wrong (an empty split, a split asked for that does not exist, a bad pair).
    Check(CheckArgs),
    /// Draw a few samples with their labels (after conversion to train ids) and a class
    /// legend into DIR/index.html, to check a dataset layout by eye.
    Browse(BrowseArgs),
    /// Generate the procedural driving world: the same street scenes under several
    /// conditions (day, dusk, night, fog, rain, snow), one `folder` dataset per condition
    /// with Cityscapes train-id labels, and optionally a captioned set for clip-pretrain.
    Synth(super::synth::SynthArgs),
}

#[derive(Args)]
pub struct BrowseArgs {
    /// Dataset layout
    #[arg(value_parser = super::choice::<DatasetKind>())]
    dataset: DatasetKind,
    /// Dataset root folder
    root: PathBuf,
    /// Output folder (index.html and one PNG per sample)
    #[arg(long)]
    out: PathBuf,
    /// Split to show [default: the dataset's validation split]
    #[arg(long)]
    split: Option<String>,
    /// ACDC condition [default: night]
    #[arg(long)]
    condition: Option<String>,
    /// Samples to show, spread evenly over the split
    #[arg(long, default_value_t = 8)]
    samples: usize,
}

fn browse(a: BrowseArgs) -> Result<i32> {
    let split = a.split.clone().unwrap_or_else(|| a.dataset.default_splits().last().copied().unwrap_or("val").to_string());
    let cond = a.condition.clone().or_else(|| (a.dataset == DatasetKind::Acdc).then(|| "night".to_string()));
    let ds = Dataset::open(a.dataset, &a.root, &split, cond.as_deref())?;
    let files = famix::report::browse::browse(&ds, a.samples, &a.out)?;
    eprintln!("{}: {} samples of {} pairs", ds.describe(), files.panels.len(), ds.len());
    println!("{}", files.html.display());
    Ok(0)
}

#[derive(Args)]
pub struct CheckArgs {
    /// Dataset to check
    #[arg(long, value_parser = super::choice::<DatasetKind>())]
    dataset: DatasetKind,
    /// Dataset root folder (official layout; see the README)
    #[arg(long)]
    data_root: PathBuf,
    /// Splits to check (default: train and val)
    #[arg(long)]
    split: Vec<String>,
    /// ACDC condition (default: all four)
    #[arg(long)]
    condition: Option<String>,
    /// Decode only the first N pairs of each split
    #[arg(long)]
    limit: Option<usize>,
    /// Also write the report as JSON
    #[arg(long)]
    json: Option<PathBuf>,
}

struct PairCheck {
    problem: Option<String>,
    hist: [u64; 256],
    unknown: BTreeMap<u8, u64>,
}

pub fn data(cmd: DataCommand) -> Result<i32> {
    let a = match cmd {
        DataCommand::Check(a) => a,
        DataCommand::Browse(a) => return browse(a),
        DataCommand::Synth(a) => return super::synth::synth(a),
    };
    let splits: Vec<String> =
        if a.split.is_empty() { a.dataset.default_splits().into_iter().map(str::to_string).collect() } else { a.split.clone() };
    let conds: Vec<Option<String>> = match (a.dataset, &a.condition) {
        (DatasetKind::Acdc, None) => ACDC_CONDITIONS.iter().map(|c| Some(c.to_string())).collect(),
        (_, c) => vec![c.clone()],
    };
    let mut report = Vec::new();
    let mut problems = 0usize;
    for cond in &conds {
        for split in &splits {
            let (entry, n) = check_split(&a, split, cond.as_deref());
            report.push(entry);
            problems += n;
        }
    }
    if let Some(p) = &a.json {
        famix::io::atomic_write_json(p, &json!({"dataset": a.dataset.name(), "root": a.data_root, "splits": report}))?;
    }
    Ok(if problems > 0 { 2 } else { 0 })
}

/// What decoding a split found.
#[derive(Default)]
struct SplitScan {
    hist: Vec<u64>,
    unknown: BTreeMap<u8, u64>,
    bad: Vec<serde_json::Value>,
}

/// Decodes the first `n` pairs on loader threads and adds up what they show.
fn scan(ds: &std::sync::Arc<Dataset>, kind: DatasetKind, n: usize) -> SplitScan {
    let d2 = ds.clone();
    let checks = ordered_map(n, default_workers(), 16, move |i| check_pair(&d2, kind, i));
    let bars = super::progress::Bars::default();
    bars.start("check", n as u64, 0, Unit::Items);
    let mut out = SplitScan { hist: vec![0; 256], ..Default::default() };
    for (i, c) in checks.enumerate() {
        if let Some(p) = c.problem {
            out.bad.push(json!({"image": ds.samples[i].image.display().to_string(), "problem": p}));
        }
        for (h, v) in out.hist.iter_mut().zip(c.hist) {
            *h += v;
        }
        for (k, v) in c.unknown {
            *out.unknown.entry(k).or_default() += v;
        }
        bars.advance(1);
    }
    bars.finish();
    out
}

/// Checks one split (and ACDC condition); prints its report and returns it as JSON
/// with the number of problems found.
fn check_split(a: &CheckArgs, split: &str, cond: Option<&str>) -> (serde_json::Value, usize) {
    let label = format!("{}{} {split}", a.dataset.name(), cond.map(|c| format!(" {c}")).unwrap_or_default());
    let ds = match Dataset::open(a.dataset, &a.data_root, split, cond) {
        Ok(d) => d,
        Err(e) => {
            println!("{label}: not available: {e:#}");
            // A split the user asked for by name must exist; default ones may not.
            let asked = !a.split.is_empty() || a.condition.is_some();
            return (json!({"split": split, "condition": cond, "error": format!("{e:#}")}), asked as usize);
        }
    };
    let n = a.limit.map(|l| l.min(ds.len())).unwrap_or(ds.len());
    let ds = std::sync::Arc::new(ds);
    let s = scan(&ds, a.dataset, n);
    println!(
        "{label}: {} pairs{}, {} missing partners, {} unreadable or mismatched",
        ds.len(),
        if n < ds.len() { format!(" ({n} decoded)") } else { String::new() },
        ds.issues.len(),
        s.bad.len()
    );
    for i in ds.issues.iter().take(10) {
        println!("  {}: {}", i.path, i.problem);
    }
    for b in s.bad.iter().take(10) {
        println!("  {}: {}", b["image"].as_str().unwrap_or(""), b["problem"].as_str().unwrap_or(""));
    }
    let hj = print_histogram(&s.hist);
    if !s.unknown.is_empty() {
        println!("  label ids unknown to {} (mapped to ignore): {:?}", a.dataset.name(), s.unknown);
    }
    if ds.is_empty() {
        println!("  no image/label pairs: nothing to train or evaluate on");
    }
    let problems = s.bad.len() + ds.issues.len() + ds.is_empty() as usize;
    let entry = json!({
        "split": split, "condition": cond, "pairs": ds.len(), "decoded": n,
        "missing_partners": ds.issues, "bad": s.bad, "histogram": hj,
        "unknown_label_ids": s.unknown.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
    });
    (entry, problems)
}

/// Prints the train-id histogram (% of pixels) and returns it as JSON counts.
fn print_histogram(hist: &[u64]) -> serde_json::Map<String, serde_json::Value> {
    let names = famix::data::labels::default_class_names(19);
    let total: u64 = hist.iter().sum();
    let mut hj = serde_json::Map::new();
    if total == 0 {
        return hj;
    }
    println!("  label histogram after conversion (% of pixels):");
    for (c, nm) in names.iter().enumerate() {
        if hist[c] > 0 {
            println!("    {c:>3} {nm:<14} {:6.2}", hist[c] as f64 * 100.0 / total as f64);
        }
        hj.insert(nm.clone(), json!(hist[c]));
    }
    println!("    255 {:<14} {:6.2}", "ignore", hist[255] as f64 * 100.0 / total as f64);
    hj.insert("ignore".into(), json!(hist[255]));
    hj
}

fn check_pair(ds: &Dataset, kind: DatasetKind, i: usize) -> PairCheck {
    let mut out = PairCheck { problem: None, hist: [0; 256], unknown: BTreeMap::new() };
    let raw = match ds.load_raw(i) {
        Ok((_, raw)) => raw,
        Err(e) => {
            out.problem = Some(format!("{e:#}"));
            return out;
        }
    };
    for &v in &raw.data {
        out.hist[ds.map[v as usize] as usize] += 1;
        if !kind.known_raw_id(v) {
            *out.unknown.entry(v).or_default() += 1;
        }
    }
    out
}
