//! The demo's outputs: `results.json` (every row × seed × condition, for other tools),
//! `results.md` (mean ± sample std over seeds per cell, and the paper's claims
//! checked), `results.png` (grouped bars with ± std whiskers), `curves.png` (source
//! and validation-condition mIoU over iterations per row, mean over seeds) and
//! `comparison.png` (per test condition: image | ground truth | each row's prediction,
//! titled).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;

use famix::data::{Dataset, DatasetKind};
use famix::imageops::Filter;
use famix::render::colorize;
use famix::report::plots::{grouped_bar_chart, line_panels, with_column_titles, BarSeries, Panel, Series};
use famix::report::{panel_row, vstack};
use famix::{PredictOptions, Segmenter};
use famix_synth::Condition;

use super::ablation::{MinedBank, Row, RunResult, Settings};
use super::world::World;

/// The table's columns: source, the validation condition, each test condition, and
/// the mean over the test conditions.
pub fn columns(s: &Settings) -> Vec<String> {
    let mut c = vec!["source".to_string(), s.validation.name().to_string()];
    c.extend(s.tests.iter().map(|t| t.name().to_string()));
    c.push("test mean".into());
    c
}

/// A run's value in a column (the test mean computed from its conditions).
fn cell(r: &RunResult, column: &str, s: &Settings) -> f64 {
    if column == "test mean" {
        s.tests.iter().map(|t| r.miou[t.name()]).sum::<f64>() / s.tests.len() as f64
    } else {
        r.miou[column]
    }
}

/// Mean and sample standard deviation (n − 1; 0 for one value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (m, var.sqrt())
}

/// Per row and column: (mean, std) over seeds.
pub fn summary(results: &[RunResult], s: &Settings) -> BTreeMap<(usize, String), (f64, f64)> {
    let mut out = BTreeMap::new();
    for (ri, row) in s.rows.iter().enumerate() {
        for c in columns(s) {
            let v: Vec<f64> = results.iter().filter(|r| r.row == *row).map(|r| cell(r, &c, s)).collect();
            out.insert((ri, c), mean_std(&v));
        }
    }
    out
}

/// `path` relative to `base` (with `..` where it lies outside), so results.json stays
/// valid wherever its folder is moved or read from.
fn relative(path: &Path, base: &Path) -> String {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    pathdiff::diff_paths(abs(path), abs(base)).unwrap_or_else(|| path.to_path_buf()).display().to_string()
}

/// results.json: every path relative to `out`, the folder that holds it.
pub fn write_json(
    out: &Path,
    world: &World,
    s: &Settings,
    banks: &BTreeMap<&'static str, MinedBank>,
    results: &[RunResult],
    curves: &[RowCurves],
) -> Result<PathBuf> {
    let conditions: serde_json::Map<String, serde_json::Value> = std::iter::once(s.validation)
        .chain(s.tests.iter().copied())
        .map(|c| (c.name().to_string(), json!(relative(world.root(c), out))))
        .collect();
    let runs: Vec<serde_json::Value> = results
        .iter()
        .map(|r| json!({"row": r.row.id(), "seed": r.seed, "checkpoint": relative(&r.checkpoint, out), "miou": r.miou}))
        .collect();
    let doc = json!({
        "source_root": relative(world.root(Condition::Day), out), "conditions": conditions, "runs": runs,
        "validation": s.validation.name(), "test_conditions": s.tests.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "settings": s, "clip": relative(&world.clip, out), "banks": banks_json(out, banks),
        "curves": curves.iter().map(|c| (c.row.id().to_string(), json!({"source": c.source, s.validation.name(): c.validation})))
            .collect::<serde_json::Map<_, _>>(),
    });
    let path = out.join("results.json");
    famix::io::atomic_write_json(&path, &doc)?;
    Ok(path)
}

/// Each bank: its file, styles, the classes with styles, the classes of the source's
/// training labels and those of them without a style.
fn banks_json(out: &Path, banks: &BTreeMap<&'static str, MinedBank>) -> serde_json::Value {
    let one = |b: &MinedBank| {
        json!({"path": relative(&b.path, out), "styles": b.styles, "classes_with_styles": b.with_styles,
               "source_classes": b.in_source, "source_classes_without_styles": b.missing()})
    };
    json!(banks.iter().map(|(name, b)| (name.to_string(), one(b))).collect::<serde_json::Map<_, _>>())
}

