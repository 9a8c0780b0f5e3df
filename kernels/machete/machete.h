// Torch-free host API of the Machete W4A16 GEMM (sm_90a). Computes
//   Y[M, N] = X[M, K] . dequant(W)[K, N],  dequant = q*s + z' per group of g rows,
// as the transposed problem Y^T = W^T X^T so the 4-bit weight is the register-sourced
// wgmma operand. fp32 accumulation; Y has the activation dtype.
//   u4b8 (no zeros): the prepacked codes hold q-8 as signed int4, z' = 0.
//   u4 + zeros     : the prepacked codes hold q, z' = -s*z pre-multiplied by the caller.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace vmp::machete {

enum ActType : int { kF16 = 0, kBF16 = 1 };

// How CTA work is cut along K (CUTLASS Stream-K tile scheduler, chosen per call).
enum Decomposition : int {
  kAuto = 0,          // CUTLASS heuristic: data-parallel, split-K or Stream-K hybrid
  kDataParallel = 1,  // one CTA per output tile
  kStreamK = 2,       // forced Stream-K
  kSplitK = 3,        // `splits` equal K slices per tile, reduced in the workspace
};

// Order of the output tiles over CUTLASS's persistent CTAs (its tile scheduler's raster
// order, on our transposed problem: CUTLASS's M = output features, N = tokens).
enum Raster : int {
  kRasterAuto = 0,      // CUTLASS's heuristic: along tokens unless token tiles outnumber feature tiles
  kRasterFeatures = 1,  // consecutive CTAs take consecutive feature tiles of one token tile (AlongM)
  kRasterTokens = 2,    // consecutive CTAs take consecutive token tiles of one feature tile (AlongN)
};

struct MMArgs {
  const void* x = nullptr;       // [M, K] act dtype, row stride ldx (elements), 16-byte aligned
  int64_t ldx = 0;
  const void* w = nullptr;       // prepacked codes (machete_layout.cuh), N*K/2 bytes
  const void* scales = nullptr;  // [K/g, N] act dtype, row-major
  const void* zeros = nullptr;   // [K/g, N] act dtype (-s*z) or nullptr
  void* y = nullptr;             // [M, N] act dtype, row-major contiguous
  int m = 0, n = 0, k = 0;
  int group_size = 0;            // rows per group; == k for channelwise
  int decomposition = kAuto;
  int splits = 1;                // kSplitK only
  int raster = kRasterAuto;      // CUTLASS tiles only
  int swizzle = 1;               // CUTLASS tiles only: CTAs grouped 1, 2, 4 or 8 along the other dimension
  int device = 0, sm_count = 0;
};

// The frozen schedule set. A tile name is "<tile N>x<tile M>": output features x tokens
// per tile. The first kNumCutlassTiles are CUTLASS wgmma tiles (cooperative
// warp-specialized kernel, 2 consumer warpgroups, Stream-K tile scheduler; 128x256 and
// 128x128c2 run as a 2x1x1 cluster along N, the pair sharing each activation tile by TMA
// multicast, so they need N % 256 == 0; the others 1x1x1) and take a runtime
// decomposition suffix: "" (kAuto), "_dp", "_sk" or "_split<S>" (S in 2..16), e.g.
// "128x16_split4", then optionally a raster suffix "+f<S>" / "+t<S>" (Raster: along
// features / tokens, swizzle S in 1, 2, 4, 8), e.g. "128x256_sk+f4". Then the two small-M kernels (machete_small_m.cu: mma.sync on the
// same prepacked weight, M <= 8 / M <= 16, their own stripe-balanced K split, no suffix),
// and the mid-M kernels (machete_mid_m.cu: our own wgmma mainloop on the same weight,
// 32 / 64 / 128 tokens per tile, any M, their own stripe-balanced K split, no suffix).
constexpr int kNumCutlassTiles = 8;
constexpr int kFirstMidM = 10;
constexpr int kNumSchedules = 15;
constexpr const char* kScheduleNames[kNumSchedules] = {
    "128x16", "128x32",  "128x64",  "128x128",  "256x128",  "256x32", "128x256", "128x128c2",
    "64x8",   "64x16",   "128x64w", "256x64w",  "128x128w", "256x128w", "256x32w"};
