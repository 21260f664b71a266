//! One Python exception class per library error kind ([`famix::ErrorKind`]), all
//! subclasses of `famix.Error`, carrying the library's message. (Cancelled work has
//! no class: from Python it is stopped by `KeyboardInterrupt` or by an exception of the
//! progress callable, which is what gets raised — see [`crate::progress`].)
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use famix::ErrorKind;

create_exception!(famix, Error, PyException, "Base class of every error famix raises.");
create_exception!(famix, InvalidInputError, Error, "A missing, unreadable or unusable input file or folder.");
create_exception!(famix, InvalidSettingError, Error, "A setting out of range or that does not fit the others.");
create_exception!(famix, IncompatibleError, Error, "A checkpoint, style bank or run that does not fit what it is used with.");
create_exception!(famix, NonFiniteError, Error, "Non-finite values in a file, or a run that diverged.");
create_exception!(famix, BusyError, Error, "Another process is writing the run folder or bank.");
create_exception!(famix, IoError, Error, "The operating system refused (disk full, permissions, ...).");

/// The exception for a library error.
pub fn to_py(e: famix::Error) -> PyErr {
    // The whole chain ("reading X: the cause"), as the famix command prints it.
    let msg = format!("{e:#}");
    match e.kind() {
        ErrorKind::InvalidInput => InvalidInputError::new_err(msg),
        ErrorKind::InvalidSetting => InvalidSettingError::new_err(msg),
        ErrorKind::Incompatible => IncompatibleError::new_err(msg),
        ErrorKind::NonFinite => NonFiniteError::new_err(msg),
        ErrorKind::Busy => BusyError::new_err(msg),
        ErrorKind::Io => IoError::new_err(msg),
        _ => Error::new_err(msg),
    }
}

/// A bad argument, as the library reports settings.
pub fn setting(name: &str, problem: impl std::fmt::Display) -> PyErr {
    to_py(famix::Error::invalid_setting(name, problem))
}

/// An input (an image, a text, a tensor) that cannot be used, named as its argument.
pub fn input(name: &str, problem: impl std::fmt::Display) -> PyErr {
    to_py(famix::Error::invalid_input(name, format!("{name}: {problem}")))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("InvalidInputError", py.get_type::<InvalidInputError>())?;
    m.add("InvalidSettingError", py.get_type::<InvalidSettingError>())?;
    m.add("IncompatibleError", py.get_type::<IncompatibleError>())?;
    m.add("NonFiniteError", py.get_type::<NonFiniteError>())?;
    m.add("BusyError", py.get_type::<BusyError>())?;
    m.add("IoError", py.get_type::<IoError>())?;
    Ok(())
}