/// The paper's claims, checked on the means: (iv) − (ii) on the test mean, (ii) − (i)
/// on the test mean, FAMix's source mIoU against (ii)'s; and the control: (iv) − (vi)
/// on the test mean.
pub fn claims(sum: &BTreeMap<(usize, String), (f64, f64)>, s: &Settings) -> Vec<String> {
    let idx = |r: Row| s.rows.iter().position(|x| *x == r);
    let get = |r: Row, c: &str| idx(r).and_then(|i| sum.get(&(i, c.to_string()))).map(|v| v.0);
    let mut out = Vec::new();
    if let (Some(f), Some(m)) = (get(Row::Famix, "test mean"), get(Row::Minimal, "test mean")) {
        out.push(format!("(iv) FAMix − (ii) minimal on the test mean: {:+.2} points (the paper's claim: ≥ +3)", f - m));
    }
    if let (Some(m), Some(full)) = (get(Row::Minimal, "test mean"), get(Row::FullFt, "test mean")) {
        out.push(format!("(ii) minimal − (i) full fine-tuning on the test mean: {:+.2} points (claim: > 0)", m - full));
    }
    if let (Some(f), Some(m)) = (get(Row::Famix, "source"), get(Row::Minimal, "source")) {
        out.push(format!("(iv) FAMix − (ii) minimal on the source: {:+.2} points (claim: within ±2)", f - m));
    }
    if let (Some(f), Some(r)) = (get(Row::Famix, "test mean"), get(Row::RandomStyles, "test mean")) {
        out.push(format!(
            "(iv) FAMix − (vi) random styles on the test mean: {:+.2} points (what the words add to style randomisation)",
            f - r
        ));
    }
    out
}

/// results.md: the mean ± std table, the per-seed values and the claims.
pub fn write_markdown(out: &Path, s: &Settings, results: &[RunResult], curves: &[RowCurves], seeds: &[u64]) -> Result<PathBuf> {
    let cols = columns(s);
    let sum = summary(results, s);
    let mut md = format!(
        "# famix demo: the FAMix ablation in miniature\n\nmIoU % (mean ± sample std over seeds {seeds:?}); trained on `day` only; `{}` is the validation condition (settings may be chosen on it), {} are the unseen test conditions.\n\n| row | {} |\n|---|{}\n",
        s.validation.name(),
        s.tests.iter().map(|t| format!("`{}`", t.name())).collect::<Vec<_>>().join(", "),
        cols.join(" | "),
        "---:|".repeat(cols.len())
    );
    for (ri, row) in s.rows.iter().enumerate() {
        let cells: Vec<String> = cols.iter().map(|c| sum[&(ri, c.clone())]).map(|(m, sd)| format!("{m:.2} ± {sd:.2}")).collect();
        md.push_str(&format!("| {} | {} |\n", row.title(), cells.join(" | ")));
    }
    md.push_str("\n## Per seed\n\n| row | seed | ");
    md.push_str(&format!("{} |\n|---|---:|{}\n", cols.join(" | "), "---:|".repeat(cols.len())));
    for r in results {
        let cells: Vec<String> = cols.iter().map(|c| format!("{:.2}", cell(r, c, s))).collect();
        md.push_str(&format!("| {} | {} | {} |\n", r.row.id(), r.seed, cells.join(" | ")));
    }
    md.push_str("\n## The paper's claims, on the means\n\n");
    for c in claims(&sum, s) {
        md.push_str(&format!("- {c}\n"));
    }
    md.push_str(&curves_markdown(s, curves));
    let path = out.join("results.md");
    famix::io::atomic_write(&path, md.as_bytes())?;
    Ok(path)
}

/// results.md's learning-curve table: each row's source and validation-condition mIoU
/// at every validation (mean over seeds), and the convergence line.
fn curves_markdown(s: &Settings, curves: &[RowCurves]) -> String {
    let Some(first) = curves.first() else { return String::new() };
    let its: Vec<String> = first.source.iter().map(|p| format!("{:.0}", p.0)).collect();
    let head: Vec<String> =
        its.iter().map(|i| format!("source @{i}")).chain(its.iter().map(|i| format!("{} @{i}", s.validation.name()))).collect();
    let mut md =
        format!("\n## Learning curves (mIoU %, mean over seeds)\n\n| row | {} |\n|---|{}\n", head.join(" | "), "---:|".repeat(head.len()));
    for c in curves {
        let cells: Vec<String> = c.source.iter().chain(&c.validation).map(|p| format!("{:.2}", p.1)).collect();
        md.push_str(&format!("| {} | {} |\n", c.row.title(), cells.join(" | ")));
    }
    if let Some(line) = describe_convergence(curves) {
        md.push_str(&format!("\n{line}.\n"));
    }
    md
}

