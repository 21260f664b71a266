//! The ONNX Runtime engine: famix's eval-mode network as an ONNX graph built in memory
//! from the loaded weights ([`crate::export::to_onnx`]: every batch norm folded, the
//! dilation plan of the output stride, dynamic batch and size), run by ONNX Runtime's
//! CPU execution provider with all graph optimisations (level 3: fusions and NCHWc
//! layouts). Nothing is written to disk.
//!
//! The shared library is loaded at run time (the `ort` crate's `load-dynamic`), from
//! the first of: `FAMIX_ONNXRUNTIME` (the file), `ORT_DYLIB_PATH` (the file), or the
//! `onnxruntime` PyPI wheel that `make setup` installs beside libtorch in the per-user
//! cache (its `capi/libonnxruntime.so.*`). famix never downloads it.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::export::qdq::ActivationRanges;
use crate::export::{to_onnx, ExportOptions};
use crate::model::segmenter::ExternalNet;
use crate::model::{ModelStamp, Segmenter};

/// How to install it, for error messages.
const INSTALL: &str = "run `make setup` (installs onnxruntime==1.32.0 from PyPI into famix's per-user cache), \
                       or set FAMIX_ONNXRUNTIME to a libonnxruntime.so";

/// Where the per-user cache's wheel keeps the library (set by the build script from
/// the libtorch it found; the folder may not exist).
fn wheel_dir() -> Option<PathBuf> {
    option_env!("FAMIX_ORT_DIR").map(PathBuf::from)
}

/// The library file to load, or why there is none.
pub(crate) fn library_path() -> Result<PathBuf> {
    for var in ["FAMIX_ONNXRUNTIME", "ORT_DYLIB_PATH"] {
        if let Some(p) = std::env::var_os(var) {
            let p = PathBuf::from(p);
            if !p.is_file() {
                return Err(Error::invalid_input(&p, format!("{var}={}: no such file", p.display())));
            }
            return Ok(p);
        }
    }
    let dir = wheel_dir().ok_or_else(|| Error::msg(format!("ONNX Runtime's location is unknown; {INSTALL}")))?;
    let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
        let mut libs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
            .collect();
        libs.sort();
        libs.pop()
    });
    found.ok_or_else(|| {
        Error::invalid_input(&dir, format!("ONNX Runtime is not installed ({} has no libonnxruntime.so); {INSTALL}", dir.display()))
    })
}

/// Loads the library and makes famix's ONNX Runtime environment, once per process;
/// later calls return the first outcome.
fn environment() -> Result<ort::environment::Environment> {
    static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();
    let r = ENV.get_or_init(|| {
        let path = library_path().map_err(|e| e.to_string())?;
        let builder = ort::init_from(&path).map_err(|e| format!("{}: cannot load ONNX Runtime: {e}", path.display()))?;
        builder.with_name("famix").build().map_err(|e| format!("{}: ONNX Runtime does not start: {e}", path.display()))
    });
    r.clone().map_err(Error::msg)
}

/// Whether ONNX Runtime can be loaded on this machine.
pub fn available() -> bool {
    environment().is_ok()
}

pub(crate) fn ort_err(what: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| Error::msg(format!("ONNX Runtime: {what}: {e}"))
}

/// A segmenter's eval-mode network in ONNX Runtime sessions, built at the first
/// call, and again after the model's weights or output stride changed: one for the
/// first input size, whose resizes and broadcasts have constant
/// shapes (they then stay in ONNX Runtime's blocked layout and its convolutions fuse
/// their residual additions), and one more for every other size (dynamic shapes),
/// built when a second size comes. Each costs ~2 s and ~0.3 GB for RN50.
pub struct OrtNet {
    /// Sessions run with `&mut self`; one call at a time (each uses every core).
    sessions: Mutex<Sessions>,
    /// Activation ranges for int8 convolutions; fp32 when None.
    int8: Option<ActivationRanges>,
}

#[derive(Default)]
struct Sessions {
    /// The model's weights and output stride the sessions were built from; a model
    /// that differs now (weights written, another stride) gets new sessions.
    built_from: Option<ModelStamp>,
    /// The first size and its session.
    first: Option<((i64, i64), Session)>,
    /// The session for every other size.
    any_size: Option<Session>,
}

