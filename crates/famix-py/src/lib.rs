//! `famix._famix`: the native half of the Python package `famix` (the public names and
//! their documentation live in `python/famix/`). Everything here calls the library's
//! public API; tensors cross as `torch.Tensor` through pyo3-tch (the same `at::Tensor`,
//! no copy), long work runs with the GIL released, library errors become the typed
//! exceptions of [`errors`], and progress and Ctrl-C travel through [`progress`].
use pyo3::prelude::*;

mod clip;
mod errors;
mod jobs;
mod progress;
mod segmenter;
mod tensor;

/// Parses a device name ("cpu", "cuda", "cuda:1").
fn device(name: &str) -> PyResult<tch::Device> {
    famix::device::parse_device(name).map_err(errors::to_py)
}

#[pymodule]
fn _famix(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<segmenter::Segmenter>()?;
    m.add_class::<clip::Clip>()?;
    m.add_class::<jobs::StyleBank>()?;
    m.add_function(wrap_pyfunction!(clip::tokenize, m)?)?;
    m.add_function(wrap_pyfunction!(clip::normalize, m)?)?;
    m.add("CLIP_MEAN", famix::clip::preprocess::CLIP_MEAN.to_vec())?;
    m.add("CLIP_STD", famix::clip::preprocess::CLIP_STD.to_vec())?;
    m.add_function(wrap_pyfunction!(jobs::train, m)?)?;
    m.add_function(wrap_pyfunction!(jobs::train_settings, m)?)?;
    m.add_function(wrap_pyfunction!(jobs::evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(jobs::mine_styles, m)?)?;
    m.add_function(wrap_pyfunction!(jobs::mine_defaults, m)?)?;
    m.add_function(wrap_pyfunction!(jobs::choices, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
