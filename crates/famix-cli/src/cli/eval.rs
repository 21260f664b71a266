//! `famix eval`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use famix::data::datasets::ACDC_CONDITIONS;
use famix::data::{Dataset, DatasetKind};
use famix::eval::metrics::Metrics;
use famix::eval::protocol::ClassProtocol;
use famix::eval::table::ResultsTable;
use famix::eval::{evaluate, EvalOptions};
use famix::model::checkpoint;
use famix::shard::Shard;

#[derive(Args)]
pub struct EvalArgs {
    /// famix checkpoint or reference FAMix .pth; repeat for a table with one row per checkpoint and a mean ± std row
    #[arg(long, required_unless_present = "merge")]
    checkpoint: Vec<PathBuf>,
    /// Dataset to evaluate on: KIND (with --data-root) or KIND=ROOT, repeatable for a paper-style table.
    /// KIND: gta5, synthia, cityscapes, bdd100k, mapillary, acdc, folder; acdc without a condition
    /// means its four conditions (columns night, snow, rain, fog); acdc-night=ROOT picks one
    #[arg(long, required_unless_present = "merge", value_parser = parse_target)]
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
    /// Class protocol: 19 (all Cityscapes classes), or Synthia's 16 / 13 (adds miou16 / miou13 to the report) [default: 19]
    #[arg(long, value_parser = parse_protocol)]
    protocol: Option<usize>,
    /// Class file (JSON) the checkpoints were trained with; labels are read with its encoding, and one that names other classes than a checkpoint's is refused [default: each checkpoint's own classes]. `--classes 19|16|13` (no such file) is the old spelling of --protocol
    #[arg(long, value_name = "FILE")]
    classes: Option<PathBuf>,
    /// Skip unreadable samples (reported) instead of stopping
    #[arg(long)]
    skip_bad: bool,
    /// Images of one size per forward pass (several only while they hold at most one 2048x1024 frame's pixels)
    #[arg(long, default_value_t = EvalOptions::default().batch)]
    batch: usize,
    /// Evaluate only the first N images
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    shard: super::ShardArgs,
    /// Combine the --json files of `eval --shard I/N` runs (all N shards) into the metrics of the whole set
    #[arg(long, num_args = 1.., value_name = "PART.json", conflicts_with_all = ["checkpoint", "dataset"])]
    merge: Vec<PathBuf>,
    #[command(flatten)]
    device: super::DeviceArgs,
}