/// An optimised session on the CPU with one thread per core for `model`'s graph at
/// the given input size (`None`: any), with int8 convolutions when `int8` is given.
fn session(model: &Segmenter, size: Option<(i64, i64)>, int8: Option<&ActivationRanges>) -> Result<Session> {
    let options = ExportOptions { height: size.map(|s| s.0), width: size.map(|s| s.1), int8: int8.cloned(), ..ExportOptions::default() };
    session_from(&to_onnx(model, &options)?)
}

/// An optimised CPU session (all graph optimisations, one thread per core) for an
/// ONNX model.
pub(crate) fn session_from(bytes: &[u8]) -> Result<Session> {
    let env = environment()?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    Session::builder(&env)
        .map_err(ort_err("session options"))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| ort_err("optimisation level")(e.into()))?
        .with_intra_threads(threads)
        .map_err(|e| ort_err("threads")(e.into()))?
        .commit_from_memory(bytes)
        .map_err(ort_err("building the session"))
}

/// `x` (a contiguous f32 CPU tensor) as an ONNX Runtime input, without a copy.
pub(crate) fn f32_input(x: &Tensor) -> Result<TensorRef<'_, f32>> {
    if x.kind() != Kind::Float || x.device() != tch::Device::Cpu || !x.is_contiguous() {
        return Err(Error::msg("internal: ONNX Runtime inputs are contiguous f32 CPU tensors"));
    }
    // SAFETY: `x` is a contiguous f32 CPU tensor of `numel` elements (checked above),
    // and the view borrows `x`, so it cannot outlive the storage.
    let data: &[f32] = unsafe { std::slice::from_raw_parts(x.data_ptr() as *const f32, x.numel()) };
    TensorRef::from_array_view((x.size(), data)).map_err(ort_err("input"))
}

impl OrtNet {
    /// An engine for the segmenter it is attached to (the graphs are built from its
    /// weights and output stride at the calls that need them, and rebuilt when those
    /// change). Fails when ONNX Runtime cannot be loaded.
    pub fn new() -> Result<Self> {
        environment()?;
        Ok(OrtNet { sessions: Mutex::new(Sessions::default()), int8: None })
    }

    /// The same engine with int8 convolutions (`export::qdq`) quantised
    /// with `ranges` (from [`super::calibration`]).
    pub fn int8(ranges: ActivationRanges) -> Result<Self> {
        Ok(OrtNet { int8: Some(ranges), ..Self::new()? })
    }
}

impl Sessions {
    /// The session for inputs of `size`, built when missing.
    fn for_size(&mut self, model: &Segmenter, size: (i64, i64), int8: Option<&ActivationRanges>) -> Result<&mut Session> {
        let first = match self.first.take() {
            Some(first) => first,
            None => (size, session(model, Some(size), int8)?),
        };
        let (first_size, first_session) = self.first.insert(first);
        if *first_size == size {
            return Ok(first_session);
        }
        let any = match self.any_size.take() {
            Some(any) => any,
            None => session(model, None, int8)?,
        };
        Ok(self.any_size.insert(any))
    }
}

impl ExternalNet for OrtNet {
    fn name(&self) -> &'static str {
        if self.int8.is_some() {
            "onnxruntime-int8"
        } else {
            "onnxruntime"
        }
    }

    fn logits(&self, model: &Segmenter, x: &Tensor) -> Result<Tensor> {
        let x = x.to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
        let shape: Vec<i64> = x.size();
        let input = f32_input(&x)?;
        let stamp = model.stamp();
        let mut sessions = self.sessions.lock()?;
        if sessions.built_from.as_ref() != Some(&stamp) {
            *sessions = Sessions { built_from: Some(stamp), ..Sessions::default() };
        }
        let session = sessions.for_size(model, (shape[2], shape[3]), self.int8.as_ref())?;
        let outputs = session.run(ort::inputs!["image" => input]).map_err(ort_err("run"))?;
        let (out_shape, values) = outputs["logits"].try_extract_tensor::<f32>().map_err(ort_err("output"))?;
        let dims: Vec<i64> = out_shape.iter().copied().collect();
        Ok(Tensor::from_slice(values).view(dims.as_slice()))
    }
}
