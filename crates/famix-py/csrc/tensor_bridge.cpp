// torch.Tensor <-> at::Tensor for the famix Python module: the three calls of
// libtorch_python that turn one into the other without copying (the same at::Tensor,
// reference-counted). Written here rather than through torch-sys's `python-extension`
// feature, which compiles the same three calls but changes torch-sys's (and so tch's
// and famix's) build: with it the Python module could not share the main workspace's
// compiled libtorch bindings, and every build compiled them twice.
#include <torch/csrc/autograd/python_variable.h>

extern "C" {

bool famix_thp_variable_check(PyObject* obj) {
  try {
    return THPVariable_Check(obj);
  } catch (...) {
    return false;
  }
}

// `tensor` is tch's C_tensor, a `torch::Tensor*`; the result is a new reference.
PyObject* famix_thp_variable_wrap(void* tensor) {
  try {
    return THPVariable_Wrap(*static_cast<at::Tensor*>(tensor));
  } catch (...) {
    return nullptr;
  }
}

// A new `torch::Tensor*` sharing `obj`'s storage (owned by the caller, as tch's).
void* famix_thp_variable_unpack(PyObject* obj) {
  try {
    return new at::Tensor(THPVariable_Unpack(obj));
  } catch (...) {
    return nullptr;
  }
}
}
