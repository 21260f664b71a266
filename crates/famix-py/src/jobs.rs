//! Long work from Python: `famix.train`, `famix.evaluate`, and style banks.
//!
//! Settings come as the keyword arguments the Python layer was given (JSON), with the
//! `famix train` flag names; what is not given keeps the library's default
//! ([`TrainConfig::reference`], the one source `famix train` uses too).
use std::path::PathBuf;

use crate::tensor::PyTensor;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::{Map, Value};

use famix::data::classes::ClassSet;
use famix::data::{Dataset, DatasetKind};
use famix::eval::metrics::by_class_name;
use famix::eval::EvalOptions;
use famix::io::run_folder::RunFolder;
use famix::style::mining::{mine_job, MineJob, MineSettings};
use famix::style::PinConfig;
use famix::train::{check_config, Given, RunOptions, TrainConfig, SETTINGS};
use famix::{Precision, PredictOptions};

use crate::errors::{setting, to_py};
use crate::progress::PyProgress;
use crate::segmenter::named;

/// A new run's settings, refused when `out` already holds a run (unless `force`).
fn new_run(out: &std::path::Path, force: bool, given: &Given) -> PyResult<TrainConfig> {
    if RunFolder::new(out).latest().exists() && !force {
        return Err(setting("out", format!("{} already holds a run: continue it with resume=, or pass force=True", out.display())));
    }
    given.new_config().map_err(to_py)
}

/// Every training setting as the library declares it (`famix::train::SETTINGS`):
/// name, documentation, printed default, whether a new run needs it, its type, the
/// names a choice takes (for the Python layer's docs and checks).
#[pyfunction]
pub fn train_settings(py: Python<'_>) -> PyResult<PyObject> {
    let list: Vec<Value> = SETTINGS
        .iter()
        .map(|s| {
            serde_json::json!({"name": s.name, "doc": s.doc, "default": s.default_text(), "required": s.required,
                "type": s.ty.name(), "choices": s.choices()})
        })
        .collect();
    let v = serde_json::to_string(&list).map_err(|e| setting("settings", e))?;
    Ok(py.import("json")?.call_method1("loads", (v,))?.unbind())
}

/// Runs or resumes a training run; returns its summary as JSON.
#[pyfunction]
#[pyo3(signature = (settings, progress, clip = None, dataset = None, data_root = None, styles = None, out = None, resume = None,
    force = false, device = "cpu", workers = None, stop_after = None, skip_bad = false, tensorboard = None, no_fold = false,
    reset_optimizer = false, from_best = false))]
#[allow(clippy::too_many_arguments)] // one per keyword argument of famix.train
pub fn train(
    py: Python<'_>,
    settings: &str,
    progress: Option<PyObject>,
    clip: Option<PathBuf>,
    dataset: Option<String>,
    data_root: Option<PathBuf>,
    styles: Option<PathBuf>,
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
    force: bool,
    device: &str,
    workers: Option<usize>,
    stop_after: Option<u64>,
    skip_bad: bool,
    tensorboard: Option<PathBuf>,
    no_fold: bool,
    reset_optimizer: bool,
    from_best: bool,
) -> PyResult<String> {
    let mut s: Map<String, Value> = serde_json::from_str(settings).map_err(|e| setting("settings", e))?;
    let path = |p: Option<PathBuf>| p.map(|p| Value::String(p.to_string_lossy().into_owned()));
    for (k, v) in [("clip", path(clip)), ("dataset", dataset.map(Value::String)), ("data_root", path(data_root)), ("styles", path(styles))]
    {
        if let Some(v) = v {
            s.insert(k.into(), v);
        }
    }
    let given = Given::from_map(s).map_err(to_py)?;
    let (cfg, run, resuming) = match resume {
        Some(run) => {
            if out.is_some() {
                return Err(setting("out", "names a new run: give resume= or out=, not both"));
            }
            // force=True with resume=: the run's saved settings, from iteration 0.
            (given.resume(&run).map_err(to_py)?, run, !force)
        }
        None => {
            let out = out.ok_or_else(|| setting("out", "out= (a new run folder) or resume= (a run to continue) is needed"))?;
            (new_run(&out, force, &given)?, out, false)
        }
    };
    check_config(&cfg).map_err(to_py)?;
    if let Some((var, value)) = cfg.numerics.cublas_env() {
        // What cuBLAS needs for reproducible results (as `famix train --deterministic`).
        std::env::set_var(var, value);
    }
    let mut opts = RunOptions::new(crate::device(device)?);
    opts.workers = workers.unwrap_or(opts.workers);
    if from_best && !resuming {
        return Err(setting("from_best", "from_best=True continues a run: use it with resume= (and without force=True)"));
    }
    (opts.stop_after, opts.skip_bad, opts.tensorboard, opts.no_fold, opts.reset_optimizer, opts.from_best) =
        (stop_after, skip_bad, tensorboard, no_fold, reset_optimizer, from_best);
    let p = PyProgress::new(progress);
    let r = py.allow_threads(|| famix::train::train(&cfg, &run, resuming, &opts, &p));
    let summary = p.finish_job(r)?;
    serde_json::to_string(&summary).map_err(|e| setting("summary", e))
}

