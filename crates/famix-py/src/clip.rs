//! `famix.clip`: a frozen CLIP model and its tokenizer.
use std::path::PathBuf;

use crate::tensor::PyTensor;
use pyo3::prelude::*;

use famix::clip::tokenizer::Tokenizer;
use famix::clip::OutputStride;

use crate::errors::to_py;

#[pyclass(module = "famix._famix")]
pub struct Clip {
    /// Behind a lock: tensors are `Send` but not `Sync`.
    inner: std::sync::Mutex<famix::clip::Clip>,
}

impl Clip {
    fn lock(&self) -> PyResult<std::sync::MutexGuard<'_, famix::clip::Clip>> {
        self.inner.lock().map_err(|_| crate::errors::Error::new_err("the CLIP model was poisoned by a panic"))
    }

    /// Runs `f` with the GIL released (see `Segmenter::with_model`).
    fn with_model<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&famix::clip::Clip) -> famix::Result<T> + Send) -> PyResult<T> {
        py.allow_threads(|| f(&*self.lock()?).map_err(to_py))
    }
}

#[pymethods]
impl Clip {
    #[staticmethod]
    #[pyo3(signature = (path, device = "cpu"))]
    fn load(py: Python<'_>, path: PathBuf, device: &str) -> PyResult<Self> {
        let device = crate::device(device)?;
        let inner = py.allow_threads(|| famix::clip::Clip::load(&path, device, OutputStride::Os32)).map_err(to_py)?;
        Ok(Clip { inner: std::sync::Mutex::new(inner) })
    }

    /// Image embeddings (N, D) of preprocessed images (N, 3, R, R).
    fn encode_image(&self, py: Python<'_>, images: PyTensor) -> PyResult<PyTensor> {
        let r = self.input_resolution()?;
        if !images.is_floating_point() || images.dim() != 4 || images.size()[1..] != [3, r, r] {
            return Err(crate::errors::input(
                "images",
                format!("expected float (N, 3, {r}, {r}) preprocessed images, got {:?} {:?}", images.kind(), images.size()),
            ));
        }
        let x = images.0;
        self.with_model(py, move |c| c.encode_image(&x.to_device(c.device()).to_kind(tch::Kind::Float))).map(PyTensor)
    }

    /// Text embeddings (N, D) of token rows (N, context) from `tokenize`.
    fn encode_text(&self, py: Python<'_>, tokens: PyTensor) -> PyResult<PyTensor> {
        if tokens.dim() != 2 || tokens.is_floating_point() {
            return Err(crate::errors::input(
                "tokens",
                format!("expected integer token rows (N, context), got {:?} {:?}", tokens.kind(), tokens.size()),
            ));
        }
        let t = tokens.0;
        self.with_model(py, move |c| c.encode_text(&t.to_kind(tch::Kind::Int64))).map(PyTensor)
    }

    /// The image resolution the image tower takes.
    #[getter]
    fn input_resolution(&self) -> PyResult<i64> {
        Ok(self.lock()?.visual.config.input_resolution)
    }

    /// The text tower's context length (None: image-only weights).
    #[getter]
    fn context_length(&self) -> PyResult<Option<i64>> {
        Ok(self.lock()?.text.as_ref().map(|t| t.config.context_length))
    }

    /// CLIP's learnt logit scale as stored (the logarithm of the inverse temperature),
    /// when the checkpoint has it.
    #[getter]
    fn logit_scale(&self) -> PyResult<Option<f64>> {
        Ok(self.lock()?.logit_scale)
    }

    fn __repr__(&self) -> PyResult<String> {
        Ok(format!("famix.clip.Clip({:?})", *self.lock()?))
    }
}

/// CLIP's BPE tokenizer: (N, context) int64 token rows.
#[pyfunction]
#[pyo3(signature = (texts, context_length = 77, truncate = false))]
pub fn tokenize(texts: Vec<String>, context_length: usize, truncate: bool) -> PyResult<PyTensor> {
    Ok(PyTensor(Tokenizer::global().batch(&texts, context_length, truncate).map_err(to_py)?))
}

/// (N, 3, H, W) uint8 RGB → float32 normalised with CLIP's mean and standard
/// deviation (the arithmetic of famix's own inference), on the input's device.
#[pyfunction]
pub fn normalize(images: PyTensor) -> PyResult<PyTensor> {
    let x = images.0;
    if x.kind() != tch::Kind::Uint8 || x.dim() != 4 || x.size()[1] != 3 {
        return Err(crate::errors::input("images", format!("expected uint8 (N, 3, H, W), got {:?} {:?}", x.kind(), x.size())));
    }
    Ok(PyTensor(famix::clip::preprocess::normalize_u8(&x, x.device())))
}