const ROW_COLORS: [[u8; 3]; 6] = [[150, 150, 150], [80, 120, 200], [240, 160, 60], [200, 50, 50], [90, 170, 90], [150, 90, 190]];

/// results.png: grouped bars per column, one bar per row, ± std whiskers.
pub fn write_chart(out: &Path, s: &Settings, results: &[RunResult]) -> Result<PathBuf> {
    let cols = columns(s);
    let sum = summary(results, s);
    let series: Vec<BarSeries> = s
        .rows
        .iter()
        .enumerate()
        .map(|(ri, row)| BarSeries {
            name: row.title().to_string(),
            color: ROW_COLORS[Row::ALL.iter().position(|r| r == row).unwrap_or(0)],
            values: cols.iter().map(|c| sum[&(ri, c.clone())]).collect(),
        })
        .collect();
    let path = out.join("results.png");
    grouped_bar_chart(&path, "famix demo: mIoU per condition (trained on day only)", "mIoU %", &cols, &series)?;
    Ok(path)
}

/// One row's curve on one set: the mean over seeds at each iteration every seed logged.
fn mean_curve(curves: &[Vec<(f64, f64)>]) -> Vec<(f64, f64)> {
    let Some(first) = curves.first() else { return Vec::new() };
    first
        .iter()
        .filter_map(|&(it, _)| {
            let v: Vec<f64> = curves.iter().filter_map(|c| c.iter().find(|p| p.0 == it).map(|p| p.1 * 100.0)).collect();
            (v.len() == curves.len()).then(|| (it, mean_std(&v).0))
        })
        .collect()
}

/// Each row's learning curves, mean over seeds: (iteration, mIoU %) on the source's
/// validation split and on the validation condition, read from each run's log.
pub struct RowCurves {
    /// The row.
    pub row: Row,
    /// Source validation mIoU over iterations.
    pub source: Vec<(f64, f64)>,
    /// The validation condition's mIoU over iterations.
    pub validation: Vec<(f64, f64)>,
}

impl RowCurves {
    /// The source mIoU's change over the last validation interval (None with fewer
    /// than two validations): a row still gaining has not converged.
    pub fn last_gain(&self) -> Option<(f64, f64)> {
        let n = self.source.len();
        (n >= 2).then(|| (self.source[n - 1].0 - self.source[n - 2].0, self.source[n - 1].1 - self.source[n - 2].1))
    }
}

/// Every row's [`RowCurves`].
pub fn row_curves(s: &Settings, results: &[RunResult]) -> Result<Vec<RowCurves>> {
    let sets = ["val".to_string(), s.validation.name().to_string()];
    let mut rows = Vec::new();
    for row in &s.rows {
        let mut curves: Vec<Vec<Vec<(f64, f64)>>> = vec![Vec::new(), Vec::new()];
        for r in results.iter().filter(|r| r.row == *row) {
            let run = r.checkpoint.parent().unwrap_or(Path::new("."));
            let named = famix::report::read_history(run)?.miou_curves();
            for (i, set) in sets.iter().enumerate() {
                curves[i].push(named.iter().find(|(n, _)| n == set).map(|(_, c)| c.clone()).unwrap_or_default());
            }
        }
        rows.push(RowCurves { row: *row, source: mean_curve(&curves[0]), validation: mean_curve(&curves[1]) });
    }
    Ok(rows)
}

/// One line: each row's source gain over the last validation interval.
pub fn describe_convergence(curves: &[RowCurves]) -> Option<String> {
    let gains: Vec<(String, f64, f64)> =
        curves.iter().filter_map(|c| c.last_gain().map(|(di, dm)| (short_title(c.row).to_string(), di, dm))).collect();
    let span = gains.first()?.1;
    let each: Vec<String> = gains.iter().map(|(name, _, dm)| format!("{name} {dm:+.2}")).collect();
    Some(format!(
        "source mIoU over the last {span:.0} iterations (mean over seeds; a row still gaining has not converged): {}",
        each.join(", ")
    ))
}

