// Kernel launch with programmatic dependent launch (PDL) on Hopper and later: the kernel
// may start while the previous kernel on the stream is still running, so its prologue
// and its reads of constant data (weights, scales) overlap that kernel's tail.
// Contract for a kernel launched here: it calls ptx::pdl_wait() (ptx.cuh) before it
// touches memory that another kernel may write or read; only then is the stream order
// restored. PDL is used only when the kernel's image was compiled from sm_90+ PTX (so
// the wait is in it) and VMP_PDL is not "0"; otherwise this is a plain launch.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>

namespace vmp {

// Read at every launch (not cached), so a process can compare both settings; a CUDA graph
// keeps the setting it was captured with.
inline bool pdl_enabled_by_env() {
  const char* v = std::getenv("VMP_PDL");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

// Whether fn's image on the current device carries griddepcontrol (compiled from sm_90+
// PTX). The runtime is asked once per kernel and device, not at every launch.
inline bool kernel_has_pdl(const void* fn) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, bool> known;
  const std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(fn, device);
  auto it = known.find(key);
  if (it == known.end()) {
    cudaFuncAttributes attr;
    it = known.emplace(key, cudaFuncGetAttributes(&attr, fn) == cudaSuccess && attr.ptxVersion >= 90).first;
  }
  return it->second;
}

// fn on grid x block; with PDL when `pdl` (kernel_has_pdl) and VMP_PDL allow it.
inline cudaError_t launch_kernel(const void* fn, dim3 grid, dim3 block, void** args, size_t smem,
                                 cudaStream_t stream, bool pdl) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr = {};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = pdl && pdl_enabled_by_env() ? 1 : 0;
  return cudaLaunchKernelExC(&cfg, fn, args);
}

}  // namespace vmp
