// Torch-free launchers of the Marlin-style W4A16 kernels (definitions in *.cu).
// The binding layer (marlin_bindings.cpp) validates tensors and calls these.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "../device_limits.h"
#include "marlin_stripes.h"

namespace vmp {
namespace marlin {

enum class DType { kFloat16, kBFloat16 };

// codes: uint8 [k, n] row-major, values 0..15. out: uint32 [k_pad/16, 2*n_pad], the
// layout of marlin_layout.cuh; rows >= k and columns >= n are filled with code 0.
// k_pad % kTileK == 0, n_pad % kTileN == 0, k <= k_pad, n <= n_pad.
cudaError_t repack(const uint8_t* codes, int k, int n, int k_pad, int n_pad, uint32_t* out,
                   cudaStream_t stream);

// src: [g, n] 16-bit values (scales or zero points); dst: [g_pad, n_pad] with the
// column permutation of marlin_layout.cuh; padding is zero. n_pad % kTileN == 0.
cudaError_t permute_groups(const uint16_t* src, int g, int n, int g_pad, int n_pad, uint16_t* dst,
                           cudaStream_t stream);

// How one GEMM call is split; computed on the host from the shape and the device.
struct GemmPlan {
  DType dtype;
  int m_blocks;         // 16-row blocks per M chunk (1..4)
  bool swap;            // M <= 8 on one 16-row block: transposed MMAs (8 tokens as the B operand)
  StripeMap stripes;    // M chunks of 16*m_blocks rows, the slice order, each block's units;
                        // stripes.grid() blocks are launched, all co-resident
  int stages;           // cp.async pipeline depth (one the kernel is compiled for)
  bool drain;           // the reduction tile overlays the stages (marlin_gemm.cu, smem_bytes)
  int smem_bytes;
  size_t reduce_floats;  // fp32 scratch for the cross-block reduction (no initialisation needed)
};

// Caps on the plan's free choices (0: the default). Set from VMP_MARLIN_PLAN by the
// binding, to benchmark other plans; any value gives the same result, only its speed.
struct PlanHints {
  int blocks_per_sm = 0;  // resident blocks per SM: 1, or 2 (16-row M tiles only; default: 2 above 80 Mi weights)
  int max_stages = 0;     // cp.async pipeline depth cap (3..8); the deepest compiled depth within it is used
  int max_m_blocks = 0;   // 16-row blocks per M chunk cap (1..4)
  int swap_small_m = -1;  // 0: no transposed MMAs at M <= 8 (default: on)
  int chunk_major = -1;   // stripe order, StripeMap::plan: 0 n-major, 1 chunk-major (default: its rule)
  int smem_per_sm = 0;    // bytes of shared memory per SM to plan with, if below the device's: plans of
                          // smaller GPUs on this one (102400: sm_86/89, 167936: sm_80)
  int drain = -1;         // 1: tiles whose reduction tile overlays the stages where both do not fit
                          // (marlin_gemm.cu, kDrain); 0: never (default: kDrainByDefault)
};

// Drained tiles where the undrained one does not fit (sm_80/86/89; never on Hopper's 228 KB). On the
// H200 with the sm_86/89 plan they take 0.64-0.74x the time of its 16-row chunks from 32 tokens up, and
// the A100 plan's drained 64-row tile is within 0.97-1.03x of Hopper's own (docs/profile_h200.md).
constexpr bool kDrainByDefault = true;

// The tile the planner picks for M = m on a device with `lim`: host code only (no CUDA call),
// so that tests without a GPU can check it for any GPU. False when no tile fits.
struct TileChoice {
  int m_blocks, chunks;  // M chunks of 16 m_blocks rows
  int stages, blocks_per_sm;
  bool drain;
  int smem_bytes;
};
bool choose_tile(int m, int n_pad, int k_pad, DeviceLimits lim, const PlanHints& hints, TileChoice* out);

// Fails (cudaErrorInvalidValue) when the device lacks the shared memory for any config.
// k_pad % kTileK == 0 and n_pad % kTileN == 0 (marlin_layout.cuh).
cudaError_t plan_gemm(int m, int n_pad, int k_pad, DType dtype, int device, const PlanHints& hints,
                      GemmPlan* plan);

struct GemmArgs {
  DType dtype;
  const void* x;       // [m, k_pad] activations, row-major, 16-byte aligned
  const uint32_t* w;   // packed weight [k_pad/16, 2*n_pad]
  const void* scales;  // [groups, n_pad], permuted group rows
  const void* zeros;   // same shape as scales (zero points as values), or nullptr: zero point 8
  void* out;           // [m, n] row-major
  float* reduce;       // plan.reduce_floats floats, no initialisation needed
  int* locks;          // >= plan.stripes.grid() ints (slice counters), zero before the call and after it
  int m, n, n_pad, k_pad;
  int group_size;      // 32, 64 or 128 dividing k_pad, or -1 for one group (channelwise)
};

cudaError_t gemm(const GemmArgs& args, const GemmPlan& plan, cudaStream_t stream);

}  // namespace marlin
}  // namespace vmp
