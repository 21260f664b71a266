//! Run reports (`famix report`): what a researcher looks at to judge a training run.
//!
//! [`write_report`] reads a run folder — `config.json`, `train_log.jsonl`,
//! `best_confusion.json` and the best (else latest) checkpoint — and writes an HTML
//! page with the figures it shows, as PNG files next to it ([`plots`]): training loss,
//! both learning rates and validation mIoU over iterations (best marked), the
//! per-class IoU of the best validation, its row-normalised confusion matrix, and a
//! grid of validation samples (image | ground truth | prediction | overlay). Parts
//! whose inputs are missing (no validation set configured, data moved) are left out
//! with a note on the page, never silently.
//!
//! `crate::io::tensorboard` writes the same scalars as TensorBoard event files during
//! training.

pub mod browse;
pub mod plots;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::data::Dataset;
use crate::error::{fail, Context, Error, Result};
use crate::imageops::{Filter, Image8};
use crate::model::{PredictOptions, Segmenter};
use crate::render::{colorize, overlay};
use plots::Series;

/// One loss line of `train_log.jsonl`.
#[derive(Debug, Clone, Deserialize)]
pub struct TrainPoint {
    /// Iterations done.
    pub iter: u64,
    /// Mean loss since the previous line.
    pub loss: f64,
    /// Head learning rate.
    pub lr_head: f64,
    /// Backbone learning rate.
    pub lr_backbone: f64,
    /// Training throughput.
    #[serde(default)]
    pub images_per_s: f64,
}

/// One validation line of `train_log.jsonl`.
#[derive(Debug, Clone, Deserialize)]
pub struct ValPoint {
    /// Iterations done.
    pub iter: u64,
    /// Validation mIoU (0–1).
    pub val_miou: f64,
}

/// One line of `train_log.jsonl` with the monitored sets' mIoU.
#[derive(Debug, Clone, Deserialize)]
pub struct MonitorPoint {
    /// Iterations done.
    pub iter: u64,
    /// mIoU (0–1) by monitored set.
    pub monitor_miou: std::collections::BTreeMap<String, f64>,
}

/// A run's log, split by kind.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Loss lines.
    pub train: Vec<TrainPoint>,
    /// Validation lines.
    pub val: Vec<ValPoint>,
    /// Monitored sets' lines.
    pub monitor: Vec<MonitorPoint>,
}

impl History {
    /// The mIoU curves: validation first, then each monitored set, by name.
    pub fn miou_curves(&self) -> Vec<(String, Vec<(f64, f64)>)> {
        let mut out = Vec::new();
        if !self.val.is_empty() {
            out.push(("val".to_string(), self.val.iter().map(|p| (p.iter as f64, p.val_miou)).collect()));
        }
        let names: std::collections::BTreeSet<&String> = self.monitor.iter().flat_map(|m| m.monitor_miou.keys()).collect();
        for n in names {
            let pts = self.monitor.iter().filter_map(|m| m.monitor_miou.get(n).map(|v| (m.iter as f64, *v))).collect();
            out.push((n.clone(), pts));
        }
        out
    }
}

/// Reads `RUN/train_log.jsonl`. A last line cut short by a crash is ignored; any other
/// unreadable line is an error naming its number.
pub fn read_history(run: &Path) -> Result<History> {
    let p = crate::io::run_folder::RunFolder::new(run).log();
    if !p.is_file() {
        return Err(Error::invalid_input(&p, format!("{} not found: not a training run folder", p.display())));
    }
    let text = std::fs::read_to_string(&p).map_err(|e| Error::from(e).unreadable(&p, "cannot read the training log"))?;
    let lines: Vec<&str> = text.lines().collect();
    let mut h = History::default();
    for (i, line) in lines.iter().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(e) => return Err(Error::from(e).unreadable(&p, format!("line {} is not JSON", i + 1))),
        };
        let bad_line = |e: serde_json::Error| Error::from(e).unreadable(&p, format!("line {}", i + 1));
        if v.get("val_miou").is_some() {
            h.val.push(serde_json::from_value(v).map_err(bad_line)?);
        } else if v.get("monitor_miou").is_some() {
            h.monitor.push(serde_json::from_value(v).map_err(bad_line)?);
        } else if v.get("loss").is_some() {
            h.train.push(serde_json::from_value(v).map_err(bad_line)?);
        }
    }
    Ok(h)
}

/// `RUN/best_confusion.json`, as `train` writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct BestValidation {
    /// Iteration of the best validation.
    pub iter: u64,
    /// Its mIoU.
    pub miou: f64,
    /// The validation set, described.
    pub dataset: String,
    /// Class names (row/column order of the matrix).
    pub class_names: Vec<String>,
    /// Per-class IoU (NaN written as null: classes absent from both sides).
    pub per_class_iou: Vec<Option<f64>>,
    /// K × K counts, rows = ground truth.
    pub confusion_matrix: Vec<Vec<u64>>,
}