/// Evaluates a segmenter on a dataset split; returns the report as JSON.
#[pyfunction]
#[pyo3(signature = (model, dataset, data_root, progress, split = "val", condition = None, scale = 1.0, ensemble = false,
    amp = "fp32", skip_bad = false, limit = None, classes = None))]
#[allow(clippy::too_many_arguments)] // one per keyword argument of famix.evaluate
pub fn evaluate(
    py: Python<'_>,
    model: &crate::segmenter::Segmenter,
    dataset: &str,
    data_root: PathBuf,
    progress: Option<PyObject>,
    split: &str,
    condition: Option<String>,
    scale: f64,
    ensemble: bool,
    amp: &str,
    skip_bad: bool,
    limit: Option<usize>,
    classes: Option<PathBuf>,
) -> PyResult<String> {
    let kind: DatasetKind = named("dataset", dataset)?;
    let given = classes.map(|p| ClassSet::from_file(&p).map(|c| (p, c))).transpose().map_err(to_py)?;
    let precision: Precision = named("amp", amp)?;
    let opts =
        EvalOptions { predict: PredictOptions { scale, ensemble, precision, keep_logits: false }, skip_bad, limit, ..Default::default() };
    let p = PyProgress::new(progress);
    let r = py.allow_threads(|| -> PyResult<famix::Result<String>> {
        let m = model.lock()?;
        let classes =
            famix::data::classes::agree(&m.config().classes, given.as_ref().map(|(p, c)| (p.as_path(), c.clone())), "the model".as_ref());
        Ok(classes.and_then(|c| evaluate_json(&m, &c, kind, &data_root, split, condition.as_deref(), &opts, &p)))
    })?;
    p.finish_job(r)
}

#[allow(clippy::too_many_arguments)] // the model, the data and the options
fn evaluate_json(
    m: &famix::Segmenter,
    classes: &ClassSet,
    kind: DatasetKind,
    root: &std::path::Path,
    split: &str,
    condition: Option<&str>,
    opts: &EvalOptions,
    p: &PyProgress,
) -> famix::Result<String> {
    let ds = Dataset::open(kind, root, split, condition)?.with_classes(classes)?;
    let rep = famix::eval::evaluate(m, &ds, opts, p)?;
    // The keys of `famix eval --json`, and the per-class accuracy and pixel count.
    let names = m.config().class_names();
    let mut v = rep.metrics.eval_json(&names, &rep.confusion);
    v["per_class_acc"] = by_class_name(&names, &rep.metrics.per_class_acc).into();
    (v["pixels"], v["images"], v["skipped"]) = (rep.metrics.pixels.into(), rep.images.into(), serde_json::json!(rep.skipped));
    Ok(v.to_string())
}

/// The library's defaults of the mining settings (for the Python layer's docs).
#[pyfunction]
pub fn mine_defaults(py: Python<'_>) -> PyResult<PyObject> {
    let (s, pin) = (MineSettings::reference(0), PinConfig::default());
    let d = PyDict::new(py);
    d.set_item("batch", s.batch)?;
    d.set_item("crop", s.crop)?;
    d.set_item("seed", s.seed)?;
    d.set_item("passes", s.passes)?;
    d.set_item("group", s.group)?;
    d.set_item("save_every", s.save_every)?;
    d.set_item("iters", pin.iters)?;
    d.set_item("lr", pin.lr)?;
    d.set_item("grid", pin.grid)?;
    Ok(d.into_any().unbind())
}

/// The names a setting takes ("dataset", "engine", "amp", "freeze", "output").
#[pyfunction]
pub fn choices(name: &str) -> PyResult<Vec<&'static str>> {
    fn all<T: famix::Named>() -> Vec<&'static str> {
        T::ALL.iter().map(|v| v.name()).collect()
    }
    Ok(match name {
        "dataset" => all::<DatasetKind>(),
        "engine" => all::<famix::engine::Engine>(),
        "amp" => all::<Precision>(),
        "freeze" => all::<famix::model::FreezePolicy>(),
        "output" => all::<famix::export::ExportOutput>(),
        _ => return Err(setting("setting", format!("{name:?} has no named choices"))),
    })
}

/// Mines a style bank (as `famix mine-styles`); returns it.
#[pyfunction]
#[pyo3(signature = (out, clip, dataset, data_root, progress, split = "train", condition = None, batch = None, crop = None,
    iters = None, lr = None, grid = None, seed = None, passes = None, limit = None, styles = None, prompt = None, group = None,
    save_every = None, resume = false, force = false, shard = None, deterministic = false, no_tf32 = false, device = "cpu",
    workers = None, skip_bad = false, classes = None))]
