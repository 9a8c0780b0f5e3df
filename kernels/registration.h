// Each kernel family's binding file defines one register_*_ops(); torch_bindings.cpp
// calls them all inside the single TORCH_LIBRARY(vmp, ...) block.
#pragma once
#include <torch/library.h>

#ifndef VMP_CUDA_ARCHS
#define VMP_CUDA_ARCHS "unknown"
#endif

namespace vmp {
void register_marlin_ops(torch::Library& m);
}  // namespace vmp
