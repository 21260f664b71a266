//! `famix eval`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;

use famix::data::{Dataset, DatasetKind};
use famix::eval::{evaluate, EvalOptions};
use famix::model::checkpoint;

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

pub fn eval(a: EvalArgs) -> Result<i32> {
    let predict = a.test.predict_options()?;
    let loaded = checkpoint::load(&a.checkpoint, a.device.device, a.test.output_stride()?)?;
    let ds = Dataset::open(a.dataset, &a.data_root, &a.split, a.condition.as_deref())?;
    eprintln!("evaluating {} on {}", loaded.path.display(), ds.describe());
    let opts = EvalOptions { predict, skip_bad: a.skip_bad, limit: a.limit };
    let rep = evaluate(&loaded.model, &ds, &opts, &super::progress::Bars::default())?;
    let names = &loaded.model.config.class_names;
    print!("{}", rep.metrics.table(names));
    let k = names.len();
    let subset = match a.classes {
        16 => Some(("miou16", &famix::eval::metrics::SYNTHIA_16[..])),
        13 => Some(("miou13", &famix::eval::metrics::SYNTHIA_13[..])),
        _ => None,
    };
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
            "dataset": a.dataset.name(), "split": a.split, "condition": a.condition,
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
