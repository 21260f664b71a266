//! `famix eval`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;

use famix::data::datasets::ACDC_CONDITIONS;
use famix::data::{Dataset, DatasetKind};
use famix::eval::table::ResultsTable;
use famix::eval::{evaluate, EvalOptions};
use famix::model::checkpoint;

#[derive(Args)]
pub struct EvalArgs {
    /// famix checkpoint or reference FAMix .pth; repeat for a table with one row per checkpoint and a mean ± std row
    #[arg(long, required = true)]
    checkpoint: Vec<PathBuf>,
    /// Dataset to evaluate on: KIND (with --data-root) or KIND=ROOT, repeatable for a paper-style table.
    /// KIND: gta5, synthia, cityscapes, bdd100k, mapillary, acdc, folder; acdc without a condition
    /// means its four conditions (columns night, snow, rain, fog); acdc-night=ROOT picks one
    #[arg(long, required = true, value_parser = parse_target)]
    dataset: Vec<TargetSpec>,
    /// Dataset root folder for a --dataset given without =ROOT (official layout; see the README)
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Split to evaluate
    #[arg(long, default_value = "val")]
    split: String,
    /// ACDC condition: night, snow, rain or fog
    #[arg(long)]
    condition: Option<String>,
    #[command(flatten)]
    test: super::TestTimeArgs,
    /// Write {"miou","overall_acc","mean_acc","per_class_iou",...} (fractions 0-1) here; for a table: {"columns","rows","mean","std","cells"}
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print the table as Markdown (or write it to FILE); implies table output
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    markdown: Option<Option<PathBuf>>,
    /// Class protocol: 19 (all Cityscapes classes), or Synthia's 16 / 13 (adds miou16 / miou13 to the report)
    #[arg(long, default_value_t = 19, value_parser = parse_classes)]
    classes: usize,
    /// Skip unreadable samples (reported) instead of stopping
    #[arg(long)]
    skip_bad: bool,
    /// Evaluate only the first N images
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    device: super::DeviceArgs,
}

fn parse_classes(s: &str) -> Result<usize, String> {
    match s {
        "19" | "16" | "13" => s.parse().map_err(|e| format!("{e}")),
        _ => Err(format!("{s:?} is not 19, 16 or 13")),
    }
}

/// A `--dataset` value: a layout, optionally its root and ACDC condition.
#[derive(Clone, Debug)]
pub struct TargetSpec {
    kind: DatasetKind,
    root: Option<PathBuf>,
    condition: Option<String>,
}

fn parse_target(s: &str) -> Result<TargetSpec, String> {
    let (name, root) = match s.split_once('=') {
        Some((n, "")) => return Err(format!("{n}= has no root folder after '='")),
        Some((n, r)) => (n, Some(PathBuf::from(r))),
        None => (s, None),
    };
    let (kind, condition) = match name.split_once(['-', ':']) {
        Some(("acdc", c)) if ACDC_CONDITIONS.contains(&c) => ("acdc", Some(c.to_string())),
        Some(("acdc", c)) => return Err(format!("ACDC condition {c:?} is not one of night, snow, rain, fog")),
        _ => (name, None),
    };
    let kind = <DatasetKind as clap::ValueEnum>::from_str(kind, true)
        .map_err(|_| format!("{kind:?} is not a dataset (gta5, synthia, cityscapes, bdd100k, mapillary, acdc, folder)"))?;
    Ok(TargetSpec { kind, root, condition })
}

/// One evaluation target: a dataset split, and its column label in a table.
struct Target {
    kind: DatasetKind,
    root: PathBuf,
    condition: Option<String>,
    column: String,
}

/// The targets of the command line, ACDC without a condition expanded to its four.
fn targets(a: &EvalArgs) -> Result<Vec<Target>> {
    let mut out: Vec<Target> = Vec::new();
    for t in &a.dataset {
        let Some(root) = t.root.clone().or_else(|| a.data_root.clone()) else {
            bail!("--dataset {} needs a root: give --data-root DIR or --dataset {}=DIR", t.kind.name(), t.kind.name());
        };
        let conds: Vec<Option<String>> = match (t.kind, t.condition.clone().or_else(|| a.condition.clone())) {
            (DatasetKind::Acdc, None) => ACDC_CONDITIONS.iter().map(|c| Some(c.to_string())).collect(),
            (_, c) => vec![c],
        };
        for condition in conds {
            let base = match (t.kind, &condition) {
                (DatasetKind::Cityscapes, _) => "C".to_string(),
                (DatasetKind::Bdd100k, _) => "B".into(),
                (DatasetKind::Mapillary, _) => "M".into(),
                (DatasetKind::Acdc, Some(c)) => c.clone(),
                (k, _) => k.name().into(),
            };
            let n = out.iter().filter(|o| o.column == base || o.column.starts_with(&format!("{base}#"))).count();
            let column = if n == 0 { base } else { format!("{base}#{}", n + 1) };
            out.push(Target { kind: t.kind, root: root.clone(), condition, column });
        }
    }
    Ok(out)
}

/// The key and classes of the --classes protocol (None for all 19).
fn protocol(classes: usize) -> Option<(&'static str, &'static [usize])> {
    match classes {
        16 => Some(("miou16", &famix::eval::metrics::SYNTHIA_16[..])),
        13 => Some(("miou13", &famix::eval::metrics::SYNTHIA_13[..])),
        _ => None,
    }
}

