// Host side of the launch plans of our own kernels (Marlin, Machete small-M and mid-M): the
// device limits they plan with, queried once per device, and the dynamic shared memory
// opt-in of a kernel, set once per kernel, device and size instead of on every call.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

namespace vmp {

struct DeviceLimits {
  int sms = 0;
  int smem_per_sm = 0, smem_optin = 0, smem_reserved = 0;  // bytes
  // Dynamic shared memory one block may use while `blocks_per_sm` blocks share an SM.
  int smem_budget(int blocks_per_sm) const {
    return std::min(smem_optin, smem_per_sm / blocks_per_sm - smem_reserved);
  }
};

inline cudaError_t device_limits(int device, DeviceLimits* out) {
  static std::mutex mu;
  static std::map<int, DeviceLimits> known;
  const std::lock_guard<std::mutex> lock(mu);
  auto it = known.find(device);
  if (it == known.end()) {
    DeviceLimits l;
    cudaError_t err = cudaDeviceGetAttribute(&l.sms, cudaDevAttrMultiProcessorCount, device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&l.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&l.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&l.smem_reserved, cudaDevAttrReservedSharedMemoryPerBlock, device);
    if (err != cudaSuccess) return err;
    it = known.emplace(device, l).first;
  }
  *out = it->second;
  return cudaSuccess;
}

// Lets kernel fn's blocks use `bytes` of dynamic shared memory on `device` (the current one),
// above the 48 KB default; cudaFuncSetAttribute runs only when fn needs more there than
// already granted.
inline cudaError_t allow_dynamic_smem(const void* fn, int device, int bytes) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, int> granted;
  const std::lock_guard<std::mutex> lock(mu);
  int& have = granted[{fn, device}];
  if (bytes <= have) return cudaSuccess;
  const cudaError_t err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess) have = bytes;
  return err;
}

}  // namespace vmp