// Per schedule: tile N (output features), tokens per tile, CTAs per cluster along N.
constexpr int kTileN[kNumSchedules] = {128, 128, 128, 128, 256, 256, 128, 128, 64, 64, 128, 256, 128, 256, 256};
constexpr int kTileTokens[kNumSchedules] = {16, 32, 64, 128, 128, 32, 256, 128, 8, 16, 64, 64, 128, 128, 32};
constexpr int kClusterN[kNumSchedules] = {1, 1, 1, 1, 1, 1, 2, 2, 1, 1, 1, 1, 1, 1, 1};
constexpr int align_n(int tile) { return kTileN[tile] * kClusterN[tile]; }  // N must be a multiple
constexpr bool is_small_m(int tile) { return tile >= kNumCutlassTiles && tile < kFirstMidM; }
constexpr bool is_mid_m(int tile) { return tile >= kFirstMidM; }
constexpr int small_m_tokens(int tile) { return kTileTokens[tile]; }

struct Schedule {
  int tile = 0;  // index into kScheduleNames
  int decomposition = kAuto;
  int splits = 1;
  int raster = kRasterAuto;  // CUTLASS tiles only
  int swizzle = 1;
};

// The CUTLASS tiles of one type configuration (activation dtype, zero points or not).
// With workspace_bytes != nullptr only the Stream-K workspace size is computed; otherwise
// the GEMM runs on `stream` with `workspace` (zeroed by the kernel's own init on the
// stream, so a fresh torch allocation per call is graph-safe). Returns nullptr on
// success, else a static message. The tiles are compiled in units of one type
// configuration and tile group (kernels/machete/tiles/); machete_dispatch.cpp holds the table.
using MMFn = const char* (*)(int schedule, const MMArgs& args, void* workspace, size_t* workspace_bytes,
                             cudaStream_t stream);
MMFn mm_fn(ActType act, bool has_zeros);

// Small-M kernel: launch plan (host, from the shape and the device) and launch.
// partials: partial_floats floats, no initialisation needed; locks: >= plan.locks ints that
// are zero before the call (the kernel leaves them zero again).
struct SmallMPlan {
  int tokens = 0;  // 8 or 16 tokens per tile
  int stage_bytes = 0, smem_bytes = 0;
  int units = 0, stripe = 0, grid = 0;
  int locks = 0;   // lock slots used
  size_t partial_floats = 0;
};
const char* plan_small_m(int schedule, const MMArgs& a, SmallMPlan* plan);
const char* run_small_m(ActType act, const SmallMPlan& plan, const MMArgs& a, float* partials, int* locks,
                        cudaStream_t stream);

// Mid-M kernel: the same contract as the small-M pair (partials need no initialisation,
// locks are zero before and after), for any M, 32, 64 or 128 tokens per tile. X rows must
// be 16-byte aligned (it is read by TMA).
struct MidMPlan {
  int schedule = 0;  // index into kScheduleNames: its tile rows and tokens
  int stages = 0, smem_bytes = 0;
  int units = 0, stripe = 0, grid = 0;
  int locks = 0;
  size_t partial_floats = 0;
};
const char* plan_mid_m(int schedule, const MMArgs& a, MidMPlan* plan);
const char* run_mid_m(ActType act, const MidMPlan& plan, const MMArgs& a, float* partials, int* locks,
                      cudaStream_t stream);

// codes: uint8 [K, N] row-major, values 0..15. out: N*K/8 words in the prepacked
// layout. to_signed: store q-8 (u4b8 path) instead of q.
cudaError_t prepack(const uint8_t* codes, int k, int n, bool to_signed, uint32_t* out, cudaStream_t stream);

// wgmma issue-rate probe (wgmma_probe.cu): one CTA per SM, `warpgroups` (1..2) consumer
// warpgroups each running `iters` k-blocks of 4 wgmma m64n<n>k16 (n = 64/128/256), A from
// registers (rs) or shared memory, `in_flight` (1..3) commit groups outstanding; dq (0..2,
// n = 64/128, rs or ss with 2 in flight, rs with 3) rounds of the mid-M upconversion of the
// next k-block's A registers before each k-block's wgmmas, mma = false for that work alone; split
// (ss, dq > 0, 2 in flight, warpgroups = 4): the rounds run in warpgroups 2-3 instead, beside 2
// wgmma-only warpgroups, storing to shared memory (1) or folding into a register (2); iters even,
// >= 16. *ms is the timed launch. sink: >= sms floats of device memory (never written in
// practice).
cudaError_t wgmma_probe(int n, bool rs, int warpgroups, int in_flight, int dq, bool mma, int iters, int sms,
                        float* sink, cudaStream_t stream, float* ms, int split);

// Schedule chosen when the caller names none; see docs/machete_heuristic.md.
Schedule choose_schedule(int m, int n, int k, int sm_count);

}  // namespace vmp::machete
