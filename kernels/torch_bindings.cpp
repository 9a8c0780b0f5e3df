// The one binding layer: torch tensors in, raw pointers out to the torch-free kernels.
// Every op of the plugin is defined here, in the `vmp` namespace (never `_C`, which
// vLLM owns). Fake (meta) implementations live in vllm_machete_plugin/ops.py.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "registration.h"

namespace vmp {

// Which architectures this build targets, for error messages and `build_info`.
std::string build_info() { return std::string("archs=") + VMP_CUDA_ARCHS; }

}  // namespace vmp

TORCH_LIBRARY(vmp, m) {
  m.def("build_info() -> str", &vmp::build_info);
  vmp::register_marlin_ops(m);
}

// Importable as vllm_machete_plugin._C; importing it registers the ops above.
static struct PyModuleDef vmp_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&vmp_module); }
