// Host helpers shared by the launch plans of our own kernels (machete_small_m.cu,
// machete_mid_m.cu): the dynamic shared memory one block may use while `blocks_per_sm`
// blocks share an SM, the opt-in to it, and the split of `units` of work into equal
// contiguous stripes, one per resident block. The device queries are made once per device
// (and kernel), not on every call.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

namespace vmp::machete {

// *budget: bytes of dynamic shared memory per block. Returns nullptr or a static message.
inline const char* smem_budget(int device, int blocks_per_sm, int* budget) {
  struct Limits {
    int sm, optin, reserved;
  };
  static std::mutex mu;
  static std::map<int, Limits> known;
  const std::lock_guard<std::mutex> lock(mu);
  auto it = known.find(device);
  if (it == known.end()) {
    Limits l{};
    cudaError_t err = cudaDeviceGetAttribute(&l.sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&l.optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&l.reserved, cudaDevAttrReservedSharedMemoryPerBlock, device);
    if (err != cudaSuccess) return "cudaDeviceGetAttribute failed";
    it = known.emplace(device, l).first;
  }
  *budget = std::min(it->second.optin, it->second.sm / blocks_per_sm - it->second.reserved);
  return nullptr;
}

// Lets kernel fn's blocks use `bytes` of dynamic shared memory on `device` (the current one),
// above the 48 KB default; cudaFuncSetAttribute runs only when fn needs more there than
// already granted. Returns false if it fails.
inline bool allow_dynamic_smem(const void* fn, int device, int bytes) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, int> granted;
  const std::lock_guard<std::mutex> lock(mu);
  int& have = granted[{fn, device}];
  if (bytes <= have) return true;
  if (cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) != cudaSuccess) return false;
  have = bytes;
  return true;
}

// `units` over `slots` resident blocks: block b takes units [b stripe, min(units, (b+1) stripe)),
// and `grid` blocks have work.
struct Stripes {
  int stripe, grid;
};
inline Stripes split_stripes(long long units, long long slots) {
  const long long stripe = (units + slots - 1) / slots;
  return {static_cast<int>(stripe), static_cast<int>((units + stripe - 1) / stripe)};
}

}  // namespace vmp::machete
