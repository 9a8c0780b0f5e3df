// Marlin-style W4A16 GEMM: Y[M, N] = X[M, K] . dequant(W)[K, N], fp32 accumulation.
//
// Block tile kTileK x kTileN (128 x 256), 256 threads = 4 warps along N (64 columns
// each) x 2 warps along K (64 rows, 4 k16 steps of every k-tile each, fragments
// double-buffered in registers); the 2 partial tiles are summed in shared memory at
// the end of each slice. M is cut into chunks of 16*MB
// rows (MB = 1..4); M <= 8 runs the transposed MMAs of kSwap (8 tokens per MMA). The work
// units are (n-tile, M chunk, k-tile) triples, k-tile fastest; a "slice" is all k-tiles of
// one (n-tile, chunk) pair. Every block takes one contiguous stripe of units (the order and
// the stripes: marlin_stripes.h), so all SMs stay busy whatever the tile count. A slice
// that spans several blocks is reduced in fp32
// through global scratch: every contributor stores its partial tile and increments
// the slice's counter; the last to arrive sums the partials in block order (so the
// result is deterministic), writes the output and resets the counter to zero.
//
// Only sm_80 instructions are used (cp.async, ldmatrix, mma.sync m16n8k16, lop3), plus
// the PDL controls of ptx.cuh where compiled for sm_90 (launched through launch.h).
// No L2 cache-policy hint on cp.async: with nvcc 13.0 for sm_90, a createpolicy
// result folded into the copy's descriptor raised "illegal instruction" on an H200.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>

#include "marlin.h"
#include "marlin_layout.cuh"
#include "marlin_stripes.h"
#include "../device_limits.h"
#include "../launch.h"
#include "../ptx.cuh"

