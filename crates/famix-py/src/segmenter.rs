//! `famix.Segmenter`: a loaded segmenter (famix checkpoint or reference `.pth`).
use std::path::PathBuf;
use std::sync::Mutex;

use crate::tensor::PyTensor;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use famix::engine::calibration::Calibration;
use famix::engine::{attach, Engine};
use famix::export::{write_onnx, ExportOptions, ExportOutput};
use famix::{Named, Precision, PredictOptions};

use crate::errors::{setting, to_py};

/// A named library setting from its Python string.
pub fn named<T: Named>(arg: &str, value: &str) -> PyResult<T> {
    T::parse(value).ok_or_else(|| setting(arg, format!("{value:?} is not one of {}", T::names())))
}

/// The library's segmenter behind a lock: its inference engine is `Send` but not
/// `Sync`, and Python may call from several threads.
#[pyclass(module = "famix._famix")]
pub struct Segmenter {
    inner: Mutex<famix::Segmenter>,
    /// The engine inference runs on (resolved: never `Auto`).
    engine: Engine,
    /// The int8 calibration it runs with (ONNX Runtime), if any.
    int8: Option<Calibration>,
}

/// Puts `m` on `engine`, or on int8 ONNX Runtime when a calibration is given.
fn attach_engine(m: &mut famix::Segmenter, engine: Engine, int8: Option<&Calibration>) -> famix::Result<Engine> {
    match int8 {
        Some(c) => famix::engine::attach_int8(m, c).map(|_| Engine::OnnxRuntime),
        None => attach(m, engine, Precision::Fp32).map(|r| r.0),
    }
}

impl Segmenter {
    pub(crate) fn lock(&self) -> PyResult<std::sync::MutexGuard<'_, famix::Segmenter>> {
        self.inner.lock().map_err(|_| crate::errors::Error::new_err("the segmenter was poisoned by a panic"))
    }

    /// Runs `f` on the model with the GIL released (tensors are `Send` but not
    /// `Sync`: `f` takes what it needs by value, and the lock is taken inside).
    pub(crate) fn with_model<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&famix::Segmenter) -> famix::Result<T> + Send) -> PyResult<T> {
        py.allow_threads(|| {
            let m = self.lock()?;
            f(&m).map_err(to_py)
        })
    }
}

