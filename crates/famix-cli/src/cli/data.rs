//! `famix data check`: lists a dataset's splits, decodes every pair, and reports
//! missing partners, unreadable or mismatched files, unknown label ids and the
//! label histogram.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use famix::progress::{Progress, Unit};
use serde_json::json;

use famix::data::classes::ClassSet;
use famix::data::datasets::ACDC_CONDITIONS;
use famix::data::prefetch::{default_workers, ordered_map};
use famix::data::{Dataset, DatasetKind};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Count image/label pairs per split, find missing partners, unreadable files, size
    /// mismatches and label values no class declares (with the files that hold them), and
    /// print pixels and images per class and the classes that never occur. Exits 2 when
    /// anything is wrong (an empty split, a split asked for that does not exist, a bad
    /// pair, an undeclared value under a class file).
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
    /// Class file (JSON): label encoding, names and colours [default: Cityscapes' 19 classes]
    #[arg(long, value_name = "FILE")]
    classes: Option<PathBuf>,
}

fn browse(a: BrowseArgs) -> Result<i32> {
    let split = a.split.clone().unwrap_or_else(|| a.dataset.default_splits().last().copied().unwrap_or("val").to_string());
    let cond = a.condition.clone().or_else(|| (a.dataset == DatasetKind::Acdc).then(|| "night".to_string()));
    let classes = super::class_set(&a.classes)?;
    let ds = Dataset::open(a.dataset, &a.root, &split, cond.as_deref())?.with_classes(&classes)?;
    let files = famix::report::browse::browse(&ds, &classes, a.samples, &a.out)?;
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
    /// Class file (JSON) whose label encoding and classes to check against [default: Cityscapes' 19 classes]
    #[arg(long, value_name = "FILE")]
    classes: Option<PathBuf>,
}

struct PairCheck {
    problem: Option<String>,
    counts: Option<famix::data::classes::LabelCounts>,
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
    let classes = super::class_set(&a.classes)?;
    let mut report = Vec::new();
    let mut problems = 0usize;
    for cond in &conds {
        for split in &splits {
            let (entry, n) = check_split(&a, &classes, split, cond.as_deref());
            report.push(entry);
            problems += n;
        }
    }
    // Default splits may be missing one by one, but not all of them: then the root is wrong.
    if report.iter().all(|e| e.get("error").is_some()) && problems == 0 {
        println!("no split of {} found under {}", a.dataset.name(), a.data_root.display());
        problems += 1;
    }
    if let Some(p) = &a.json {
        famix::io::atomic_write_json(p, &json!({"dataset": a.dataset.name(), "root": a.data_root, "splits": report}))?;
    }
    Ok(if problems > 0 { 2 } else { 0 })
}

/// What decoding a split found.
#[derive(Default)]
struct SplitScan {
    /// Pixels per training id (255: ignore).
    pixels: Vec<u64>,
    /// Images in which each training id occurs.
    images: Vec<u64>,
    /// Undeclared label values: pixels and the first files holding them.
    unknown: BTreeMap<String, (u64, Vec<String>)>,
    bad: Vec<serde_json::Value>,
}

/// Files named per undeclared value.
const FIRST_FILES: usize = 3;

/// Decodes the first `n` pairs on loader threads and adds up what they show.
fn scan(ds: &std::sync::Arc<Dataset>, n: usize) -> SplitScan {
    let d2 = ds.clone();
    let checks = ordered_map(n, default_workers(), 16, move |i| check_pair(&d2, i));
    let bars = super::progress::Bars::default();
    bars.start("check", n as u64, 0, Unit::Items);
    let mut out = SplitScan { pixels: vec![0; 256], images: vec![0; 256], ..Default::default() };
    for (i, c) in checks.enumerate() {
        if let Some(p) = c.problem {
            out.bad.push(json!({"image": ds.samples[i].image.display().to_string(), "problem": p}));
        }
        let Some(counts) = c.counts else { continue };
        for (id, &px) in counts.pixels.iter().enumerate().filter(|(_, px)| **px > 0) {
            out.pixels[id] += px;
            out.images[id] += 1;
        }
        for (value, px) in counts.unknown {
            let e = out.unknown.entry(value).or_default();
            e.0 += px;
            if e.1.len() < FIRST_FILES {
                e.1.push(ds.samples[i].label.display().to_string());
            }
        }
        bars.advance(1);
    }
    bars.finish();
    out
}