namespace vmp {
namespace marlin {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsN = kTileN / kSubN;           // 4 warps side by side along N
constexpr int kWarpsK = kThreads / 32 / kWarpsN;  // 2 warps along K share one output tile
constexpr int kWarpRows = kTileK / kWarpsK;       // 64 consecutive k rows per warp and tile
constexpr int kWarpSteps = kWarpRows / kSubK;     // 4 k16 steps per warp and tile
constexpr int kMinGroup = 32;                     // smallest group size (a k16 step never splits one)
constexpr int kMaxGroupRows = kTileK / kMinGroup;  // group rows one k-tile can touch
constexpr int kMaxStages = 8;  // cap of VMP_MARLIN_PLAN stages=
constexpr int kMaxMBlocks = 4;
constexpr int kOneGroupShift = 30;  // group_shift for channelwise: (k >> 30) == 0 for any k

constexpr int kARowBytes = kTileK * 2;
constexpr int kBBytes = kTileK * kTileN / 2;
constexpr int kSubBytes = kSubK * kSubN / 2;
constexpr int kGroupRowBytes = kTileN * 2;
constexpr int kGroupRowChunks = kGroupRowBytes / 16;
constexpr int kGroupBytes = kMaxGroupRows * kGroupRowBytes;
constexpr int kRedStride = kTileN + 8;  // floats; the pad spreads rows over the banks
constexpr int kRedBatch = 4;            // output items per thread whose partials load together

// Blocks per SM the launch bounds ask for: 2 for the smallest M tile (memory-bound,
// few registers), so 16 warps hide latency; 1 otherwise.
__host__ __device__ constexpr int blocks_per_sm(int mb) { return mb == 1 ? 2 : 1; }
__host__ __device__ constexpr int a_bytes(int mb) { return mb * 16 * kARowBytes; }
__host__ __device__ constexpr int stage_bytes(int mb) { return a_bytes(mb) + kBBytes + 2 * kGroupBytes; }
__host__ __device__ constexpr int red_bytes(int mb) { return mb * 16 * kRedStride * 4; }
// A block's dynamic shared memory: kStages stages, the reduction tile, then the 16-byte
// last-arrival flag of the cross-block reduction. The kernel has no static __shared__
// variable, so this region starts 128-byte aligned, as the activation swizzle and the
// copies assume: with a 16-byte static flag in front of it (before 2026-12-03), every
// cp.async cost 2x the L2 sectors and 3x the shared wavefronts.
// kDrain: the reduction tile overlays the stages instead of following them. The pipeline
// then loads no unit past the current slice, drains at the slice end and restarts after
// it: the 32..64-row tiles fit in 164 KB (sm_80/87) or 100 KB (sm_86/89) so, where the
// stages and the tile side by side do not.
constexpr int kFlagBytes = 16;
__host__ __device__ constexpr int red_offset(int mb, int stages, bool drain) {
  return drain ? 0 : stages * stage_bytes(mb);
}
__host__ __device__ constexpr int flag_offset(int mb, int stages, bool drain) {
  return drain ? (stages * stage_bytes(mb) > red_bytes(mb) ? stages * stage_bytes(mb) : red_bytes(mb))
               : stages * stage_bytes(mb) + red_bytes(mb);
}
__host__ __device__ constexpr int smem_bytes(int mb, int stages, bool drain) {
  return flag_offset(mb, stages, drain) + kFlagBytes;
}

// Pipeline depths compiled per M tile (the stage count is a template parameter, so the
// cp.async wait count is an immediate): the planner's choices on 100 KB (sm_86/89),
// 164 KB (sm_80/87) and 228 KB (sm_90) of shared memory per SM, without kDrain and with
// it. choose_tile takes the deepest compiled depth that fits; gemm() refuses any other.
__host__ __device__ constexpr bool stages_compiled(int mb, int s, bool drain) {
  if (drain) return (mb == 2 && s == 3) || (mb == 3 && s == 3) || (mb == 4 && s == 4);
  return mb == 1 ? (s == 3 || s == 4 || s == 6) : mb == 2 ? (s == 4 || s == 6) : mb == 3 ? (s == 3 || s == 5) : s == 4;
}

static_assert(kBBytes / 16 % kThreads == 0, "weight tile must split evenly over the threads");
static_assert(kTileK / 8 == 16, "activation rows are 16 chunks of 16 bytes (swizzle assumes it)");
static_assert(kMaxGroupRows * kGroupRowChunks <= kThreads / 2, "group rows: one chunk per thread");

// ---- PTX wrappers (shared ones in ../ptx.cuh) ------------------------------------
using ptx::cp_async16_if;
using ptx::cp_async_commit;
using ptx::cp_async_wait;
using ptx::ldsm_x4;
using ptx::smem_u32;

// (a & kMask) | kMagic in one instruction.
template <uint32_t kMask, uint32_t kMagic>
__device__ __forceinline__ uint32_t and_or(uint32_t a) {
  return ptx::lop3<0xEA, kMask, kMagic>(a);
}

template <typename T2>
__device__ __forceinline__ T2 bits_to(uint32_t u) {
  return *reinterpret_cast<T2*>(&u);
}
template <typename T2>
__device__ __forceinline__ uint32_t to_bits(T2 v) {
  return *reinterpret_cast<uint32_t*>(&v);
}

// ---- per-type pieces: dequantisation, mma, conversions ------------------------------
// Zero-point registers of one thread for its 8 columns (n8-blocks j = 0..7): the offsets
// that turn the magic-biased code into (q - z). The scales stay raw: word w of a group row
// chunk holds block 2w's scale in its low half and 2w+1's in its high half.
template <typename T2>
struct GroupRegs {
  T2 lo[8];  // subtracted from (magic + q)
  T2 hi[8];  // fp16 only: added to (magic + 16 q) / 16
};

template <typename T>
struct Ops;

template <>
struct Ops<half> {
  using T2 = half2;
  static constexpr uint32_t kMagic = 0x64006400;  // 1024 in both halves: 1024 + q is exact
  static constexpr uint32_t kLoU4B8 = 0x64086408;  // lo for zero point 8: 1032
  static constexpr uint32_t kHiU4B8 = 0xD480D480;  // hi for zero point 8: -72
  // Both halves = the low / the high half of u (an operand swizzle in SASS, no PRMT).
  __device__ static T2 lo2(uint32_t u) { return __low2half2(bits_to<T2>(u)); }
  __device__ static T2 hi2(uint32_t u) { return __high2half2(bits_to<T2>(u)); }
  __device__ static void set_zero_point(GroupRegs<T2>& g, int j, half z) {
    const half2 z2 = __half2half2(z);
    g.lo[j] = __hadd2(z2, __float2half2_rn(1024.f));
    g.hi[j] = __hneg2(__hadd2(z2, __float2half2_rn(64.f)));
  }
  // Word q -> B registers b[0..1] of n8-block 2w and b[2..3] of block 2w+1.
  __device__ static void dequant(uint32_t q, uint32_t sw, const GroupRegs<T2>& g, int w, uint32_t (&b)[4]) {
    const half2 inv16 = __float2half2_rn(0.0625f);
    const uint32_t q8 = q >> 8;
    const half2 p0 = bits_to<half2>(and_or<0x000F000F, kMagic>(q));   // 1024 + q, rows 2t / 2t+1
    const half2 p1 = bits_to<half2>(and_or<0x00F000F0, kMagic>(q));   // 1024 + 16 q, rows +8
    const half2 p2 = bits_to<half2>(and_or<0x000F000F, kMagic>(q8));
    const half2 p3 = bits_to<half2>(and_or<0x00F000F0, kMagic>(q8));
    const int j0 = 2 * w, j1 = 2 * w + 1;
    const half2 s0 = lo2(sw), s1 = hi2(sw);
    b[0] = to_bits(__hmul2(__hsub2(p0, g.lo[j0]), s0));
    b[1] = to_bits(__hmul2(__hfma2(p1, inv16, g.hi[j0]), s0));
    b[2] = to_bits(__hmul2(__hsub2(p2, g.lo[j1]), s1));
    b[3] = to_bits(__hmul2(__hfma2(p3, inv16, g.hi[j1]), s1));
  }
  __device__ static void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    ptx::mma_f16(c, a, b0, b1);
  }
  __device__ static uint32_t pack2(float a, float b) { return to_bits(__floats2half2_rn(a, b)); }
  __device__ static half from_float(float v) { return __float2half_rn(v); }
};

template <>
struct Ops<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr uint32_t kMagic = 0x43004300;  // 128 in both halves: 128 + q is exact
  static constexpr uint32_t kLoU4B8 = 0x43084308;  // lo for zero point 8: 136
  static constexpr uint32_t kHiU4B8 = 0;           // unused
  __device__ static T2 lo2(uint32_t u) { return __low2bfloat162(bits_to<T2>(u)); }
  __device__ static T2 hi2(uint32_t u) { return __high2bfloat162(bits_to<T2>(u)); }
  __device__ static void set_zero_point(GroupRegs<T2>& g, int j, __nv_bfloat16 z) {
    g.lo[j] = __hadd2(__bfloat162bfloat162(z), __float2bfloat162_rn(128.f));
  }
  __device__ static void dequant(uint32_t q, uint32_t sw, const GroupRegs<T2>& g, int w, uint32_t (&b)[4]) {
    const T2 p0 = bits_to<T2>(and_or<0x000F000F, kMagic>(q));
    const T2 p1 = bits_to<T2>(and_or<0x000F000F, kMagic>(q >> 4));
    const T2 p2 = bits_to<T2>(and_or<0x000F000F, kMagic>(q >> 8));
    const T2 p3 = bits_to<T2>(and_or<0x000F000F, kMagic>(q >> 12));
    const int j0 = 2 * w, j1 = 2 * w + 1;
    const T2 s0 = lo2(sw), s1 = hi2(sw);
    b[0] = to_bits(__hmul2(__hsub2(p0, g.lo[j0]), s0));
    b[1] = to_bits(__hmul2(__hsub2(p1, g.lo[j0]), s0));
    b[2] = to_bits(__hmul2(__hsub2(p2, g.lo[j1]), s1));
    b[3] = to_bits(__hmul2(__hsub2(p3, g.lo[j1]), s1));
  }
  __device__ static void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    ptx::mma_bf16(c, a, b0, b1);
  }
  __device__ static uint32_t pack2(float a, float b) { return to_bits(__floats2bfloat162_rn(a, b)); }
  __device__ static __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