fn parse_protocol(s: &str) -> Result<usize, String> {
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
    let kind = <DatasetKind as famix::Named>::parse(&kind.to_ascii_lowercase())
        .ok_or_else(|| format!("{kind:?} is not a dataset ({})", <DatasetKind as famix::Named>::names()))?;
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

/// The --protocol.
fn protocol(a: &EvalArgs) -> ClassProtocol {
    a.protocol.or_else(|| legacy_protocol(a)).and_then(ClassProtocol::from_count).unwrap_or(ClassProtocol::All)
}

/// `--classes 19|16|13` where no such file exists: what --protocol was called before
/// class files.
fn legacy_protocol(a: &EvalArgs) -> Option<usize> {
    let v = a.classes.as_ref().filter(|p| !p.exists())?.to_str()?;
    ["19", "16", "13"].contains(&v).then(|| v.parse().ok()).flatten()
}

/// The classes to read `loaded`'s labels with: the --classes file when it agrees
/// with the checkpoint, else the checkpoint's own.
fn classes_for(a: &EvalArgs, loaded: &checkpoint::Loaded) -> Result<famix::data::classes::ClassSet> {
    let file = a.classes.clone().filter(|_| legacy_protocol(a).is_none());
    super::ModelClassesArgs { classes: file }.resolve(&loaded.model, &loaded.path)
}

pub fn eval(a: EvalArgs) -> Result<i32> {
    if !a.merge.is_empty() {
        return merge(&a);
    }
    let targets = targets(&a)?;
    if a.checkpoint.len() == 1 && targets.len() == 1 && a.markdown.is_none() {
        return eval_one(&a, &a.checkpoint[0], &targets[0]);
    }
    if a.shard.shard()?.is_some() {
        bail!("--shard splits one checkpoint's evaluation on one dataset; run a table's cells as separate sharded evals");
    }
    eval_table(&a, &targets)
}

/// The mIoU of one checkpoint on every target, in the --protocol.
fn table_row(a: &EvalArgs, ckpt: &Path, targets: &[Target], cells: &mut Vec<serde_json::Value>) -> Result<Vec<f64>> {
    let mut loaded = checkpoint::load(ckpt, a.device.device, a.test.output_stride()?)?;
    a.test.prepare(&mut loaded.model, famix::engine::Engine::Torch)?;
    let names = loaded.model.config().class_names();
    let k = names.len();
    protocol(a).check(&names, &ckpt.display().to_string())?;
    let opts = EvalOptions { predict: a.test.predict_options()?, skip_bad: a.skip_bad, limit: a.limit, batch: a.batch };
    let classes = classes_for(a, &loaded)?;
    let mut row = Vec::new();
    for t in targets {
        let ds = Dataset::open(t.kind, &t.root, &a.split, t.condition.as_deref())?.with_classes(&classes)?;
        eprintln!("evaluating {} on {}", loaded.path.display(), ds.describe());
        let rep = evaluate(&loaded.model, &ds, &opts, &super::progress::Bars::default())?;
        let v = match protocol(a) {
            ClassProtocol::All => rep.metrics.miou,
            p => p.miou(&rep.confusion, k).unwrap_or(f64::NAN),
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
    let what = protocol(a).key();
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

/// What a single evaluation (or a merge of shards) found, ready to print and write.
struct Single<'a> {
    names: &'a [String],
    confusion: &'a [u64],
    images: u64,
    skipped: serde_json::Value,
    /// Keys describing the run (dataset, checkpoint, ...), copied into the JSON.
    about: serde_json::Value,
}

/// Prints the per-class table (and the --protocol subset) and writes the JSON.
fn finish_single(a: &EvalArgs, r: &Single, protocol: ClassProtocol) -> Result<()> {
    let k = r.names.len();
    let metrics = Metrics::from_matrix(r.confusion, k);
    print!("{}", metrics.table(r.names));
    let sub = protocol.classes().map(|_| (protocol.key(), protocol.miou(r.confusion, k)));
    if let Some((key, v)) = &sub {
        println!("{key}: {}", v.map(|v| format!("{:.2} %", v * 100.0)).unwrap_or_else(|| "- (no pixel of those classes)".into()));
    }
    println!("images: {}, skipped: {}", r.images, r.skipped.as_array().map(Vec::len).unwrap_or(0));
    if let Some(p) = &a.json {
        let mut v = metrics.eval_json(r.names, r.confusion);
        (v["images"], v["skipped"]) = (json!(r.images), r.skipped.clone());
        for (key, val) in r.about.as_object().into_iter().flatten() {
            v[key] = val.clone();
        }
        if let Some((key, val)) = sub {
            v[key] = json!(val);
        }
        famix::io::atomic_write_json(p, &v)?;
    }
    Ok(())
}

/// One checkpoint on one target (or this task's shard of it): the per-class table and
/// the detailed JSON (with `shard` for a part to `--merge`).
fn eval_one(a: &EvalArgs, ckpt: &Path, t: &Target) -> Result<i32> {
    let predict = a.test.predict_options()?;
    let shard = a.shard.shard()?;
    let mut loaded = checkpoint::load(ckpt, a.device.device, a.test.output_stride()?)?;
    a.test.prepare(&mut loaded.model, famix::engine::Engine::Torch)?;
    protocol(a).check(&loaded.model.config().class_names(), &loaded.path.display().to_string())?;
    let classes = classes_for(a, &loaded)?;
    let mut ds = Dataset::open(t.kind, &t.root, &a.split, t.condition.as_deref())?.with_classes(&classes)?;
    if let Some(sh) = shard {
        ds.samples = sh.select(ds.samples.len()).into_iter().map(|i| ds.samples[i].clone()).collect();
        eprintln!("shard {sh}: {} images", ds.samples.len());
    }
    eprintln!("evaluating {} on {}", loaded.path.display(), ds.describe());
    let opts = EvalOptions { predict, skip_bad: a.skip_bad, limit: a.limit, batch: a.batch };
    let rep = evaluate(&loaded.model, &ds, &opts, &super::progress::Bars::default())?;
    let about = json!({
        "dataset": t.kind.name(), "split": a.split, "condition": t.condition,
        "scale": a.test.scale, "ensemble": a.test.ensemble, "checkpoint": loaded.path.display().to_string(),
        "output_stride": loaded.model.config().output_stride.value(), "shard": shard.map(|s| s.to_string()),
        "limit": a.limit,
    });
    let names = loaded.model.config().class_names();
    let r = Single { names: &names, confusion: &rep.confusion, images: rep.images as u64, skipped: json!(rep.skipped), about };
    finish_single(a, &r, protocol(a))?;
    Ok(0)
}

/// The keys that must agree between the parts of one sharded evaluation.
const SAME_IN_PARTS: [&str; 9] =
    ["dataset", "split", "condition", "scale", "ensemble", "checkpoint", "output_stride", "class_names", "limit"];

/// `eval --merge PART.json...`: the shards' confusion matrices added up, and the
/// metrics of the sum (exactly those of the unsharded evaluation: the matrix is a sum
/// over pixels, and every image is in one shard).
fn merge(a: &EvalArgs) -> Result<i32> {
    let parts: Vec<serde_json::Value> = a.merge.iter().map(|p| famix::io::read_json(p)).collect::<famix::Result<_>>()?;
    let mut shards = Vec::new();
    for (p, v) in a.merge.iter().zip(&parts) {
        let sh = v["shard"].as_str().ok_or_else(|| {
            anyhow::anyhow!("{}: not a shard of an evaluation (no \"shard\"; made by eval --shard I/N --json)", p.display())
        })?;
        shards.push(Shard::parse(sh).with_context(|| p.display().to_string())?);
        for key in SAME_IN_PARTS {
            if v.get(key) != parts[0].get(key) {
                bail!("{} and {} disagree on {key:?}: they are not parts of one evaluation", a.merge[0].display(), p.display());
            }
        }
    }
    famix::shard::check_complete(&shards)?;
    let names: Vec<String> = serde_json::from_value(parts[0]["class_names"].clone())?;
    let k = names.len();
    let mut sum = vec![0u64; k * k];
    let (mut images, mut skipped) = (0u64, Vec::new());
    for (p, v) in a.merge.iter().zip(&parts) {
        let m: Vec<Vec<u64>> =
            serde_json::from_value(v["confusion_matrix"].clone()).with_context(|| format!("{}: confusion_matrix", p.display()))?;
        if m.len() != k || m.iter().any(|r| r.len() != k) {
            bail!("{}: the confusion matrix is not {k} × {k}", p.display());
        }
        for (s, x) in sum.iter_mut().zip(m.concat()) {
            *s += x;
        }
        images += v["images"].as_u64().unwrap_or(0);
        skipped.extend(v["skipped"].as_array().cloned().unwrap_or_default());
    }
    let mut about = json!({"merged_from": a.merge, "shards": shards.len()});
    for key in SAME_IN_PARTS.iter().filter(|k| **k != "class_names") {
        about[*key] = parts[0][*key].clone();
    }
    // Parts evaluated with a subset protocol carry its key; otherwise --protocol decides.
    let subset = ["miou16", "miou13"].into_iter().find(|k| parts[0].get(*k).is_some()).and_then(ClassProtocol::from_key);
    let protocol = subset.unwrap_or(protocol(a));
    protocol.check(&names, "the merged evaluation")?;
    finish_single(a, &Single { names: &names, confusion: &sum, images, skipped: json!(skipped), about }, protocol)?;
    Ok(0)
}