/// Checks one split (and ACDC condition); prints its report and returns it as JSON
/// with the number of problems found.
fn check_split(a: &CheckArgs, classes: &ClassSet, split: &str, cond: Option<&str>) -> (serde_json::Value, usize) {
    let label = format!("{}{} {split}", a.dataset.name(), cond.map(|c| format!(" {c}")).unwrap_or_default());
    let ds = match Dataset::open(a.dataset, &a.data_root, split, cond).and_then(|d| d.with_classes(classes)) {
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
    let s = scan(&ds, n);
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
    let (hist, images, never) = print_classes(&classes.names(), &s);
    // Under a strict class file an undeclared value stops training; the layouts' own
    // tables (and the built-in set) map such values to ignore.
    print_unknown(&s.unknown, ds.codec.strict(), a.dataset.name());
    if ds.is_empty() {
        println!("  no image/label pairs: nothing to train or evaluate on");
    }
    let problems = s.bad.len() + ds.issues.len() + ds.is_empty() as usize;
    let entry = json!({
        "split": split, "condition": cond, "pairs": ds.len(), "decoded": n,
        "missing_partners": ds.issues, "bad": s.bad, "histogram": hist, "images_per_class": images,
        "classes_never_seen": never,
        "unknown_label_ids": s.unknown.iter().map(|(k, v)| (k.clone(), json!(v.0))).collect::<serde_json::Map<_, _>>(),
        "undeclared": s.unknown.iter().map(|(k, v)| (k.clone(), json!({"pixels": v.0, "files": v.1}))).collect::<serde_json::Map<_, _>>(),
    });
    (entry, problems)
}

/// Prints per class the share of pixels and the images it occurs in, and the classes
/// that never occur; returns pixel counts, image counts (JSON, by name) and those classes.
fn print_classes(
    names: &[String],
    s: &SplitScan,
) -> (serde_json::Map<String, serde_json::Value>, serde_json::Map<String, serde_json::Value>, Vec<String>) {
    let total: u64 = s.pixels.iter().sum();
    let (mut hist, mut images) = (serde_json::Map::new(), serde_json::Map::new());
    if total == 0 {
        return (hist, images, Vec::new());
    }
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max(14);
    println!("  classes after conversion (% of pixels, images):");
    for (c, nm) in names.iter().enumerate() {
        if s.pixels[c] > 0 {
            println!("    {c:>3} {nm:<width$} {:6.2} {:>6}", s.pixels[c] as f64 * 100.0 / total as f64, s.images[c]);
        }
        hist.insert(nm.clone(), json!(s.pixels[c]));
        images.insert(nm.clone(), json!(s.images[c]));
    }
    println!("    255 {:<width$} {:6.2} {:>6}", "ignore", s.pixels[255] as f64 * 100.0 / total as f64, s.images[255]);
    hist.insert("ignore".into(), json!(s.pixels[255]));
    images.insert("ignore".into(), json!(s.images[255]));
    let never: Vec<String> = names.iter().enumerate().filter(|(c, _)| s.pixels[*c] == 0).map(|(_, n)| n.clone()).collect();
    if !never.is_empty() {
        println!("  classes that never occur: {}", never.join(", "));
    }
    (hist, images, never)
}

/// Prints the label values no class declares, with the first files holding them.
fn print_unknown(unknown: &BTreeMap<String, (u64, Vec<String>)>, strict: bool, layout: &str) {
    if unknown.is_empty() {
        return;
    }
    if strict {
        println!("  label values no class declares (training and evaluation refuse them):");
    } else {
        println!("  label values unknown to {layout} (mapped to ignore):");
    }
    for (v, (px, files)) in unknown {
        println!("    {v}: {px} pixels, e.g. {}", files.join(", "));
    }
}

fn check_pair(ds: &Dataset, i: usize) -> PairCheck {
    match ds.load_raw(i) {
        Ok((_, raw)) => {
            let counts = ds.codec.count(&raw.data);
            // A strict class set's refusal, in the words training and evaluation use.
            let refused = ds.codec.strict() && !counts.unknown.is_empty();
            let problem = refused.then(|| famix::data::classes::undeclared_message(&ds.samples[i].label, &counts.unknown));
            PairCheck { problem, counts: Some(counts) }
        }
        Err(e) => PairCheck { problem: Some(format!("{e:#}")), counts: None },
    }
}