struct KernelParams {
  const void* x;
  const uint4* w;
  const void* scales;
  const void* zeros;
  void* out;
  float* reduce;
  int* locks;
  int m, n, n_pad, k_pad;
  int group_shift;
  StripeMap map;
};

// kZeros = false: symmetric u4b8 only (zero point 8 folded into immediates, fewer
// registers); kZeros = true handles both (zero points when p.zeros != nullptr).
// kSwap (MB == 1, M <= 8): the transposed product Y^T = W^T X^T, the weight as the MMA's
// A operand (16 output features) and 8 tokens as B, so one m16n8k16 covers 16 columns
// where the plain product spends two MMAs on 16 token rows of which at most 8 are real.
// The dequantized registers are the same; only their roles and the output mapping change.
// kStages: cp.async pipeline depth (stages_compiled(MB, kStages, kDrain)); kDrain: the
// reduction tile overlays the stages (smem_bytes above).
template <typename T, int MB, bool kZeros, bool kSwap, int kStages, bool kDrain>
__global__ void __launch_bounds__(kThreads, blocks_per_sm(MB)) gemm_kernel(const KernelParams p) {
  static_assert(kStages >= 3 && kStages <= kMaxStages, "the refill of a stage needs 2 more in flight");
  static_assert(!kDrain || blocks_per_sm(MB) == 1, "a drained pipeline is for one block per SM");
  using O = Ops<T>;
  using T2 = typename O::T2;
  extern __shared__ __align__(128) unsigned char smem[];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wn = warp % kWarpsN, wk = warp / kWarpsN;
  const int k_tiles = p.map.k_tiles;
  const int u_begin = p.map.begin(blockIdx.x), u_end = p.map.end(blockIdx.x);
  if (u_begin >= u_end) return;

  constexpr int stage_sz = stage_bytes(MB);
  const uint32_t smem0 = smem_u32(smem);
  float* red = reinterpret_cast<float*>(smem + red_offset(MB, kStages, kDrain));
  int& s_last = *reinterpret_cast<int*>(smem + flag_offset(MB, kStages, kDrain));
  const T* x = static_cast<const T*>(p.x);
  const T* scales = static_cast<const T*>(p.scales);
  const T* zeros = static_cast<const T*>(p.zeros);
  const bool has_zeros = kZeros && zeros != nullptr;
  const bool two_groups_per_warp = p.group_shift < 6;  // g = 32: a warp's 64 rows span 2 groups
  const int group_rows = max(1, kTileK >> p.group_shift);

  // Position of a unit as (k-tile, chunk, n-tile).
  struct Pos {
    int kt, c, nt;
  };
  auto pos_of = [&](int u) {
    const int slice = u / k_tiles;
    return Pos{u - slice * k_tiles, p.map.chunk_of(slice), p.map.n_tile_of(slice)};
  };
  auto next_slice = [&](Pos q) {
    q.kt = 0;
    p.map.next(q.c, q.nt);
    return q;
  };

  // ---- global -> shared copies ----
  // The loader walks units in order. Its global pointers advance by a constant per
  // k-tile and are recomputed (seek) only when a slice starts, so the hot loop does no
  // 64-bit index arithmetic.
  // Activations: thread copies chunk a_ch of rows a_row + 16 i (i < MB).
  const int a_ch = tid & 15, a_row = tid >> 4;
  const uint32_t a_dst = a_row * kARowBytes + ((a_ch ^ (a_row & 7)) << 4);
  // Weights: the tile's 8 bands of 16 k rows are 2 KB runs each (4 sub-tiles,
  // marlin_layout.cuh), copied 1:1 to shared memory in band order. Warp w copies band w,
  // lane l its chunks l + 32 i (i < 4): copy i is at +512 i bytes on both sides (an
  // immediate), and a warp's copy is 512 contiguous bytes.
  static_assert(kBBytes == 32 * kSubBytes, "weight tile = 32 sub-tiles");
  constexpr int kBandChunks = kTileN / kSubN * kSubBytes / 16;
  constexpr int kWCopies = kBBytes / 16 / kThreads;
  static_assert(kTileK / kSubK == kThreads / 32 && kBandChunks == 32 * kWCopies, "one band per warp");
  const uint32_t w_dst = a_bytes(MB) + warp * (kBandChunks * 16) + lane * 16;
  // In uint4 units a band is n_pad / 2 long: the next k-tile starts 8 bands = 4 n_pad further.
  // Group rows: scales by threads [0, 128), zero points by [128, 256).
  const int gi = tid & (kThreads / 2 - 1);
  const bool g_is_zero = tid >= kThreads / 2;
  const int g_r = gi / kGroupRowChunks, g_ch = gi % kGroupRowChunks;
  const bool g_active = g_r < group_rows && (!g_is_zero || has_zeros);
  // = ... + (g_is_zero ? kGroupBytes : 0) + g_r * kGroupRowBytes + g_ch * 16: the scale and
  // zero-point rows are 128 chunks each, in thread order.
  static_assert(kGroupBytes == kThreads / 2 * 16 && kGroupRowBytes == kGroupRowChunks * 16,
                "group chunks in thread order");
  const uint32_t g_dst = a_bytes(MB) + kBBytes + tid * 16;

  struct Loader {
    Pos q;
    const T* x;
    const uint4* w;
    const T* g;
    uint32_t copies;  // bit c: copy c is issued (not for activation rows >= m, nor by idle group threads)
  } ld;
  auto seek = [&](const Pos& q) {
    ld.q = q;
    const int row0 = q.c * MB * 16 + a_row;
    const int a_rows = row0 < p.m ? min(MB, (p.m - row0 + 15) / 16) : 0;
    ld.copies = ((1u << a_rows) - 1) | (((1u << kWCopies) - 1) << MB) | (g_active ? 1u << (MB + kWCopies) : 0u);
    ld.x = x + static_cast<size_t>(row0) * p.k_pad + q.kt * kTileK + a_ch * 8;
    ld.w = p.w + static_cast<size_t>(q.kt * (kTileK / kSubK) + warp) * (p.n_pad / 2) + q.nt * kBandChunks + lane;
    ld.g = g_active ? (g_is_zero ? zeros : scales) + static_cast<size_t>(g_r) * p.n_pad + g_ch * 8 +
                          static_cast<size_t>((q.kt * kTileK) >> p.group_shift) * p.n_pad + q.nt * kTileN
                    : nullptr;
  };
  // Group rows per k-tile: kTileK / g (g <= kTileK, checked in gemm()), 0 for channelwise.
  const int g_step = g_active && p.group_shift < kOneGroupShift ? (kTileK >> p.group_shift) * p.n_pad : 0;
  // A tile is kCopies 16-byte copies per thread: MB activation rows, kWCopies weight
  // chunks, one group chunk. copy(stage_base, c, mask) issues copy c of the loader's tile
  // if bit c of mask is set (predicated, no branch).
  constexpr int kCopies = MB + kWCopies + 1;
  auto copy = [&](uint32_t stage_base, int c, uint32_t mask) {
    const uint32_t on = mask & (1u << c);
    if (c < MB) {
      // Rows >= m are not loaded: they only feed accumulator rows >= m, never written out
      // (with kDrain they hold the last slice's reduction floats, as harmless).
      cp_async16_if(stage_base + a_dst + c * 16 * kARowBytes,
                    ld.x + static_cast<size_t>(static_cast<unsigned>(p.k_pad)) * (16 * c), on);
    } else if (c < MB + kWCopies) {
      const int i = c - MB;
      cp_async16_if(stage_base + w_dst + i * 32 * 16, ld.w + i * 32, on);
    } else {
      cp_async16_if(stage_base + g_dst, ld.g, on);
    }
  };
  auto loader_next = [&]() {
    if (++ld.q.kt < k_tiles) {
      ld.x += kTileK;
      ld.w += 4 * p.n_pad;
      ld.g += g_step;
    } else {
      seek(next_slice(ld.q));
    }
  };

  // ---- shared -> register fragments ----
  // Step s of a warp covers the 16-row band kk = wk * kWarpSteps + s of the tile. The
  // per-step offsets depend only on the thread, so they are computed once; within a
  // stage they are register + immediate.
  const uint32_t b_rd = a_bytes(MB) + wn * kSubBytes + lane * 16 + wk * kWarpSteps * kWarpsN * kSubBytes;
  uint32_t a_rd[kWarpSteps];
#pragma unroll
  for (int s = 0; s < kWarpSteps; ++s)  // the swizzle only touches the low 3 chunk bits
    a_rd[s] = (lane & 15) * kARowBytes + ((8 * wk + ((2 * s + (lane >> 4)) ^ (lane & 7))) << 4);
  const uint32_t g_rd = a_bytes(MB) + kBBytes + wn * (kSubN * 2) + (lane >> 2) * 16;
  const uint32_t g_rd0 = g_rd + ((wk * kWarpRows) >> p.group_shift) * kGroupRowBytes;
  const uint32_t g_rd2 = g_rd + ((wk * kWarpRows + 2 * kSubK) >> p.group_shift) * kGroupRowBytes;
  uint4 bq[2];
  uint32_t af[2][MB][4];
  auto load_frags = [&](uint32_t st, int s, int buf) {
    asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(bq[buf].x), "=r"(bq[buf].y), "=r"(bq[buf].z), "=r"(bq[buf].w)
                 : "r"(st + b_rd + s * kWarpsN * kSubBytes));
#pragma unroll
    for (int mb = 0; mb < MB; ++mb) ldsm_x4(af[buf][mb], st + a_rd[s] + mb * 16 * kARowBytes);
  };
  // Raw group values, loaded one step ahead: sc[0] the scales of steps 0-1, sc[1] those of
  // steps 2-3 (loaded in step 1 from the row of step 2, which is step 0's unless g = 32:
  // no branch); z_raw the zero points of step 0 (and step 2 for g = 32), turned into
  // GroupRegs when the step starts.
  uint4 sc[2] = {make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0)}, z_raw = make_uint4(0, 0, 0, 0);
  auto load_group = [&](uint32_t off, int buf, bool with_zeros) {
    asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(sc[buf].x), "=r"(sc[buf].y), "=r"(sc[buf].z), "=r"(sc[buf].w)
                 : "r"(off));
    if (has_zeros && with_zeros)
      asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                   : "=r"(z_raw.x), "=r"(z_raw.y), "=r"(z_raw.z), "=r"(z_raw.w)
                   : "r"(off + kGroupBytes));
  };

  GroupRegs<T2> gr;
