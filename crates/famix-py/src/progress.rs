//! The library's [`famix::Progress`] for Python callers: events go to an optional
//! Python callable (a dict per event), and `cancelled()` — asked between steps of
//! long work — checks for Ctrl-C (Python's pending signals) and for an exception the
//! callable raised. Either stops the work at its next step, after the library wrote
//! what a resume needs; [`PyProgress::finish_job`] then re-raises that exception
//! (`KeyboardInterrupt` for Ctrl-C) instead of the library's `Cancelled`.
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use famix::progress::{Progress, Unit};

pub struct PyProgress {
    callback: Option<PyObject>,
    /// The first exception seen (Ctrl-C or the callable's).
    raised: Mutex<Option<PyErr>>,
}

impl PyProgress {
    pub fn new(callback: Option<PyObject>) -> Self {
        PyProgress { callback, raised: Mutex::new(None) }
    }

    fn keep(&self, e: PyErr) {
        let mut r = self.raised.lock().unwrap_or_else(|p| p.into_inner());
        r.get_or_insert(e);
    }

    fn raised(&self) -> bool {
        self.raised.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Calls the callable with `{"event": event, **fields}`.
    fn emit(&self, event: &str, fields: impl FnOnce(&Bound<'_, PyDict>) -> PyResult<()>) {
        let Some(cb) = &self.callback else { return };
        if self.raised() {
            return;
        }
        Python::with_gil(|py| {
            let call = || -> PyResult<()> {
                let d = PyDict::new(py);
                d.set_item("event", event)?;
                fields(&d)?;
                cb.call1(py, (d,))?;
                Ok(())
            };
            if let Err(e) = call() {
                self.keep(e);
            }
        });
    }

    /// The job's outcome for Python: the library's error, except when the work was
    /// cancelled by a Python exception (Ctrl-C, the callable's), which is raised
    /// instead — also when the work finished anyway (the callable failed at the end).
    pub fn finish_job<T>(&self, r: famix::Result<T>) -> PyResult<T> {
        let raised = self.raised.lock().unwrap_or_else(|p| p.into_inner()).take();
        match (r, raised) {
            (Err(e), Some(py_err)) if e.kind() == famix::ErrorKind::Cancelled => Err(py_err),
            (Err(e), _) => Err(crate::errors::to_py(e)),
            (Ok(_), Some(py_err)) => Err(py_err),
            (Ok(v), None) => Ok(v),
        }
    }
}

impl Progress for PyProgress {
    fn start(&self, task: &str, total: u64, position: u64, unit: Unit) {
        self.emit("start", |d| {
            d.set_item("task", task)?;
            d.set_item("total", total)?;
            d.set_item("position", position)?;
            d.set_item("unit", if unit == Unit::Bytes { "bytes" } else { "items" })
        });
    }
    fn advance(&self, n: u64) {
        self.emit("advance", |d| d.set_item("n", n));
    }
    fn status(&self, status: &str) {
        self.emit("status", |d| d.set_item("text", status));
    }
    fn notice(&self, line: &str) {
        self.emit("notice", |d| d.set_item("text", line));
    }
    fn metrics(&self, iteration: u64, values: &[(&str, f64)]) {
        self.emit("metrics", |d| {
            d.set_item("iter", iteration)?;
            values.iter().try_for_each(|(k, v)| d.set_item(*k, *v))
        });
    }
    fn finish(&self) {
        self.emit("finish", |_| Ok(()));
    }
    fn cancelled(&self) -> bool {
        if let Err(e) = Python::with_gil(|py| py.check_signals()) {
            self.keep(e);
        }
        self.raised()
    }
}
