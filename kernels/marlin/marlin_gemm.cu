// Host side of the Marlin-style W4A16 GEMM: the launch plan and the launch. The kernel,
// its tiling and its reduction are described in marlin_kernel.cuh.
#include <algorithm>
#include <climits>

#include "marlin_kernel.cuh"

namespace vmp {
namespace marlin {
namespace {

// nullptr when (mb, stages) is not compiled (!stages_compiled) or swap is asked for mb > 1.
const void* kernel_for(DType dtype, int mb, int stages, bool zeros, bool swap) {
  if (swap && mb != 1) return nullptr;
  return dtype == DType::kFloat16 ? kernel_for_f16(mb, stages, zeros, swap)
                                  : kernel_for_bf16(mb, stages, zeros, swap);
}

int ceil_div(long long a, long long b) { return static_cast<int>((a + b - 1) / b); }

}  // namespace

cudaError_t plan_gemm(int m, int n_pad, int k_pad, DType dtype, int device, const PlanHints& hints,
                      GemmPlan* plan) {
  if (m <= 0 || n_pad <= 0 || k_pad <= 0 || n_pad % kTileN || k_pad % kTileK) return cudaErrorInvalidValue;
  int sms = 0, smem_optin = 0, smem_sm = 0, smem_reserved = 0;
  cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&smem_reserved, cudaDevAttrReservedSharedMemoryPerBlock, device);
  if (err != cudaSuccess) return err;

  // Fewest chunks of at most 64 rows, balanced; fewer rows per chunk when shared memory
  // cannot hold 3 pipeline stages of the larger tile (sm_86/sm_89 have ~100 KB).
  const int max_mb = hints.max_m_blocks > 0 ? std::min(hints.max_m_blocks, kMaxMBlocks) : kMaxMBlocks;
  const int max_stages = hints.max_stages >= 2 ? std::min(hints.max_stages, kMaxStages) : kMaxStages;
  auto blocks_for = [&](int mb) {
    return hints.blocks_per_sm > 0 ? std::min(hints.blocks_per_sm, blocks_per_sm(mb)) : blocks_per_sm(mb);
  };
  int chunks = ceil_div(m, max_mb * 16);
  int mb = ceil_div(m, 16LL * chunks);
  int stages = 0, blocks = 1;
  // Deepest compiled depth that fits and respects the cap; 0 if none.
  auto stages_for = [&](int b) {
    const int budget = std::min(smem_optin, smem_sm / b - smem_reserved);
    int s = std::min(max_stages, (budget - red_bytes(mb)) / stage_bytes(mb));
    while (s > 0 && !stages_compiled(mb, s)) --s;
    return s;
  };
  for (;;) {
    blocks = blocks_for(mb);
    stages = stages_for(blocks);
    // Too little shared memory for two blocks per SM (sm_86/sm_89): one block, deeper.
    if (stages < 4 && blocks > 1) stages = stages_for(blocks = 1);
    if (stages >= 3 || mb == 1) break;
    --mb;
    chunks = ceil_div(m, 16LL * mb);
  }
  if (stages < 3) return cudaErrorInvalidValue;
  const int smem = stages * stage_bytes(mb) + red_bytes(mb);
  // Every block must be resident at once: blocks wait on each other's locks.
  const bool swap = mb == 1 && m <= 8 && hints.swap_small_m != 0;
  const void* fn = kernel_for(dtype, mb, stages, true, swap);
  err = cudaFuncSetAttribute(kernel_for(dtype, mb, stages, false, swap), cudaFuncAttributeMaxDynamicSharedMemorySize,
                             smem);
  if (err == cudaSuccess) err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  int resident = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, fn, kThreads, smem);
  if (err != cudaSuccess) return err;
  if (resident < 1) return cudaErrorInvalidConfiguration;
  resident = std::min(resident, blocks);
  const long long total = static_cast<long long>(chunks) * (n_pad / kTileN) * (k_pad / kTileK);
  if (total > INT_MAX) return cudaErrorInvalidValue;
  const int units = ceil_div(total, static_cast<long long>(sms) * resident);
  plan->dtype = dtype;
  plan->m_blocks = mb;
  plan->swap = swap;
  plan->chunks = chunks;
  plan->units_per_block = units;
  plan->grid = ceil_div(total, units);
  plan->stages = stages;
  plan->smem_bytes = smem;
  plan->reduce_floats = static_cast<size_t>(plan->grid) * 2 * mb * 16 * kTileN;  // 2 slots per block
  return cudaSuccess;
}

cudaError_t gemm(const GemmArgs& a, const GemmPlan& plan, cudaStream_t stream) {
  if (a.n_pad % kTileN || a.k_pad % kTileK || a.n > a.n_pad || a.n <= 0 || a.m <= 0)
    return cudaErrorInvalidValue;
  int shift = kOneGroupShift;
  if (a.group_size != -1) {
    if (a.group_size < kMinGroup || a.group_size > kTileK || (a.group_size & (a.group_size - 1)) ||
        a.k_pad % a.group_size)
      return cudaErrorInvalidValue;
    shift = __builtin_ctz(static_cast<unsigned>(a.group_size));
  }
  if (plan.swap && (plan.m_blocks != 1 || a.m > 8)) return cudaErrorInvalidValue;
  const void* fn = kernel_for(a.dtype, plan.m_blocks, plan.stages, a.zeros != nullptr, plan.swap);
  if (a.dtype != plan.dtype || fn == nullptr) return cudaErrorInvalidValue;
  cudaError_t err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.smem_bytes);
  if (err != cudaSuccess) return err;

  KernelParams p;
  p.x = a.x;
  p.w = reinterpret_cast<const uint4*>(a.w);
  p.scales = a.scales;
  p.zeros = a.zeros;
  p.out = a.out;
  p.reduce = a.reduce;
  p.locks = a.locks;
  p.m = a.m;
  p.n = a.n;
  p.n_pad = a.n_pad;
  p.k_pad = a.k_pad;
  p.group_shift = shift;
  p.chunks = plan.chunks;
  p.units_per_block = plan.units_per_block;
  void* kargs[] = {&p};
  return cudaLaunchKernel(fn, dim3(plan.grid), dim3(kThreads), kargs, static_cast<size_t>(plan.smem_bytes),
                          stream);
}

}  // namespace marlin
}  // namespace vmp