#pragma unroll
  for (int j = 0; j < 8; ++j) {  // u4b8 unless zero points are given
    gr.lo[j] = bits_to<T2>(O::kLoU4B8);
    gr.hi[j] = bits_to<T2>(O::kHiU4B8);
  }
  auto set_zero_points = [&]() {
    if (has_zeros) {
      const T* z8 = reinterpret_cast<const T*>(&z_raw);
#pragma unroll
      for (int j = 0; j < 8; ++j) O::set_zero_point(gr, j, z8[j]);
    }
  };

  float acc[MB][8][4];
  auto zero_acc = [&]() {
#pragma unroll
    for (int mb = 0; mb < MB; ++mb)
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mb][j][e] = 0.f;
  };
  zero_acc();

  // Pipeline of kStages stages: while a warp works on stage r, the next kStages-1 units
  // are in flight. The one barrier per unit sits before the unit's last k16 step: by then
  // every read of stage r has been issued, so stage r is refilled from there on, and the
  // fragments of the next unit's first step are fetched while the last step's MMAs run.
  // A refill is one commit group, spread over phases so that the copies do not reach the
  // LSU all at once from every warp right after the barrier (the profile at M=64): phase
  // 0 right after the barrier, phase f >= 1 in step f-1 of the next unit, copy c in phase
  // c % kFillPhases; the group is committed at the end of the last phase, before the next
  // barrier's wait. M tiles of one 16-row block (memory-bound, the earliest issue matters
  // most) refill in phase 0 only. A refill past the block's last unit issues no copies
  // (predicated off) but still commits its (empty) group, so the wait count is always
  // kStages - 2. The prologue loads stages 0..kStages-2 and leaves stage kStages-1 open
  // after its phase 0, so the first unit's steps run the same phases as every other.
  constexpr int kFillPhases = MB > 1 ? kWarpSteps : 1;
  uint32_t fill_st = 0;    // stage being refilled
  uint32_t fill_mask = 0;  // its copies (ld.copies, or 0 when it loads no unit)
  bool fill_unit = false;  // it loads a unit: the loader moves on when it is committed
  auto fill_phase = [&](int f) {
#pragma unroll
    for (int c = f; c < kCopies; c += kFillPhases) copy(fill_st, c, fill_mask);
    if (f == kFillPhases - 1) {
      cp_async_commit();
      if (fill_unit) loader_next();
    }
  };
  // Refill `stage` with the loader's unit if it is one of the block's (filling), else
  // issue nothing; copies in `issued` went out earlier.
  auto open_fill = [&](uint32_t stage, bool filling, uint32_t issued = 0u) {
    fill_st = stage;
    fill_unit = filling;
    fill_mask = filling ? ld.copies & ~issued : 0u;
    fill_phase(0);
  };
  // start(u0, u_stop, pdl): the prologue. Loads units u0.. of [u0, u_stop) into stages
  // 0..kStages-1 (the last left open after phase 0, so that the first unit's steps run the
  // same phases as every other) and the first unit's fragments. With pdl (the kernel's
  // start; launched with PDL, launch.h) the weight and group copies of the first
  // kStages - 1 stages go out before pdl_wait(), overlapping the previous kernel's tail;
  // activations, the output, the reduction slots and the locks are touched only after it.
  // Those copies join the first commit group. kDrain restarts the pipeline so after every
  // slice end, when no copy is in flight.
  constexpr uint32_t kConstCopies = ((1u << kCopies) - 1) & ~((1u << MB) - 1);
  auto start = [&](int u0, int u_stop, bool pdl) {
    seek(pos_of(u0));
#pragma unroll
    for (int s = 0; s + 1 < kStages; ++s) {
      if (s < u_stop - u0) {
#pragma unroll
        for (int c = MB; c < kCopies; ++c) copy(smem0 + s * stage_sz, c, ld.copies);
        loader_next();
      }
    }
    if (pdl) {
      ptx::pdl_wait();
      ptx::pdl_launch_dependents();
    }
    seek(pos_of(u0));
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      open_fill(smem0 + s * stage_sz, s < u_stop - u0, s + 1 < kStages ? kConstCopies : 0u);
      if (s + 1 < kStages) {
#pragma unroll
        for (int f = 1; f < kFillPhases; ++f) fill_phase(f);
      }
    }
    // Unit u0's group is complete: kStages - 1 groups are committed when a fill is spread
    // (stage kStages-1 still open), kStages otherwise.
    cp_async_wait<(kFillPhases > 1 ? kStages - 2 : kStages - 1)>();
    __syncthreads();
    load_frags(smem0, 0, 0);
    load_group(smem0 + g_rd0, 0, true);
  };
  // The end of the units the pipeline may load from unit u at position q on: the block's
  // last, or with kDrain the last of u's slice.
  auto load_stop = [&](int u, const Pos& q) { return kDrain ? min(u_end, u + k_tiles - q.kt) : u_end; };

  const uint32_t smem_end = smem0 + kStages * stage_sz;
  Pos cp = pos_of(u_begin);
  uint32_t st = smem0;  // stage being read
  start(u_begin, load_stop(u_begin, cp), true);
  for (int u = u_begin; u < u_end;) {
    // The units of this block in the current slice run back to back; the slice end
    // (block reduction, cross-block reduction, output) follows them.
    const int slice_units = min(u_end - u, k_tiles - cp.kt);
    const int u_stop = load_stop(u, cp);
    for (int i = 0; i < slice_units; ++i, ++u) {
#pragma unroll
      for (int s = 0; s < kWarpSteps; ++s) {
        // A k16 step never straddles groups (kMinGroup >= 16); new groups start at step 0
        // and, for g = 32, at step 2.
        if (s == 0 || (s == 2 && two_groups_per_warp)) set_zero_points();
        if (s == 1) load_group(st + g_rd2, 1, two_groups_per_warp);
        if (s + 1 < kWarpSteps) {
          load_frags(st, s + 1, (s + 1) & 1);
          if (s + 1 < kFillPhases) fill_phase(s + 1);
        } else {
          // Next unit's stage complete and visible; every read of this stage issued.
          cp_async_wait<kStages - 2>();
          __syncthreads();
          open_fill(st, u < u_stop - kStages);  // the loader is at unit u + kStages
          st = st + stage_sz == smem_end ? smem0 : st + stage_sz;
          // After the block's last unit these read a stage that holds no unit (in bounds,
          // unused): no branch.
          load_frags(st, 0, 0);
          load_group(st + g_rd0, 0, true);
        }
        const uint32_t words[4] = {bq[s & 1].x, bq[s & 1].y, bq[s & 1].z, bq[s & 1].w};
        const uint4& sg = sc[s >= 2 ? 1 : 0];
        const uint32_t scale_words[4] = {sg.x, sg.y, sg.z, sg.w};
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          uint32_t b[4];
          O::dequant(words[w], scale_words[w], gr, w, b);
          if constexpr (kSwap) {
            // A = W^T rows: features of n8-block 2w (b[0], b[1]) then 2w+1 (b[2], b[3]);
            // B = X^T: the A registers 0 and 2 of X's fragment (token rows 0..7).
            const uint32_t wt[4] = {b[0], b[2], b[1], b[3]};
            O::mma(acc[0][w], wt, af[s & 1][0][0], af[s & 1][0][2]);
          } else {
#pragma unroll
            for (int mb = 0; mb < MB; ++mb) {
              O::mma(acc[mb][2 * w], af[s & 1][mb], b[0], b[1]);
              O::mma(acc[mb][2 * w + 1], af[s & 1][mb], b[2], b[3]);
            }
          }
        }
      }
    }

    if constexpr (kDrain) {  // red overlays the stages: every warp's reads of them are done
      cp_async_wait<0>();
      __syncthreads();
    }
    {
      // 1. Sum the kWarpsK partial tiles of this block in shared memory.
      for (int r = 0; r < kWarpsK; ++r) {
        if (wk == r && kSwap) {
          // acc[0][w][e]: feature 16 w + lane/4 (+8 for e >= 2) of the warp's 64, token
          // 2 (lane % 4) + e % 2.
#pragma unroll
          for (int w = 0; w < 4; ++w)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int tok = 2 * (lane & 3) + (e & 1), col = wn * kSubN + 16 * w + (lane >> 2) + 8 * (e >> 1);
              float* dst = red + tok * kRedStride + col;
              *dst = r > 0 ? *dst + acc[0][w][e] : acc[0][w][e];
            }
        } else if (wk == r) {
#pragma unroll
          for (int mb = 0; mb < MB; ++mb)
#pragma unroll
            for (int j = 0; j < 8; ++j) {
              const int row = mb * 16 + (lane >> 2), col = wn * kSubN + j * 8 + 2 * (lane & 3);
              float2* p0 = reinterpret_cast<float2*>(red + row * kRedStride + col);
              float2* p1 = reinterpret_cast<float2*>(red + (row + 8) * kRedStride + col);
              float2 v0 = make_float2(acc[mb][j][0], acc[mb][j][1]);
              float2 v1 = make_float2(acc[mb][j][2], acc[mb][j][3]);
              if (r > 0) {
                const float2 o0 = *p0, o1 = *p1;
                v0.x += o0.x; v0.y += o0.y; v1.x += o1.x; v1.y += o1.y;
              }
              *p0 = v0;
              *p1 = v1;
            }
        }
        __syncthreads();
      }
      // 2. A slice split over blocks first_block..last_block: each writes its partial to
      //    its own fp32 slot and bumps the slice counter; the last to arrive sums the slots
      //    in block order (deterministic), writes the output and resets the counter.
      const int slice = p.map.slice_of(cp.c, cp.nt);
      const int first_block = p.map.first_block(slice), last_block = p.map.last_block(slice);
      const bool split = first_block != last_block;
      const int row0 = cp.c * MB * 16;
      const int rows = min(MB * 16, p.m - row0);
      const int items = rows * (kTileN / 4);  // float4 items of the valid rows
      // Slot of block b for this slice: 0 if it is b's first slice, else 1 (its last). Only
      // first_block can have begun in an earlier slice: the others' stripes start inside it.
      const bool first_began_earlier = p.map.begin(first_block) < slice * k_tiles;
      auto slot = [&](int b) {
        const bool last = b == first_block && first_began_earlier;
        return p.reduce + (static_cast<size_t>(b) * 2 + (last ? 1 : 0)) * (MB * 16 * kTileN);
      };
      bool reduce_here = true;
      if (split) {
        float* mine = slot(blockIdx.x);
        for (int i = tid; i < items; i += kThreads) {
          const int r = i / (kTileN / 4), c4 = (i % (kTileN / 4)) * 4;
          __stcg(reinterpret_cast<float4*>(mine + r * kTileN + c4),
                 *reinterpret_cast<const float4*>(red + r * kRedStride + c4));
        }
        __threadfence();
        __syncthreads();
        if (tid == 0) s_last = atomicAdd(p.locks + first_block, 1) == last_block - first_block;
        __syncthreads();
        reduce_here = s_last;
        if (reduce_here) __threadfence();
      }
      if (reduce_here) {
        T* out = static_cast<T*>(p.out);
        const bool vec_out = (p.n & 3) == 0;
        // kRedBatch items per thread at a time and two blocks' partials per round, so the
        // loads from L2 are in flight together rather than one round trip per item and
        // block. (The zero-point MB=4 and swap variants spill a few registers for it,
        // stored before the main loop and reloaded after it.)
        for (int i0 = tid; i0 < items; i0 += kRedBatch * kThreads) {
          float4 v[kRedBatch];
#pragma unroll
          for (int j = 0; j < kRedBatch; ++j) {
            const int i = i0 + j * kThreads, r = i / (kTileN / 4), c4 = (i % (kTileN / 4)) * 4;
            v[j] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (!split && i < items) v[j] = *reinterpret_cast<const float4*>(red + r * kRedStride + c4);
          }
#pragma unroll 2
          for (int b = first_block; split && b <= last_block; ++b) {
            const float* part = slot(b);
#pragma unroll
            for (int j = 0; j < kRedBatch; ++j) {
              const int i = i0 + j * kThreads, r = i / (kTileN / 4), c4 = (i % (kTileN / 4)) * 4;
              if (i < items) {
                const float4 o = __ldcg(reinterpret_cast<const float4*>(part + r * kTileN + c4));
                v[j].x += o.x; v[j].y += o.y; v[j].z += o.z; v[j].w += o.w;
              }
            }
          }
#pragma unroll
          for (int j = 0; j < kRedBatch; ++j) {
            const int i = i0 + j * kThreads, r = i / (kTileN / 4), c4 = (i % (kTileN / 4)) * 4;
            const int col = cp.nt * kTileN + c4;
            if (i >= items || col >= p.n) continue;
            T* dst = out + static_cast<size_t>(row0 + r) * p.n + col;
            if (vec_out) {
              *reinterpret_cast<uint2*>(dst) = make_uint2(O::pack2(v[j].x, v[j].y), O::pack2(v[j].z, v[j].w));
            } else {
              const float vals[4] = {v[j].x, v[j].y, v[j].z, v[j].w};
              for (int e = 0; e < 4 && col + e < p.n; ++e) dst[e] = O::from_float(vals[e]);
            }
          }
        }
        if (split && tid == 0) p.locks[first_block] = 0;  // every contributor has arrived
      }
      zero_acc();
    }
    cp = next_slice(cp);
    if (kDrain && u < u_end) {  // every thread is past its reads of red
      __syncthreads();
      st = smem0;
      start(u, load_stop(u, cp), false);
    }
  }
}