pub fn eval(a: EvalArgs) -> Result<i32> {
    let targets = targets(&a)?;
    if a.checkpoint.len() == 1 && targets.len() == 1 && a.markdown.is_none() {
        return eval_one(&a, &a.checkpoint[0], &targets[0]);
    }
    eval_table(&a, &targets)
}

/// The mIoU of one checkpoint on every target, in the --classes protocol.
fn table_row(a: &EvalArgs, ckpt: &Path, targets: &[Target], cells: &mut Vec<serde_json::Value>) -> Result<Vec<f64>> {
    let loaded = checkpoint::load(ckpt, a.device.device, a.test.output_stride()?)?;
    let k = loaded.model.config.class_names.len();
    if protocol(a.classes).is_some() && k != 19 {
        bail!("--classes {} is a protocol on the 19 Cityscapes classes; {} has {k}", a.classes, ckpt.display());
    }
    let opts = EvalOptions { predict: a.test.predict_options()?, skip_bad: a.skip_bad, limit: a.limit };
    let mut row = Vec::new();
    for t in targets {
        let ds = Dataset::open(t.kind, &t.root, &a.split, t.condition.as_deref())?;
        eprintln!("evaluating {} on {}", loaded.path.display(), ds.describe());
        let rep = evaluate(&loaded.model, &ds, &opts, &super::progress::Bars::default())?;
        let v = match protocol(a.classes) {
            Some((_, cls)) => famix::eval::metrics::subset_miou(&rep.confusion, k, cls).unwrap_or(f64::NAN),
            None => rep.metrics.miou,
        };
        cells.push(json!({"checkpoint": ckpt, "column": t.column, "dataset": t.kind.name(), "condition": t.condition, "split": a.split, "miou": v, "images": rep.images, "skipped": rep.skipped.len()}));
        row.push(v);
    }
    Ok(row)
}

/// Several checkpoints and/or targets: one table (rows: checkpoints, columns: targets).
fn eval_table(a: &EvalArgs, targets: &[Target]) -> Result<i32> {
    let mut cells = Vec::new();
    let mut table = ResultsTable { columns: targets.iter().map(|t| t.column.clone()).collect(), rows: vec![] };
    for ckpt in &a.checkpoint {
        let row = table_row(a, ckpt, targets, &mut cells)?;
        table.rows.push((ckpt.display().to_string(), row));
    }
    let what = protocol(a.classes).map(|(k, _)| k).unwrap_or("miou");
    match &a.markdown {
        Some(None) => print!("{}", table.to_markdown()),
        Some(Some(p)) => {
            famix::io::atomic_write(p, table.to_markdown().as_bytes())?;
            print!("{}", table.to_text());
        }
        None => print!("{}", table.to_text()),
    }
    eprintln!("cells: {what} in percent, split {}", a.split);
    if let Some(p) = &a.json {
        let mut v = table.to_json();
        v["metric"] = json!(what);
        v["cells"] = json!(cells);
        famix::io::atomic_write_json(p, &v)?;
    }
    Ok(0)
}

/// One checkpoint on one target: the per-class table and the detailed JSON.
fn eval_one(a: &EvalArgs, ckpt: &Path, t: &Target) -> Result<i32> {
    let predict = a.test.predict_options()?;
    let loaded = checkpoint::load(ckpt, a.device.device, a.test.output_stride()?)?;
    let ds = Dataset::open(t.kind, &t.root, &a.split, t.condition.as_deref())?;
    eprintln!("evaluating {} on {}", loaded.path.display(), ds.describe());
    let opts = EvalOptions { predict, skip_bad: a.skip_bad, limit: a.limit };
    let rep = evaluate(&loaded.model, &ds, &opts, &super::progress::Bars::default())?;
    let names = &loaded.model.config.class_names;
    print!("{}", rep.metrics.table(names));
    let k = names.len();
    let subset = protocol(a.classes);
    if subset.is_some() && k != 19 {
        bail!("--classes {} is a protocol on the 19 Cityscapes classes; this checkpoint has {k}", a.classes);
    }
    let sub = subset.map(|(key, cls)| (key, famix::eval::metrics::subset_miou(&rep.confusion, k, cls)));
    if let Some((key, v)) = &sub {
        println!("{key}: {}", v.map(|v| format!("{:.2} %", v * 100.0)).unwrap_or_else(|| "- (no pixel of those classes)".into()));
    }
    println!("images: {}, skipped: {}", rep.images, rep.skipped.len());
    if let Some(p) = &a.json {
        let per: serde_json::Map<String, serde_json::Value> =
            names.iter().zip(&rep.metrics.per_class_iou).map(|(n, v)| (n.clone(), json!(v))).collect();
        let matrix: Vec<&[u64]> = rep.confusion.chunks(k).collect();
        let mut v = json!({
            "miou": rep.metrics.miou, "overall_acc": rep.metrics.overall_acc, "mean_acc": rep.metrics.mean_acc,
            "per_class_iou": per, "images": rep.images, "skipped": rep.skipped,
            "dataset": t.kind.name(), "split": a.split, "condition": t.condition,
            "scale": a.test.scale, "ensemble": a.test.ensemble, "checkpoint": loaded.path.display().to_string(),
            "output_stride": loaded.model.config.output_stride.value(),
            "class_names": names, "confusion_matrix": matrix,
        });
        if let Some((key, val)) = sub {
            v[key] = json!(val);
        }
        famix::io::atomic_write_json(p, &v)?;
    }
    Ok(0)
}
