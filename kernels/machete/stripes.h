// Host helpers shared by the launch plans of our own kernels (machete_small_m.cu,
// machete_mid_m.cu): the dynamic shared memory one block may use while `blocks_per_sm`
// blocks share an SM, and the split of `units` of work into equal contiguous stripes, one
// per resident block.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

namespace vmp::machete {

// *budget: bytes of dynamic shared memory per block. Returns nullptr or a static message.
inline const char* smem_budget(int device, int blocks_per_sm, int* budget) {
  int smem_sm = 0, smem_optin = 0, reserved = 0;
  cudaError_t err = cudaDeviceGetAttribute(&smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, device);
  if (err != cudaSuccess) return "cudaDeviceGetAttribute failed";
  *budget = std::min(smem_optin, smem_sm / blocks_per_sm - reserved);
  return nullptr;
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