// Every M-tile has a zero-point-free variant (u4b8: zero point 8 folded into immediates,
// fewer registers and instructions) and one that handles both cases at run time; each is
// compiled for the depths of stages_compiled only.
template <typename T, int MB, bool kSwap, int kStages, bool kDrain = false>
const void* kernel_for_stages(bool zeros) {
  static_assert(stages_compiled(MB, kStages, kDrain), "depth not in stages_compiled");
  return zeros ? reinterpret_cast<const void*>(&gemm_kernel<T, MB, true, kSwap, kStages, kDrain>)
               : reinterpret_cast<const void*>(&gemm_kernel<T, MB, false, kSwap, kStages, kDrain>);
}
template <typename T>
const void* kernel_for_type(int mb, int stages, bool drain, bool zeros, bool swap) {
  if (drain) {
    switch (mb * 16 + stages) {
      case 32 + 3: return kernel_for_stages<T, 2, false, 3, true>(zeros);
      case 48 + 3: return kernel_for_stages<T, 3, false, 3, true>(zeros);
      case 64 + 4: return kernel_for_stages<T, 4, false, 4, true>(zeros);
      default: return nullptr;  // not compiled
    }
  }
  switch (mb * 16 + stages) {
    case 16 + 3: return swap ? kernel_for_stages<T, 1, true, 3>(zeros) : kernel_for_stages<T, 1, false, 3>(zeros);
    case 16 + 4: return swap ? kernel_for_stages<T, 1, true, 4>(zeros) : kernel_for_stages<T, 1, false, 4>(zeros);
    case 16 + 6: return swap ? kernel_for_stages<T, 1, true, 6>(zeros) : kernel_for_stages<T, 1, false, 6>(zeros);
    case 32 + 4: return kernel_for_stages<T, 2, false, 4>(zeros);
    case 32 + 6: return kernel_for_stages<T, 2, false, 6>(zeros);
    case 48 + 3: return kernel_for_stages<T, 3, false, 3>(zeros);
    case 48 + 5: return kernel_for_stages<T, 3, false, 5>(zeros);
    case 64 + 4: return kernel_for_stages<T, 4, false, 4>(zeros);
    default: return nullptr;  // not compiled
  }
}