impl BestValidation {
    /// Reads and checks the file (square matrix matching the class names).
    pub fn read(path: &Path) -> Result<Self> {
        let b: BestValidation = crate::io::read_json(path)?;
        let k = b.class_names.len();
        if b.confusion_matrix.len() != k || b.confusion_matrix.iter().any(|r| r.len() != k) || b.per_class_iou.len() != k {
            fail!(InvalidInput, path, "{}: the confusion matrix or per-class IoU does not match its {k} class names", path.display());
        }
        Ok(b)
    }
}

/// One row of the sample grid: image | ground truth | prediction | overlay, each
/// scaled to `panel_width`.
pub(crate) fn sample_row(model: &Segmenter, image: &Image8, label: &Image8, panel_width: usize) -> Result<Image8> {
    let pred = model.predict(image, &PredictOptions::default())?;
    let palette = model.config().palette();
    let (gt, pr) = (colorize(label, &palette), colorize(&pred.train_ids, &palette));
    let ov = overlay(image, &pr);
    Ok(panel_row(&[(image, Filter::Bilinear), (&gt, Filter::Nearest), (&pr, Filter::Nearest), (&ov, Filter::Bilinear)], panel_width))
}

/// Same-size panels side by side, each scaled to `panel_width` (height keeping the
/// first panel's aspect ratio) with its filter — `Nearest` for label colours — and 4
/// white pixels between them.
pub fn panel_row(panels: &[(&Image8, Filter)], panel_width: usize) -> Image8 {
    let first = panels.first().map(|p| p.0);
    let h = first.map(|im| (im.height * panel_width).div_ceil(im.width.max(1)).max(1)).unwrap_or(1);
    let scaled: Vec<Image8> = panels.iter().map(|(im, f)| im.resize(panel_width, h, *f)).collect();
    hstack(&scaled, 4)
}

/// Panels side by side with `gap` white pixels between them (same height, RGB).
pub(crate) fn hstack(panels: &[Image8], gap: usize) -> Image8 {
    let h = panels.iter().map(|p| p.height).max().unwrap_or(0);
    let w = panels.iter().map(|p| p.width).sum::<usize>() + gap * panels.len().saturating_sub(1);
    let mut out = Image8::new(w, h, 3, 255);
    let mut x0 = 0;
    for p in panels {
        for y in 0..p.height {
            let src = &p.data[y * p.width * 3..(y + 1) * p.width * 3];
            out.data[(y * w + x0) * 3..(y * w + x0 + p.width) * 3].copy_from_slice(src);
        }
        x0 += p.width + gap;
    }
    out
}

/// Rows stacked top to bottom with `gap` white pixels between them.
pub fn vstack(rows: &[Image8], gap: usize) -> Image8 {
    let w = rows.iter().map(|r| r.width).max().unwrap_or(0);
    let h = rows.iter().map(|r| r.height).sum::<usize>() + gap * rows.len().saturating_sub(1);
    let mut out = Image8::new(w, h, 3, 255);
    let mut y0 = 0;
    for r in rows {
        for y in 0..r.height {
            out.data[((y0 + y) * w) * 3..((y0 + y) * w + r.width) * 3].copy_from_slice(&r.data[y * r.width * 3..(y + 1) * r.width * 3]);
        }
        y0 += r.height + gap;
    }
    out
}

/// How to write a report.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Validation samples in the grid (0: no grid).
    pub samples: usize,
    /// Where the model runs for the sample grid.
    pub device: tch::Device,
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone)]
pub struct ReportFiles {
    /// The HTML page.
    pub html: PathBuf,
    /// The figures (PNG), in page order.
    pub figures: Vec<PathBuf>,
    /// Parts left out, and why.
    pub notes: Vec<String>,
}

/// The validation set of a run's config, if it has one and it can be opened.
fn run_val_set(cfg: &crate::train::TrainConfig) -> Result<Option<Dataset>> {
    let Some(v) = &cfg.val else { return Ok(None) };
    Ok(Some(Dataset::open(v.dataset, &v.data_root, &v.split, v.condition.as_deref())?))
}

/// The sample grid: the first `n` validation images of the run's validation set,
/// predicted by the best (else latest) checkpoint.
fn sample_grid(run: &Path, cfg: &crate::train::TrainConfig, opts: &ReportOptions) -> Result<Option<Image8>> {
    let Some(ds) = run_val_set(cfg)? else { return Ok(None) };
    let folder = crate::io::run_folder::RunFolder::new(run);
    let ckpt = if folder.best().exists() { folder.best() } else { folder.latest() };
    let model = Segmenter::load(&ckpt, opts.device)?;
    let mut rows = Vec::new();
    for i in 0..ds.len().min(opts.samples) {
        let (img, lbl) = ds.load(i)?;
        rows.push(sample_row(&model, &img, &lbl, 320)?);
    }
    Ok((!rows.is_empty()).then(|| vstack(&rows, 6)))
}

/// The page and file list being built.
struct Builder<'a> {
    out: &'a Path,
    page: html::Page,
    files: ReportFiles,
}