#[pymethods]
impl Segmenter {
    #[staticmethod]
    #[pyo3(signature = (path, device = "cpu", engine = "torch", output_stride = None, int8 = None))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        engine: &str,
        output_stride: Option<i64>,
        int8: Option<PathBuf>,
    ) -> PyResult<Self> {
        let device = crate::device(device)?;
        let engine: Engine = named("engine", engine)?;
        if int8.is_some() && engine == Engine::Torch {
            return Err(setting("int8", "int8 runs on ONNX Runtime: pass engine=\"onnxruntime\" or \"auto\"".to_string()));
        }
        let int8 = int8.map(|p| Calibration::load(&p)).transpose().map_err(to_py)?;
        let os = output_stride.map(famix::clip::OutputStride::from_int).transpose().map_err(to_py)?;
        let (model, engine) = py
            .allow_threads(|| -> famix::Result<_> {
                let mut m = match os {
                    Some(os) => famix::Segmenter::load_with_stride(&path, device, os)?,
                    None => famix::Segmenter::load(&path, device)?,
                };
                let engine = attach_engine(&mut m, engine, int8.as_ref())?;
                Ok((m, engine))
            })
            .map_err(to_py)?;
        Ok(Segmenter { inner: Mutex::new(model), engine, int8 })
    }

    /// (N, 3, H, W) uint8 RGB → (ids (N, H, W) int64, logits or None).
    #[pyo3(signature = (images, scale = 1.0, ensemble = false, amp = "fp32", logits = false))]
    fn predict_batch(
        &self,
        py: Python<'_>,
        images: PyTensor,
        scale: f64,
        ensemble: bool,
        amp: &str,
        logits: bool,
    ) -> PyResult<(PyTensor, Option<PyTensor>)> {
        let precision: Precision = named("amp", amp)?;
        if images.kind() != tch::Kind::Uint8 || images.dim() != 4 || images.size()[1] != 3 {
            return Err(crate::errors::input(
                "images",
                format!("expected uint8 RGB (N, 3, H, W), got {:?} {:?}", images.kind(), images.size()),
            ));
        }
        let opts = PredictOptions { scale, ensemble, precision, keep_logits: logits };
        let images = images.0;
        let (ids, l) = self.with_model(py, move |m| m.predict_ids(&images, &opts))?;
        Ok((PyTensor(ids), l.map(PyTensor)))
    }

    /// Logits (N, K, H, W) of normalised float images (N, 3, H, W), on the model's engine.
    #[pyo3(signature = (x, scale = 1.0, ensemble = false))]
    fn logits(&self, py: Python<'_>, x: PyTensor, scale: f64, ensemble: bool) -> PyResult<PyTensor> {
        if !x.is_floating_point() || x.dim() != 4 || x.size()[1] != 3 {
            return Err(crate::errors::input("x", format!("expected float (N, 3, H, W), got {:?} {:?}", x.kind(), x.size())));
        }
        let x = x.0;
        self.with_model(py, move |m| m.logits(&x.to_device(m.device()).to_kind(tch::Kind::Float), scale, ensemble)).map(PyTensor)
    }

    #[getter]
    fn classes(&self) -> PyResult<Vec<String>> {
        Ok(self.lock()?.config().class_names())
    }

    #[getter]
    fn palette(&self) -> PyResult<Vec<[u8; 3]>> {
        Ok(self.lock()?.config().palette())
    }

    #[getter]
    fn output_stride(&self) -> PyResult<i64> {
        Ok(self.lock()?.config().output_stride.value())
    }

    #[getter]
    fn device(&self) -> PyResult<String> {
        Ok(format!("{:?}", self.lock()?.device()).to_lowercase())
    }

    #[getter]
    fn engine(&self) -> PyResult<&'static str> {
        Ok(self.lock()?.engine_name())
    }

    /// Rebuilds the folded weights and the engine from the current weights.
    fn refresh(&self, py: Python<'_>) -> PyResult<()> {
        let engine = self.engine;
        py.allow_threads(|| {
            let mut m = self.lock()?;
            m.check_weights().map_err(to_py)?;
            m.unfold();
            m.fold();
            attach_engine(&mut m, engine, self.int8.as_ref()).map_err(to_py)?;
            Ok(())
        })
    }

    /// Parameters and batch-norm buffers by name, sharing storage with the model.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let m = self.lock()?;
        let mut vars: Vec<(String, tch::Tensor)> = m.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in vars {
            d.set_item(name, PyTensor(t))?;
        }
        Ok(d)
    }

    #[pyo3(signature = (path, opset = 17, height = None, width = None, output = "logits", include_preprocessing = false))]
    #[allow(clippy::too_many_arguments)] // one per keyword argument of Segmenter.export_onnx
    fn export_onnx(
        &self,
        py: Python<'_>,
        path: PathBuf,
        opset: i64,
        height: Option<i64>,
        width: Option<i64>,
        output: &str,
        include_preprocessing: bool,
    ) -> PyResult<()> {
        let output: ExportOutput = named("output", output)?;
        let o = ExportOptions { opset, height, width, output, include_preprocessing, int8: None };
        self.with_model(py, move |m| write_onnx(m, &o, &path))
    }

    fn __repr__(&self) -> PyResult<String> {
        let m = self.lock()?;
        let c = m.config();
        Ok(format!(
            "famix.Segmenter({} classes, OS{}, device={:?}, engine={})",
            c.head.num_classes,
            c.output_stride.value(),
            format!("{:?}", m.device()).to_lowercase(),
            m.engine_name()
        ))
    }
}