// nullptr when (mb, stages, drain) is not compiled (!stages_compiled) or swap is asked for mb > 1.
const void* kernel_for(DType dtype, int mb, int stages, bool drain, bool zeros, bool swap) {
  if (swap && mb != 1) return nullptr;
  return dtype == DType::kFloat16 ? kernel_for_type<half>(mb, stages, drain, zeros, swap)
                                  : kernel_for_type<__nv_bfloat16>(mb, stages, drain, zeros, swap);
}

int ceil_div(long long a, long long b) { return static_cast<int>((a + b - 1) / b); }

}  // namespace

bool choose_tile(int m, int n_pad, int k_pad, DeviceLimits lim, const PlanHints& hints, TileChoice* out) {
  if (m <= 0 || n_pad <= 0 || k_pad <= 0) return false;
  if (hints.smem_per_sm > 0) {  // plan as on a GPU with this much shared memory per SM
    lim.smem_per_sm = std::min(lim.smem_per_sm, hints.smem_per_sm);
    lim.smem_optin = std::min(lim.smem_optin, hints.smem_per_sm - lim.smem_reserved);
  }
  // Fewest chunks of at most 64 rows, balanced. Where shared memory cannot hold 3 stages of
  // a tile with its reduction tile beside them, the reduction tile overlays the stages
  // (drain, where allowed); where even that does not fit, the chunks get fewer rows (more of
  // them, again balanced). H200 (228 KB): 64 rows, no drain, at every M; with drain, A100
  // (164 KB): 64-row chunks drained, sm_86/89 (100 KB): 48-row ones, 32-row at 49..64 tokens;
  // without, 48-row chunks and 16-row chunks.
  const int max_mb = hints.max_m_blocks > 0 ? std::min(hints.max_m_blocks, kMaxMBlocks) : kMaxMBlocks;
  const int max_stages = hints.max_stages >= 2 ? std::min(hints.max_stages, kMaxStages) : kMaxStages;
  // 16-row tiles run two blocks per SM only on layers above 80 Mi weights (gate_up, down);
  // qkv and o_proj run one, with the deeper pipeline it leaves room for. H200, the 4
  // Llama-70B layers (kernels-h200-2026-12-04-marlin-v4): o_proj 0.99 / 1.01 x vLLM's
  // Marlin at 1 / 16 tokens against 1.05 / 1.12 with two, qkv 0.97 / 0.99 against 0.98 /
  // 1.04; but down 0.91 / 0.92 with one against 0.88 / 0.89 with two (the plan sweep of
  // 2026-12-03 in docs/profile_h200.md found the same split at 16 tokens).
  const bool small_layer = static_cast<long long>(n_pad) * k_pad <= (80LL << 20);
  auto blocks_for = [&](int mb) {
    if (hints.blocks_per_sm > 0) return std::min(hints.blocks_per_sm, blocks_per_sm(mb));
    return mb == 1 && small_layer ? 1 : blocks_per_sm(mb);
  };
  int chunks = ceil_div(m, max_mb * 16);
  int mb = ceil_div(m, 16LL * chunks);
  // Deepest compiled depth within the cap that fits `blocks` blocks per SM; 0 if none.
  auto stages_for = [&](int blocks, bool drain) {
    int s = max_stages;
    while (s > 0 && (!stages_compiled(mb, s, drain) || smem_bytes(mb, s, drain) > lim.smem_budget(blocks))) --s;
    return s;
  };
  int stages = 0, blocks = 1;
  bool drain = false;
  const bool may_drain = hints.drain >= 0 ? hints.drain == 1 : kDrainByDefault;
  for (;;) {
    blocks = blocks_for(mb);
    stages = stages_for(blocks, false);
    // Too little shared memory for two blocks per SM (sm_86/sm_89): one block, deeper.
    if (stages < 4 && blocks > 1) stages = stages_for(blocks = 1, false);
    if (stages >= 3 || mb == 1) break;
    if (may_drain && (stages = stages_for(blocks = 1, true)) >= 3) {
      drain = true;
      break;
    }
    chunks = ceil_div(m, 16LL * (mb - 1));
    mb = ceil_div(m, 16LL * chunks);
  }
  if (stages < 3) return false;
  *out = TileChoice{mb, chunks, stages, blocks, drain, smem_bytes(mb, stages, drain)};
  return true;
}

