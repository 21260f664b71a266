//! `famix eval` and `famix data check`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::data::datasets::ACDC_CONDITIONS;
use crate::data::prefetch::{default_workers, ordered_map};
use crate::data::{Dataset, DatasetKind};
use crate::device::parse_device;
use crate::eval::{evaluate, EvalOptions};
use crate::model::checkpoint;

#[derive(Args)]
pub struct EvalArgs {
    /// famix checkpoint or reference FAMix .pth
    #[arg(long)]
    checkpoint: PathBuf,
    /// Dataset to evaluate on
    #[arg(long, value_enum)]
    dataset: DatasetKind,
    /// Dataset root folder (official layout; see the README)
    #[arg(long)]
    data_root: PathBuf,
    /// Split to evaluate
    #[arg(long, default_value = "val")]
    split: String,
    /// ACDC condition: night, snow, rain or fog
    #[arg(long)]
    condition: Option<String>,
    #[command(flatten)]
    test: super::TestTimeArgs,
    /// Write {"miou","overall_acc","mean_acc","per_class_iou",...} (fractions 0-1) here
    #[arg(long)]
    json: Option<PathBuf>,
    /// Skip unreadable samples (reported) instead of stopping
    #[arg(long)]
    skip_bad: bool,
    /// Evaluate only the first N images
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value = "auto", help = super::DEVICE_HELP)]
    device: String,
}

pub fn eval(a: EvalArgs) -> Result<i32> {
    let os = a.test.output_stride()?;
    let device = parse_device(&a.device)?;
    let loaded = checkpoint::load(&a.checkpoint, device, os)?;
    let ds = Dataset::open(a.dataset, &a.data_root, &a.split, a.condition.as_deref())?;
    if ds.is_empty() {
        bail!("no image/label pairs found for {} (run `famix data check`)", ds.describe());
    }
    eprintln!("evaluating {} on {}", loaded.path.display(), ds.describe());
    let opts = EvalOptions {
        scale: a.test.scale,
        ensemble: a.test.ensemble,
        skip_bad: a.skip_bad,
        limit: a.limit,
        progress: true,
        amp_bf16: a.test.bf16(),
    };
    let rep = evaluate(&loaded.model, &ds, &opts)?;
    let names = &loaded.model.config.class_names;
    print!("{}", rep.metrics.table(names));
    println!("images: {}, skipped: {}", rep.images, rep.skipped.len());
    if let Some(p) = &a.json {
        let per: serde_json::Map<String, serde_json::Value> =
            names.iter().zip(&rep.metrics.per_class_iou).map(|(n, v)| (n.clone(), json!(v))).collect();
        let v = json!({
            "miou": rep.metrics.miou, "overall_acc": rep.metrics.overall_acc, "mean_acc": rep.metrics.mean_acc,
            "per_class_iou": per, "images": rep.images, "skipped": rep.skipped,
            "dataset": a.dataset.name(), "split": a.split, "condition": a.condition,
            "scale": a.test.scale, "ensemble": a.test.ensemble, "checkpoint": loaded.path.display().to_string(),
            "output_stride": loaded.model.config.output_stride.value(),
        });
        crate::io::atomic_write_json(p, &v)?;
    }
    Ok(0)
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Count image/label pairs per split, find missing partners, unreadable files,
    /// size mismatches and unknown label ids, and print the label histogram.
    Check(CheckArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// Dataset to check
    #[arg(long, value_enum)]
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
    let DataCommand::Check(a) = cmd;
    let splits: Vec<String> = if a.split.is_empty() {
        a.dataset.default_splits().into_iter().map(str::to_string).collect()
    } else {
        a.split.clone()
    };
    let conds: Vec<Option<String>> = match (a.dataset, &a.condition) {
        (DatasetKind::Acdc, None) => ACDC_CONDITIONS.iter().map(|c| Some(c.to_string())).collect(),
        (_, c) => vec![c.clone()],
    };
    let names = crate::data::labels::default_class_names(19);
    let mut report = Vec::new();
    let mut problems = 0usize;
    for cond in &conds {
        for split in &splits {
            let label = format!("{}{} {split}", a.dataset.name(), cond.as_ref().map(|c| format!(" {c}")).unwrap_or_default());
            let ds = match Dataset::open(a.dataset, &a.data_root, split, cond.as_deref()) {
                Ok(d) => d,
                Err(e) => {
                    println!("{label}: not available: {e:#}");
                    report.push(json!({"split": split, "condition": cond, "error": format!("{e:#}")}));
                    continue;
                }
            };
            let n = a.limit.map(|l| l.min(ds.len())).unwrap_or(ds.len());
            let ds = std::sync::Arc::new(ds);
            let d2 = ds.clone();
            let kind = a.dataset;
            let checks = ordered_map(n, default_workers(), 16, move |i| check_pair(&d2, kind, i));
            let bar = super::progress_bar(n as u64, "check");
            let mut hist = [0u64; 256];
            let mut unknown: BTreeMap<u8, u64> = BTreeMap::new();
            let mut bad = Vec::new();
            for (i, c) in checks.enumerate() {
                if let Some(p) = c.problem {
                    bad.push(json!({"image": ds.samples[i].image.display().to_string(), "problem": p}));
                }
                for (h, v) in hist.iter_mut().zip(c.hist) {
                    *h += v;
                }
                for (k, v) in c.unknown {
                    *unknown.entry(k).or_default() += v;
                }
                bar.inc(1);
            }
            bar.finish_and_clear();
            problems += bad.len() + ds.issues.len();
            println!(
                "{label}: {} pairs{}, {} missing partners, {} unreadable or mismatched",
                ds.len(),
                if n < ds.len() { format!(" ({n} decoded)") } else { String::new() },
                ds.issues.len(),
                bad.len()
            );
            for i in ds.issues.iter().take(10) {
                println!("  {}: {}", i.path, i.problem);
            }
            for b in bad.iter().take(10) {
                println!("  {}: {}", b["image"].as_str().unwrap_or(""), b["problem"].as_str().unwrap_or(""));
            }
            let total: u64 = hist.iter().sum();
            let mut hj = serde_json::Map::new();
            if total > 0 {
                println!("  label histogram after conversion (% of pixels):");
                for (c, nm) in names.iter().enumerate() {
                    if hist[c] > 0 {
                        println!("    {c:>3} {nm:<14} {:6.2}", hist[c] as f64 * 100.0 / total as f64);
                    }
                    hj.insert(nm.clone(), json!(hist[c]));
                }
                println!("    255 {:<14} {:6.2}", "ignore", hist[255] as f64 * 100.0 / total as f64);
                hj.insert("ignore".into(), json!(hist[255]));
            }
            if !unknown.is_empty() {
                println!("  label ids unknown to {} (mapped to ignore): {:?}", a.dataset.name(), unknown);
            }
            report.push(json!({
                "split": split, "condition": cond, "pairs": ds.len(), "decoded": n,
                "missing_partners": ds.issues, "bad": bad, "histogram": hj,
                "unknown_label_ids": unknown.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            }));
        }
    }
    if let Some(p) = &a.json {
        crate::io::atomic_write_json(p, &json!({"dataset": a.dataset.name(), "root": a.data_root, "splits": report}))?;
    }
    Ok(if problems > 0 { 2 } else { 0 })
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
