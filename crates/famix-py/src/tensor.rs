//! `torch.Tensor` arguments and results: the same `at::Tensor` on both sides, no copy
//! (csrc/tensor_bridge.cpp calls libtorch_python's `THPVariable_Unpack`/`_Wrap`).

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;

extern "C" {
    fn famix_thp_variable_check(obj: *mut pyo3::ffi::PyObject) -> bool;
    fn famix_thp_variable_wrap(tensor: *mut torch_sys::C_tensor) -> *mut pyo3::ffi::PyObject;
    fn famix_thp_variable_unpack(obj: *mut pyo3::ffi::PyObject) -> *mut torch_sys::C_tensor;
}

/// A tensor crossing the Python boundary.
pub struct PyTensor(pub tch::Tensor);

impl<'py> FromPyObject<'py> for PyTensor {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        let ptr = ob.as_ptr();
        // SAFETY: `ptr` is a live Python object for the duration of the call (the GIL
        // is held); the C++ side only inspects it.
        if !unsafe { famix_thp_variable_check(ptr) } {
            return Err(PyTypeError::new_err(format!("expected a torch.Tensor, got {}", ob.get_type().name()?)));
        }
        // SAFETY: as above; the result is a new heap `torch::Tensor` that tch owns.
        let t = unsafe { famix_thp_variable_unpack(ptr) };
        if t.is_null() {
            return Err(PyRuntimeError::new_err("cannot read the torch.Tensor"));
        }
        // SAFETY: `t` is a valid, owned `torch::Tensor*`, which is what tch's handle is.
        Ok(PyTensor(unsafe { tch::Tensor::from_ptr(t) }))
    }
}

impl<'py> IntoPyObject<'py> for PyTensor {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        // SAFETY: the handle is valid while `self` lives; the C++ side copies the
        // at::Tensor (one more reference) into a new Python object.
        let obj = unsafe { famix_thp_variable_wrap(self.0.as_mut_ptr()) };
        // SAFETY: `obj` is a new reference or null with a Python error set.
        unsafe { Bound::from_owned_ptr_or_err(py, obj) }
    }
}

impl std::ops::Deref for PyTensor {
    type Target = tch::Tensor;
    fn deref(&self) -> &tch::Tensor {
        &self.0
    }
}