/// curves.png: per row, the source validation mIoU (left) and the validation
/// condition's (right) over iterations, mean over seeds.
pub fn write_curves(out: &Path, s: &Settings, curves: &[RowCurves]) -> Result<PathBuf> {
    let mut per_set: Vec<Vec<Series>> = vec![Vec::new(), Vec::new()];
    for c in curves {
        let color = ROW_COLORS[Row::ALL.iter().position(|r| *r == c.row).unwrap_or(0)];
        per_set[0].push(Series { name: short_title(c.row).to_string(), points: c.source.clone(), color });
        per_set[1].push(Series { name: short_title(c.row).to_string(), points: c.validation.clone(), color });
    }
    let titles = ["source (day) validation mIoU, mean over seeds".to_string(), format!("{} mIoU, mean over seeds", s.validation.name())];
    let panels: Vec<Panel> = titles
        .iter()
        .zip(&per_set)
        .map(|(t, series)| Panel { title: t, x_label: "iteration", y_label: "mIoU %", series, best: None })
        .collect();
    let path = out.join("curves.png");
    line_panels(&path, &panels)?;
    Ok(path)
}

/// A bank in a line: styles, classes with styles, and how far PIN's loss fell.
pub fn describe_bank(b: &MinedBank) -> String {
    let pin = match (b.pin_curve.first(), b.pin_curve.iter().rev().nth(b.pin_curve.len() / 4), b.pin_curve.last()) {
        (Some(a), Some(q), Some(z)) => {
            format!("; PIN loss {:.4} at step {} → {:.4} at step {} → {:.4} at step {}", a.1, a.0, q.1, q.0, z.1, z.0)
        }
        _ => String::new(),
    };
    let missing = b.missing();
    let cover = if missing.is_empty() {
        format!("all {} classes of the source's labels", b.in_source.len())
    } else {
        format!("{} of the source's {} classes (none for {})", b.in_source.len() - missing.len(), b.in_source.len(), missing.join(", "))
    };
    format!("{} styles for {cover}{pin}", b.styles)
}

/// pin.png: each bank's mean PIN loss over steps (None when no bank was mined).
pub fn write_pin_curves(out: &Path, banks: &BTreeMap<&'static str, MinedBank>) -> Result<Option<PathBuf>> {
    if banks.is_empty() {
        return Ok(None);
    }
    let series: Vec<Series> = banks
        .iter()
        .enumerate()
        .map(|(i, (name, b))| Series {
            name: format!("{name} vocabulary"),
            points: b.pin_curve.iter().map(|&(st, l)| (st as f64, l)).collect(),
            color: famix::report::plots::series_color(i + 1),
        })
        .collect();
    let path = out.join("pin.png");
    let title = "PIN: mean loss (1 − cosine to the style prompt) over steps";
    line_panels(&path, &[Panel { title, x_label: "PIN step", y_label: "loss", series: &series, best: None }])?;
    Ok(Some(path))
}

/// comparison.png: for the first validation image of each test condition, the image,
/// its ground truth and each row's prediction (the first seed's models), with titles.
pub fn write_comparison(out: &Path, world: &World, s: &Settings, results: &[RunResult], device: tch::Device) -> Result<PathBuf> {
    const PANEL: usize = 192;
    let seed = results.first().map(|r| r.seed).unwrap_or(1);
    let models: Vec<Segmenter> = s
        .rows
        .iter()
        .filter_map(|row| results.iter().find(|r| r.row == *row && r.seed == seed))
        .map(|r| Segmenter::load(&r.checkpoint, device))
        .collect::<famix::Result<_>>()?;
    let mut rows = Vec::new();
    for t in &s.tests {
        let ds = Dataset::open(DatasetKind::Folder, world.root(*t), "val", None)?;
        let (img, lbl) = ds.load(0)?;
        let palette = models[0].config().palette();
        let mut panels = vec![(img.clone(), Filter::Bilinear), (colorize(&lbl, &palette), Filter::Nearest)];
        for m in &models {
            panels.push((colorize(&m.predict(&img, &PredictOptions::default())?.train_ids, &palette), Filter::Nearest));
        }
        let refs: Vec<_> = panels.iter().map(|(i, f)| (i, *f)).collect();
        rows.push(panel_row(&refs, PANEL));
    }
    let grid = vstack(&rows, 4);
    let mut titles = vec![format!("image ({})", s.tests.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")), "ground truth".into()];
    titles.extend(s.rows.iter().map(|r| short_title(*r).to_string()));
    let titled = with_column_titles(&grid, &titles, PANEL, 4, 28)?;
    let path = out.join("comparison.png");
    titled.save_png(&path)?;
    Ok(path)
}

fn short_title(r: Row) -> &'static str {
    match r {
        Row::FullFt => "(i) full FT",
        Row::Minimal => "(ii) minimal FT",
        Row::StylesNoMix => "(iii) styles, no mix",
        Row::Famix => "(iv) FAMix",
        Row::Poda => "(v) PØDA prompts",
        Row::RandomStyles => "(vi) random styles",
    }
}