cudaError_t plan_gemm(int m, int n_pad, int k_pad, DType dtype, int device, const PlanHints& hints,
                      GemmPlan* plan) {
  if (m <= 0 || n_pad <= 0 || k_pad <= 0 || n_pad % kTileN || k_pad % kTileK) return cudaErrorInvalidValue;
  DeviceLimits lim;
  cudaError_t err = device_limits(device, &lim);
  if (err != cudaSuccess) return err;
  TileChoice t;
  if (!choose_tile(m, n_pad, k_pad, lim, hints, &t)) return cudaErrorInvalidValue;
  // Every block must be resident at once: blocks wait on each other's locks.
  const bool swap = t.m_blocks == 1 && m <= 8 && hints.swap_small_m != 0;
  const void* fn = kernel_for(dtype, t.m_blocks, t.stages, t.drain, true, swap);
  err = allow_dynamic_smem(kernel_for(dtype, t.m_blocks, t.stages, t.drain, false, swap), device, t.smem_bytes);
  if (err == cudaSuccess) err = allow_dynamic_smem(fn, device, t.smem_bytes);
  if (err != cudaSuccess) return err;
  int resident = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, fn, kThreads, t.smem_bytes);
  if (err != cudaSuccess) return err;
  if (resident < 1) return cudaErrorInvalidConfiguration;
  resident = std::min(resident, t.blocks_per_sm);
  const int n_tiles = n_pad / kTileN, k_tiles = k_pad / kTileK;
  if (static_cast<long long>(t.chunks) * n_tiles * k_tiles > INT_MAX) return cudaErrorInvalidValue;
  plan->dtype = dtype;
  plan->m_blocks = t.m_blocks;
  plan->swap = swap;
  plan->stripes = StripeMap::plan(t.chunks, n_tiles, k_tiles, lim.sms * resident, hints.chunk_major);
  plan->stages = t.stages;
  plan->drain = t.drain;
  plan->smem_bytes = t.smem_bytes;
  plan->reduce_floats = static_cast<size_t>(plan->stripes.grid()) * 2 * t.m_blocks * 16 * kTileN;  // 2 slots per block
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
  // The launch's shared memory must be what its kernel lays out (a hand-built plan included).
  if (plan.smem_bytes != smem_bytes(plan.m_blocks, plan.stages, plan.drain)) return cudaErrorInvalidValue;
  // The plan must be this call's: its stripes cover exactly these tiles and chunks.
  const StripeMap& map = plan.stripes;
  if (map.n_tiles != a.n_pad / kTileN || map.k_tiles != a.k_pad / kTileK ||
      static_cast<long long>(map.chunks) * 16 * plan.m_blocks < a.m)
    return cudaErrorInvalidValue;
  const void* fn = kernel_for(a.dtype, plan.m_blocks, plan.stages, plan.drain, a.zeros != nullptr, plan.swap);
  if (a.dtype != plan.dtype || fn == nullptr) return cudaErrorInvalidValue;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = allow_dynamic_smem(fn, device, plan.smem_bytes);
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
  p.map = plan.stripes;
  void* kargs[] = {&p};
  return launch_kernel(fn, dim3(plan.stripes.grid()), dim3(kThreads), kargs, static_cast<size_t>(plan.smem_bytes), stream,
                       kernel_has_pdl(fn));
}

}  // namespace marlin
}  // namespace vmp