impl Builder<'_> {
    fn figure(&mut self, name: &str, caption: &str) {
        self.files.figures.push(self.out.join(name));
        self.page.figure(name, caption);
    }

    /// Loss, learning rates and validation mIoU over iterations.
    fn curves(&mut self, h: &History) -> Result<()> {
        let out = self.out;
        if h.train.is_empty() {
            self.files.notes.push("no loss line in train_log.jsonl yet".into());
        } else {
            let loss = vec![Series {
                name: "loss".into(),
                points: h.train.iter().map(|p| (p.iter as f64, p.loss)).collect(),
                color: [30, 90, 200],
            }];
            plots::line_chart(&out.join("loss.png"), "training loss", "iteration", "cross-entropy", &loss, None)?;
            self.figure("loss.png", "Training loss (mean over each log interval).");
            let lrs = [
                Series { name: "head".into(), points: h.train.iter().map(|p| (p.iter as f64, p.lr_head)).collect(), color: [200, 80, 30] },
                Series {
                    name: "backbone".into(),
                    points: h.train.iter().map(|p| (p.iter as f64, p.lr_backbone)).collect(),
                    color: [40, 150, 60],
                },
            ];
            plots::line_chart(&out.join("lr.png"), "learning rates", "iteration", "learning rate", &lrs, None)?;
            self.figure("lr.png", "Learning rates of the head and the trainable backbone (polynomial decay).");
        }
        if h.val.is_empty() && h.monitor.is_empty() {
            self.files.notes.push("no validation in this run (no validation set configured, or none reached yet)".into());
            return Ok(());
        }
        let curves = h.miou_curves();
        let val = curves.iter().find(|(name, _)| name == "val").map(|(_, pts)| pts.as_slice()).unwrap_or_default();
        let best = val.iter().copied().fold(None, |b: Option<(f64, f64)>, p| if b.is_none_or(|b| p.1 > b.1) { Some(p) } else { b });
        let s: Vec<Series> = curves
            .into_iter()
            .enumerate()
            .map(|(i, (name, points))| Series { name: format!("{name} mIoU"), points, color: plots::series_color(i) })
            .collect();
        plots::line_chart(&out.join("val_miou.png"), "validation mIoU", "iteration", "mIoU", &s, best)?;
        let monitored = if h.monitor.is_empty() { "" } else { " Monitored sets are only watched: they never choose the best." };
        self.figure("val_miou.png", &format!("Validation mIoU over iterations; the circle marks the best.{monitored}"));
        Ok(())
    }

    /// Per-class IoU and the confusion matrix of the best validation.
    fn best_validation(&mut self, run: &Path) -> Result<()> {
        let path = crate::io::run_folder::RunFolder::new(run).best_confusion();
        if !path.exists() {
            self.files.notes.push(format!("{} not found: no per-class IoU or confusion matrix", path.display()));
            return Ok(());
        }
        let b = BestValidation::read(&path)?;
        let iou: Vec<f64> = b.per_class_iou.iter().map(|v| v.unwrap_or(f64::NAN)).collect();
        plots::bar_chart(
            &self.out.join("per_class_iou.png"),
            &format!("per-class IoU (best, iteration {})", b.iter),
            &b.class_names,
            &iou,
        )?;
        self.figure("per_class_iou.png", &format!("Per-class IoU of the best validation ({}, mIoU {:.2} %).", b.dataset, b.miou * 100.0));
        let flat: Vec<u64> = b.confusion_matrix.concat();
        plots::confusion_heatmap(&self.out.join("confusion.png"), "confusion matrix (row-normalised)", &b.class_names, &flat)?;
        self.figure("confusion.png", "Confusion matrix of the best validation: rows are ground truth, normalised per row.");
        self.page.iou_table(&b);
        Ok(())
    }
}

/// Writes `out/index.html` and its figures for the run folder `run`.
pub fn write_report(run: &Path, out: &Path, opts: &ReportOptions) -> Result<ReportFiles> {
    let cfg: crate::train::TrainConfig = crate::io::read_json(&crate::io::run_folder::RunFolder::new(run).config())
        .with_context(|| format!("{} is not a famix run folder", run.display()))?;
    let history = read_history(run)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let files = ReportFiles { html: out.join("index.html"), figures: vec![], notes: vec![] };
    let mut b = Builder { out, page: html::Page::new(run, &cfg, &history), files };
    b.curves(&history)?;
    b.best_validation(run)?;
    if opts.samples > 0 {
        match sample_grid(run, &cfg, opts) {
            Ok(Some(grid)) => {
                grid.save_png(&out.join("samples.png"))?;
                b.figure("samples.png", "Validation samples: image | ground truth | prediction | overlay.");
            }
            Ok(None) => b.files.notes.push("no validation set in config.json: no sample grid".into()),
            Err(e) => b.files.notes.push(format!("no sample grid: {e:#}")),
        }
    }
    b.page.notes(&b.files.notes);
    crate::io::atomic_write(&b.files.html, b.page.finish().as_bytes())?;
    Ok(b.files)
}

mod html;