#[allow(clippy::too_many_arguments)] // one per keyword argument of famix.mine_styles
pub fn mine_styles(
    py: Python<'_>,
    out: PathBuf,
    clip: PathBuf,
    dataset: &str,
    data_root: PathBuf,
    progress: Option<PyObject>,
    split: &str,
    condition: Option<String>,
    batch: Option<usize>,
    crop: Option<usize>,
    iters: Option<usize>,
    lr: Option<f64>,
    grid: Option<usize>,
    seed: Option<u64>,
    passes: Option<u64>,
    limit: Option<u64>,
    styles: Option<PathBuf>,
    prompt: Option<String>,
    group: Option<usize>,
    save_every: Option<u64>,
    resume: bool,
    force: bool,
    shard: Option<String>,
    deterministic: bool,
    no_tf32: bool,
    device: &str,
    workers: Option<usize>,
    skip_bad: bool,
    classes: Option<PathBuf>,
) -> PyResult<StyleBank> {
    let reference = PinConfig::default();
    let pin = PinConfig {
        iters: iters.unwrap_or(reference.iters),
        lr: lr.unwrap_or(reference.lr),
        grid: grid.unwrap_or(reference.grid),
        ..reference
    };
    let mut s = MineSettings::reference(workers.unwrap_or_else(famix::data::prefetch::default_workers));
    s.batch = batch.unwrap_or(s.batch);
    s.crop = crop.unwrap_or(s.crop);
    s.seed = seed.unwrap_or(s.seed);
    s.passes = passes.unwrap_or(s.passes);
    s.group = group.unwrap_or(s.group);
    s.save_every = save_every.unwrap_or(s.save_every);
    (s.limit, s.description, s.skip_bad) = (limit, prompt, skip_bad);
    s.shard = shard.map(|v| famix::shard::Shard::parse(&v)).transpose().map_err(to_py)?;
    s.numerics = famix::device::Numerics { deterministic, tf32: !no_tf32 };
    if let Some((var, value)) = s.numerics.cublas_env() {
        // As for training: cuBLAS's deterministic matmuls need it before CUDA starts.
        std::env::set_var(var, value);
    }
    let job = MineJob {
        clip,
        device: crate::device(device)?,
        dataset: named("dataset", dataset)?,
        data_root,
        split: split.into(),
        condition,
        prompts: styles,
        classes: classes.map(|p| ClassSet::from_file(&p)).transpose().map_err(to_py)?,
        out,
        resume,
        force,
    };
    let p = PyProgress::new(progress);
    let r = py.allow_threads(|| mine_job(&job, &s, &pin, &p));
    Ok(StyleBank { inner: p.finish_job(r)? })
}

/// A style bank (`famix mine-styles`' output).
#[pyclass(module = "famix._famix")]
pub struct StyleBank {
    inner: famix::style::bank::StyleBank,
}

#[pymethods]
impl StyleBank {
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        Ok(StyleBank { inner: py.allow_threads(|| famix::style::bank::StyleBank::load(&path)).map_err(to_py)? })
    }

    /// Combines the parts of one sharded mining run (every part complete).
    #[staticmethod]
    fn merge(py: Python<'_>, paths: Vec<PathBuf>) -> PyResult<Self> {
        let inner = py
            .allow_threads(|| -> famix::Result<_> {
                let parts =
                    paths.iter().map(|p| Ok((p.clone(), famix::style::bank::StyleBank::load(p)?))).collect::<famix::Result<Vec<_>>>()?;
                famix::style::mining::merge_shards(&parts)
            })
            .map_err(to_py)?;
        Ok(StyleBank { inner })
    }

    /// Writes the bank (and its JSON summary) atomically.
    fn save(&mut self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.allow_threads(|| self.inner.save(&path)).map_err(to_py)
    }

    #[getter]
    fn classes(&self) -> Vec<String> {
        self.inner.classes.names()
    }

    #[getter]
    fn channels(&self) -> usize {
        self.inner.channels
    }

    /// Styles per class id.
    fn counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (class, (mu, _)) in &self.inner.entries {
            d.set_item(*class, mu.len())?;
        }
        Ok(d)
    }

    /// The (μ, σ) rows of a class: two (count, channels) float32 tensors.
    fn styles(&self, class_id: i64) -> PyResult<(PyTensor, PyTensor)> {
        let no_styles = || setting("class_id", format!("the bank has no styles for class {class_id}"));
        let id = u8::try_from(class_id).map_err(|_| no_styles())?;
        let (mu, sigma) = self.inner.entries.get(&id).ok_or_else(no_styles)?;
        let t = |rows: &Vec<Vec<f32>>| tch::Tensor::from_slice(&rows.concat()).view([rows.len() as i64, self.inner.channels as i64]);
        Ok((PyTensor(t(mu)), PyTensor(t(sigma))))
    }

    fn __len__(&self) -> usize {
        self.inner.total()
    }

    /// The JSON summary (counts, settings, losses).
    fn summary(&self) -> PyResult<String> {
        serde_json::to_string(&self.inner.summary).map_err(|e| setting("summary", e))
    }
}
