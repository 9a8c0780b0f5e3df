// Mid-M Machete kernels ("128x64w", "256x64w", "128x128w", "256x128w", and "256x32w" for
// 17..32 tokens): Y[M, N] = X[M, K] . dequant(W)[K, N] on wgmma, our own mainloop on the SAME
// prepacked weight as the other schedules (machete_layout.cuh). The transposed problem
// Y^T = W^T X^T runs as wgmma m64nTk16 with the upconverted weight as the register A operand
// (the prepack hands each lane its A fragment of a k16 step as one 32-bit word) and T = 32,
// 64 or 128 tokens on wgmma's N side, read by descriptor from a 128-byte-swizzled shared tile.
//
// Why: at 64..128 tokens CUTLASS's mixed-input collective keeps the tensor pipe 31-72%
// busy (docs/profile_h200.md); its chain shared load -> convert -> wgmma waits once per
// k-block. The wgmma probe showed m64n64k16 at full rate once two k-blocks per SM are in
// flight. Here every consumer warpgroup keeps two K tiles of wgmma in flight (two A
// register sets, wgmma.wait_group), two consumer warpgroups per CTA, one CTA per SM.
// (Four consumer warpgroups and 2-CTA clusters multicasting X were built and measured
// slower on the H200: docs/profile_h200.md; they were removed.)
//
// CTA: consumer warpgroups 0 and 1 take the first and second half of a 128-row tile (one
// m64 row block each) or of a 256-row tile (two each: X is read from L2 once per 256 weight
// rows instead of 128); the last warpgroup is the producer (one lane; setmaxnreg moves its
// registers to the consumers). A pipeline stage holds, for one 64-deep K tile: the X tile
// (T token rows x 128 bytes, TMA with the 128-byte swizzle; rows >= M arrive as zeros),
// the tile's weight atoms (4 or 8 KB, contiguous in the prepacked layout: one bulk copy),
// and the group row of its scales (and zeros). full[s] completes when the stage's bytes
// have landed; empty[s] when both warpgroups' wgmmas that read it have completed.
//
// Work split: a unit is (row tile, K tile); units run tile-major, token tile outermost, and
// CTA b takes the contiguous stripe [b*stripe, (b+1)*stripe). A tile whose K range is split
// over CTAs is finished by the last to arrive (split_fixup.cuh: deterministic, locks zero
// before and after).
//
// Dequantization per weight pair: LOP3 to the magic-biased float (fp16 1024 + q, bf16
// 128 + q), one exact add to q - 8 (u4b8) or q (u4 + zeros), one multiply by the scale
// (u4b8) or fused multiply-add with the scale and z' = -s*z (u4 + zeros); one rounding to
// the act dtype, as in the CUTLASS tiles.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>
#include <utility>

#include <cute/arch/mma_sm90_gmma.hpp>

#include "async_sm90.cuh"
#include "machete.h"
#include "machete_layout.cuh"
#include "split_fixup.cuh"
#include "stripes.h"
#include "../device_limits.h"
#include "../launch.h"
#include "../ptx.cuh"

namespace vmp::machete {
namespace {

// A CTA: two consumer warpgroups and one producer warpgroup (one lane works).
constexpr int kConsumerWGs = 2;
constexpr int kThreads = 128 * kConsumerWGs + 128;
constexpr int kWarpsPerTile = 4 * kConsumerWGs;  // lock slots per split tile
// Registers per thread at launch: the block's share of the 64 K register file (168).
constexpr int kLaunchRegs = 65536 / kThreads / 8 * 8;
// setmaxnreg (producer, consumers): ptxas compiles the consumers' code to their raised count,
// but the block can only redistribute what it got at launch (the CTA pool): setmaxnreg.inc
// retries until enough registers are free, so a budget above kThreads x kLaunchRegs hangs
// the block.
constexpr int kProducerRegs = 40, kConsumerRegs = 232;
static_assert(128 * kProducerRegs + 128 * kConsumerWGs * kConsumerRegs <= kThreads * kLaunchRegs,
              "setmaxnreg asks for more registers than the block was launched with");
constexpr int kTileK = kAtomK;                       // 64 k per stage
constexpr int kMaxStages = 18;
__host__ __device__ constexpr int w_bytes(int rows) { return rows * kTileK / 2; }  // one K column's atoms
__host__ __device__ constexpr int g_bytes(int rows) { return rows * 2; }  // a group row of scales (zeros)

// One CTA per SM: the consumers hold 110-230 registers (two A register sets, the
// accumulators); at 2 CTAs per SM ptxas serializes the wgmmas.
constexpr int kCtasPerSm = 1;
// Stage: [X: t rows x 128 B][W: the tile's atoms], a multiple of 1024 bytes (the swizzle's
// alignment); each stage's scales and zeros sit in a region after all stages.
__host__ __device__ constexpr int x_bytes(int t) { return t * kTileK * 2; }
__host__ __device__ constexpr int stage_bytes(int t, int rows) { return x_bytes(t) + w_bytes(rows); }
// Dynamic shared memory: 1 KB of alignment slack, the stages, their group rows, 2 kMaxStages
// mbarriers.
__host__ __device__ constexpr int smem_bytes(int t, int rows, int stages) {
  return 1024 + stages * (stage_bytes(t, rows) + 2 * g_bytes(rows)) + 16 * kMaxStages;
}

struct Params {
  CUtensorMap x_map;  // X [M, K] (ldx), box 64 k x T tokens, 128-byte swizzle, OOB zeros
  const unsigned char* w;
  const unsigned char* scales;  // [K/g, N] act dtype
  const unsigned char* zeros;   // [K/g, N] act dtype (-s*z) or nullptr
  void* y;
  float* partials;
  int* locks;
  int m, n;
  int row_tiles;     // N / tile rows
  int k_tiles;       // K / 64
  int kt_per_group;  // g / 64 (K / 64 for channelwise)
  int units, stripe, stages;
};

// ---- per activation type: dequantization of one A register (two weights) ------------
template <typename T>
struct Deq {
  static constexpr bool kHalf = std::is_same_v<T, half>;
  static constexpr uint32_t kMagic = kHalf ? 0x64006400u : 0x43004300u;  // 1024.0 (fp16) / 128.0 (bf16), both halves
  static constexpr float kBias = kHalf ? 1024.f : 128.f;
  using V2 = std::conditional_t<kHalf, half2, __nv_bfloat162>;
  // kBias + m q -> m (q - 8) (u4b8) or m q (u4 + zeros), exact (m = 1 or 16).
  template <int kM>
  __device__ static V2 sub_bias(V2 v, bool zeros) {
    const float b = -(kBias + (zeros ? 0.f : 8.f * kM));
    if constexpr (kHalf) return __hadd2(v, __float2half2_rn(b));
    else return __hadd2(v, __float2bfloat162_rn(b));
  }
};

// Rows row + 8 of a fragment (odd A registers) hold 16x their weights in fp16: their nibbles
// are taken where they sit, 4 bits up, as 1024 + 16 q, which saves two of the three shifts per
// packed word. The product with the scale is exactly 16x the plain one while (q - 8) s is an
// fp16 normal (|.| >= 6.1e-5; below, the 16x form is the more exact) and |s| < 512, so the
// accumulator rows are scaled back by 1/16 after the mainloop of each tile and Y is
// bit-identical (machete_layout_ref.dequant_fp16_ref, tests/test_layout_refs.py). bf16 has no
// mantissa room for 16 q.
template <typename T>
constexpr bool kHi16 = std::is_same_v<T, half>;

// kHi (fp16 only): the nibble pair at bits 4..7 of each half, giving 16x the weights.
template <typename T, bool kZeros, bool kHi = false>
__device__ __forceinline__ uint32_t dequant(uint32_t nibbles, uint32_t s2, uint32_t z2) {
  using V2 = typename Deq<T>::V2;
  static_assert(!kHi || kHi16<T>, "16 q form is fp16 only");
  constexpr uint32_t kMask = kHi ? 0x00F000F0u : 0x000F000Fu;
  // u4b8 stores q - 8 as a signed nibble: XOR 8 turns it back into q.
  constexpr uint32_t kC = Deq<T>::kMagic ^ (kZeros ? 0u : kHi ? 0x00800080u : 0x00080008u);
  uint32_t raw = ptx::lop3<0x6A, kMask, kC>(nibbles);  // (n & mask) ^ c
  V2 v = Deq<T>::template sub_bias<kHi ? 16 : 1>(*reinterpret_cast<V2*>(&raw), kZeros);
  if constexpr (kZeros) v = __hfma2(v, *reinterpret_cast<V2*>(&s2), *reinterpret_cast<V2*>(&z2));
  else v = __hmul2(v, *reinterpret_cast<V2*>(&s2));
  return *reinterpret_cast<uint32_t*>(&v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v) {
  if constexpr (std::is_same_v<T, half>) return __float2half_rn(v);
  else return __float2bfloat16_rn(v);
}

// ---- wgmma m64nTk16, f32 += T x T, A from registers, B K-major by descriptor ------------
template <typename T, int N>
struct Wgmma;
#define VMP_MIDM_WGMMA(TYPE, AB, N)                                                                           \
  template <>                                                                                                 \
  struct Wgmma<TYPE, N> {                                                                                     \
    using Op = cute::SM90::GMMA::MMA_64x##N##x16_F32##AB##AB##_RS<cute::SM90::GMMA::Major::K,                  \
                                                                  cute::SM90::GMMA::Major::K>;                \
  };
VMP_MIDM_WGMMA(half, F16, 32)
VMP_MIDM_WGMMA(half, F16, 64)
VMP_MIDM_WGMMA(half, F16, 128)
VMP_MIDM_WGMMA(__nv_bfloat16, BF16, 32)
VMP_MIDM_WGMMA(__nv_bfloat16, BF16, 64)
VMP_MIDM_WGMMA(__nv_bfloat16, BF16, 128)
#undef VMP_MIDM_WGMMA

template <typename T, int N, size_t... I>
__device__ __forceinline__ void wgmma(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc, bool accumulate,
                                      std::index_sequence<I...>) {
  Wgmma<T, N>::Op::fma(a[0], a[1], a[2], a[3], desc, d[I]...,
                       accumulate ? cute::SM90::GMMA::ScaleOut::One : cute::SM90::GMMA::ScaleOut::Zero);
}

template <int N>
__device__ __forceinline__ void fence_acc(float (&d)[N / 2]) {
#pragma unroll
  for (int i = 0; i < N / 2; ++i) cute::warpgroup_fence_operand(d[i]);
}

// kRows = 64 kSub kConsumerWGs: each consumer warpgroup takes kSub m64 row blocks of the tile.
template <typename T, int kT, int kRows, bool kZeros>
__global__ void __launch_bounds__(kThreads, kCtasPerSm) mid_m_kernel(const __grid_constant__ Params p) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  constexpr int kSub = kRows / (64 * kConsumerWGs), kConsumers = 128 * kConsumerWGs;
  static_assert(kSub * 64 * kConsumerWGs == kRows && (kSub == 1 || kSub == 2), "tile rows per warpgroup");
  constexpr int kWBytes = w_bytes(kRows), kGBytes = g_bytes(kRows);
  constexpr int kSB = stage_bytes(kT, kRows);
  constexpr int kXB = x_bytes(kT);
  const uint32_t base = (ptx::smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t groups = base + p.stages * kSB;  // stage s's scales (and zeros) at + 2 kGBytes s
  const uint32_t bars = groups + p.stages * 2 * kGBytes;
  auto full = [&](int s) { return bars + 8u * s; };
  auto empty = [&](int s) { return bars + 8u * (kMaxStages + s); };
  const int u0 = blockIdx.x * p.stripe;
  const int u1 = min(p.units, u0 + p.stripe);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    for (int s = 0; s < p.stages; ++s) {
      sm90::mbar_init(full(s), 1);
      sm90::mbar_init(empty(s), kConsumerWGs);
    }
    sm90::mbar_fence_init();
  }
  __syncthreads();
  const int kt_n = p.k_tiles;

  // ---- producer: one lane walks the stripe's units in order -------------------------
  auto produce = [&] {
    const uint64_t once = sm90::l2_evict_first();
    struct Pos {
      int kt, r, mt;  // K tile, row tile, token tile
    };
    const int tau0 = u0 / kt_n;
    const Pos start{u0 % kt_n, tau0 % p.row_tiles, tau0 / p.row_tiles};
    auto next = [&](Pos& q) {
      if (++q.kt == kt_n) {
        q.kt = 0;
        if (++q.r == p.row_tiles) q.r = 0, ++q.mt;
      }
    };
    constexpr uint32_t kTx = kXB + kWBytes + (kZeros ? 2 : 1) * kGBytes;
    auto load_w = [&](int s, const Pos& q) {  // weights, scales, zeros: no kernel writes them
      const uint32_t st = base + s * kSB;
      sm90::mbar_arrive_expect_tx(full(s), kTx);
      const size_t atoms = (static_cast<size_t>(q.kt) * p.row_tiles + q.r) * (kRows / kAtomN);
      sm90::bulk_g2s(st + kXB, p.w + atoms * 512, kWBytes, full(s), once);
      const size_t g = (static_cast<size_t>(q.kt / p.kt_per_group) * p.n + static_cast<size_t>(q.r) * kRows) * 2;
      const uint32_t gs = groups + s * 2 * kGBytes;
      sm90::bulk_g2s(gs, p.scales + g, kGBytes, full(s), once);
      if constexpr (kZeros) sm90::bulk_g2s(gs + kGBytes, p.zeros + g, kGBytes, full(s), once);
    };
    auto load_x = [&](int s, const Pos& q) {
      sm90::tma_g2s_2d(base + s * kSB, &p.x_map, q.kt * kTileK, q.mt * kT, full(s));
    };
    const int count = u1 - u0, pre = min(p.stages, count);
    // PDL (launch.h): the first stages' weights go out before pdl_wait(), overlapping the
    // previous kernel's tail; X only after it. The consumers touch global memory (Y,
    // partials, locks) only after data loaded here, so they follow the wait too.
    Pos q = start;
    for (int i = 0; i < pre; ++i, next(q)) load_w(i, q);
    ptx::pdl_wait();
    ptx::pdl_launch_dependents();
    q = start;
    for (int i = 0; i < pre; ++i, next(q)) load_x(i, q);
    int s = pre == p.stages ? 0 : pre;
    uint32_t parity = 0;  // of the empty phase to wait for: fill f of a stage waits for release f-1
    for (int i = pre; i < count; ++i, next(q)) {
      sm90::mbar_wait(empty(s), parity);
      load_w(s, q);
      load_x(s, q);
      if (++s == p.stages) s = 0, parity ^= 1;
    }
  };
  if (warp >= kConsumers / 32) {
    sm90::regs_dec<kProducerRegs>();
    if (threadIdx.x == kConsumers) produce();
    return;
  }

  // ---- consumers ---------------------------------------------------------------------
  sm90::regs_inc<kConsumerRegs>();
  const int wg = warp / 4;
  const bool leader = threadIdx.x % 128 == 0;                        // releases stages for its warpgroup
  // Row block j of this warpgroup: tile rows 64 (kSub wg + j) ..; this warp's atom in it.
  const uint32_t w_rd = kXB + (kSub * wg * 4 + warp % 4) * 512 + lane * 4;  // + 2048 j
  const int row = kSub * wg * 64 + (warp % 4) * 16 + lane / 4;           // fragment rows row (+ 8) + 64 j
  const uint32_t g_rd = groups + row * 2;
  float acc[kSub][kT / 2];
#pragma unroll
  for (int j = 0; j < kSub; ++j)
#pragma unroll
    for (int i = 0; i < kT / 2; ++i) acc[j][i] = 0.f;
  // A register sets: two per row block (one per K tile in flight), or, where the registers
  // leave no room for that, one per row block: in 256x128w (2 x 64 accumulators) the two row
  // blocks' commit groups overlap instead (wait_group 1 after each).
  constexpr bool kSetPerBlock = kT == 128 && kSub == 2;
  uint32_t a[kSetPerBlock ? 1 : 2][kSub][4][4];
  int s = 0;
  uint32_t parity = 0;
  int in_flight = -1;  // stage read by the K tile whose wgmmas may still run
  // The warpgroup's release of stage st to the producer.
  auto release = [&](int st) {
    if (leader) sm90::mbar_arrive(empty(st));
  };

  // One K tile into A register set `set`: wait for its stage; per row block j, dequantize
  // and issue its 4 wgmma as one commit group.
  auto k_tile = [&](auto set_c, bool first) {
    constexpr int set = kSetPerBlock ? 0 : decltype(set_c)::value;
    sm90::mbar_wait(full(s), parity);
    const uint32_t st = base + s * kSB;
    const uint32_t gs = g_rd + s * 2 * kGBytes;
    const uint64_t x_desc = sm90::desc_k_sw128(st);  // the stage's X tile, k16 step kb at + 32 kb bytes
#pragma unroll
    for (int j = 0; j < kSub; ++j) {
      const uint32_t s_lo = ptx::lds16(gs + 128 * j), s_hi = ptx::lds16(gs + 128 * j + 16);
      const uint32_t s2[2] = {s_lo | s_lo << 16, s_hi | s_hi << 16};
      uint32_t z2[2] = {0, 0};
      if constexpr (kZeros) {
        const uint32_t z_lo = ptx::lds16(gs + kGBytes + 128 * j), z_hi = ptx::lds16(gs + kGBytes + 128 * j + 16);
        z2[0] = z_lo | z_lo << 16;
        z2[1] = z_hi | z_hi << 16;
        if constexpr (kHi16<T>) {  // rows row + 8 carry 16x: so does their z'
          const half2 z16 = __hmul2(*reinterpret_cast<half2*>(&z2[1]), __float2half2_rn(16.f));
          z2[1] = *reinterpret_cast<const uint32_t*>(&z16);
        }
      }
#pragma unroll
      for (int kb = 0; kb < 4; ++kb) {
        const uint32_t w = ptx::lds32(st + w_rd + 2048 * j + kb * 128);
        // Register r of the fragment holds nibbles r and r + 4 (machete_layout.cuh); odd r
        // are rows row + 8.
        uint32_t(&ar)[4] = a[set][j][kb];
        if constexpr (kHi16<T>) {
          const uint32_t w8 = w >> 8;
          ar[0] = dequant<T, kZeros>(w, s2[0], z2[0]);
          ar[1] = dequant<T, kZeros, true>(w, s2[1], z2[1]);
          ar[2] = dequant<T, kZeros>(w8, s2[0], z2[0]);
          ar[3] = dequant<T, kZeros, true>(w8, s2[1], z2[1]);
        } else {
#pragma unroll
          for (int r = 0; r < 4; ++r) ar[r] = dequant<T, kZeros>(w >> (4 * r), s2[r & 1], z2[r & 1]);
        }
      }
      cute::warpgroup_arrive();
#pragma unroll
      for (int kb = 0; kb < 4; ++kb)
        wgmma<T, kT>(acc[j], a[set][j][kb], sm90::desc_advance(x_desc, kb * 32), !(first && kb == 0),
                     std::make_index_sequence<kT / 2>{});
      cute::warpgroup_commit_batch();
      if constexpr (kSetPerBlock) {
        // <= kSub - 1 groups pending: block j + 1's registers (last read kSub groups ago)
        // are free, and after block 0 the previous K tile's last group is done.
        cute::warpgroup_wait<kSub - 1>();
        if (j == 0 && in_flight >= 0) release(in_flight);
      }
    }
    if constexpr (!kSetPerBlock) {
      cute::warpgroup_wait<kSub>();  // the previous K tile's groups are done: release its stage
      if (in_flight >= 0) release(in_flight);
    }
    in_flight = s;
    if (++s == p.stages) s = 0, parity ^= 1;
  };

  T* y = static_cast<T*>(p.y);
  // Accumulator value i: column (token) 8 (i / 4) + 2 (lane % 4) + i % 2, row row + 8 ((i / 2) % 2).
  auto tok_of = [&](int i) { return 8 * (i / 4) + 2 * (lane % 4) + (i % 2); };
  auto row_of = [&](int j, int i) { return row + 64 * j + 8 * ((i / 2) % 2); };
  auto store_y = [&](int r, int mt) {
    T* yt = y + static_cast<size_t>(mt) * kT * p.n + r * kRows;
#pragma unroll
    for (int j = 0; j < kSub; ++j)
#pragma unroll
      for (int i = 0; i < kT / 2; ++i) {
        const int tok = mt * kT + tok_of(i);
        if (tok < p.m) yt[static_cast<size_t>(tok_of(i)) * p.n + row_of(j, i)] = from_float<T>(acc[j][i]);
      }
  };
  // CTA b's slot for tile tau: 2b if tau is b's first tile, else 2b + 1 (its last one). A
  // warp's slot is its fragments in order, float4 j of lane l at 32 j + l (coalesced).
  auto slot_of = [&](int b, int tau) {
    const int odd = (b * p.stripe) / kt_n != tau;
    const size_t slot = static_cast<size_t>(2 * b + odd);
    return reinterpret_cast<float4*>(p.partials + (slot * kWarpsPerTile + warp) * kSub * 16 * kT) + lane;
  };

  for (int u = u0; u < u1;) {
    const int tau = u / kt_n;
    const int seg_end = min(u1, (tau + 1) * kt_n);
    const int r = tau % p.row_tiles, mt = tau / p.row_tiles;
    int v = u;
    k_tile(std::integral_constant<int, 0>{}, true);
    ++v;
    for (; v + 1 < seg_end; v += 2) {
      k_tile(std::integral_constant<int, 1>{}, false);
      k_tile(std::integral_constant<int, 0>{}, false);
    }
    if (v < seg_end) k_tile(std::integral_constant<int, 1>{}, false);
    cute::warpgroup_wait<0>();
#pragma unroll
    for (int j = 0; j < kSub; ++j) fence_acc<kT>(acc[j]);
    release(in_flight);
    in_flight = -1;
    if constexpr (kHi16<T>)  // rows row + 8 (accumulator values i with (i / 2) % 2 == 1) carry 16x
#pragma unroll
      for (int j = 0; j < kSub; ++j)
#pragma unroll
        for (int i = 2; i < kT / 2; i += 4) acc[j][i] *= 0.0625f, acc[j][i + 1] *= 0.0625f;

    const int first_b = (tau * kt_n) / p.stripe, last_b = (tau * kt_n + kt_n - 1) / p.stripe;
    u = seg_end;
    if (first_b == last_b) {
      store_y(r, mt);
      continue;
    }
    int* lock = p.locks + first_b * kWarpsPerTile + warp;
    auto& flat = reinterpret_cast<float(&)[kSub * kT / 2]>(acc);
    if (!fixup_arrive<0>(flat, slot_of(blockIdx.x, tau), [&](int b) { return slot_of(b, tau); }, first_b, last_b, lock))
      continue;
    store_y(r, mt);
    fixup_release(lock);
  }
}

// The compiled shapes (tokens, rows), one per mid-M schedule of machete.h, in its order.
struct Shape {
  int t, rows;
};
constexpr Shape kShapes[] = {{64, 128}, {64, 256}, {128, 128}, {128, 256}, {32, 256}};
static_assert([] {
  if (sizeof(kShapes) / sizeof(Shape) != kNumSchedules - kFirstMidM) return false;
  for (int i = kFirstMidM; i < kNumSchedules; ++i) {
    const Shape& s = kShapes[i - kFirstMidM];
    if (s.t != kTileTokens[i] || s.rows != kTileN[i] || kClusterN[i] != 1) return false;
  }
  return true;
}(), "kShapes must list machete.h's mid-M schedules in order (1-CTA tiles)");

template <typename T, bool kZeros, size_t... I>
const void* kernel_at(int i, std::index_sequence<I...>) {
  static const void* const kFns[] = {reinterpret_cast<const void*>(
      &mid_m_kernel<T, kShapes[I].t, kShapes[I].rows, kZeros>)...};
  return kFns[i];
}

const void* kernel_for(ActType act, bool zeros, const MidMPlan& plan) {
  constexpr auto kAll = std::make_index_sequence<kNumSchedules - kFirstMidM>{};
  const int i = plan.schedule - kFirstMidM;
  if (act == kF16) return zeros ? kernel_at<half, true>(i, kAll) : kernel_at<half, false>(i, kAll);
  return zeros ? kernel_at<__nv_bfloat16, true>(i, kAll) : kernel_at<__nv_bfloat16, false>(i, kAll);
}

// Lets fn's blocks use `bytes` of dynamic shared memory on `device` (device_limits.h).
const char* allow_smem(const void* fn, int device, int bytes) {
  return allow_dynamic_smem(fn, device, bytes) == cudaSuccess
             ? nullptr
             : "cudaFuncSetAttribute (dynamic shared memory) failed for the mid-M kernel";
}

// cuTensorMapEncodeTiled through the runtime's driver entry point (no -lcuda).
using EncodeFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                              const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                              CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
EncodeFn encode_fn() {
  static EncodeFn fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      f = nullptr;
    return reinterpret_cast<EncodeFn>(f);
  }();
  return fn;
}

}  // namespace

const char* plan_mid_m(int schedule, const MMArgs& a, MidMPlan* plan) {
  if (!is_mid_m(schedule)) return "not a mid-M schedule";
  const int rows = kTileN[schedule], t = kTileTokens[schedule];
  if (a.m < 1) return "M must be positive";
  if (a.n % rows || a.k % kTileK) return "mid-M kernel needs N % tile rows == 0 and K % 64 == 0";
  if (a.group_size % kTileK || a.k % a.group_size) return "mid-M kernel needs a group size that is a multiple of 64";
  if (a.ldx % 8 || reinterpret_cast<uintptr_t>(a.x) % 16) return "mid-M kernel needs 16-byte aligned X rows (TMA)";
  DeviceLimits lim;
  if (device_limits(a.device, &lim) != cudaSuccess) return "cudaDeviceGetAttribute failed";
  const int budget = lim.smem_budget(kCtasPerSm);
  const int stages =
      std::min(kMaxStages, (budget - smem_bytes(t, rows, 0)) / (smem_bytes(t, rows, 1) - smem_bytes(t, rows, 0)));
  if (stages < 3) return "too little shared memory per SM for the mid-M pipeline";
  plan->schedule = schedule;
  plan->stages = stages;
  plan->smem_bytes = smem_bytes(t, rows, stages);
  // Units of (row tile, K tile); stripes over the resident CTAs.
  const long long tiles = static_cast<long long>(a.n / rows) * ((a.m + t - 1) / t);
  const long long units = tiles * (a.k / kTileK);
  if (units > (1LL << 30)) return "problem too large for the mid-M kernel's unit index";
  const Stripes sp = split_stripes(units, a.sm_count * kCtasPerSm);
  plan->units = static_cast<int>(units);
  plan->stripe = sp.stripe;
  plan->grid = sp.grid;
  plan->partial_floats = static_cast<size_t>(plan->grid) * 2 * rows * t;
  plan->locks = plan->grid * kWarpsPerTile;
  return nullptr;
}

const char* run_mid_m(ActType act, const MidMPlan& plan, const MMArgs& a, float* partials, int* locks,
                      cudaStream_t stream) {
  const EncodeFn encode = encode_fn();
  if (encode == nullptr) return "cuTensorMapEncodeTiled is not available from the CUDA driver";
  const int s = plan.schedule, rows = kTileN[s];
  Params p;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(a.k), static_cast<cuuint64_t>(a.m)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(a.ldx) * 2};
  const cuuint32_t box[2] = {kTileK, static_cast<cuuint32_t>(kTileTokens[s])};
  const cuuint32_t elem_strides[2] = {1, 1};
  if (encode(&p.x_map, act == kF16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2,
             const_cast<void*>(a.x), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
             CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
    return "cuTensorMapEncodeTiled rejected the activation tensor";
  p.w = static_cast<const unsigned char*>(a.w);
  p.scales = static_cast<const unsigned char*>(a.scales);
  p.zeros = static_cast<const unsigned char*>(a.zeros);
  p.y = a.y;
  p.partials = partials;
  p.locks = locks;
  p.m = a.m;
  p.n = a.n;
  p.row_tiles = a.n / rows;
  p.k_tiles = a.k / kTileK;
  p.kt_per_group = a.group_size / kTileK;
  p.units = plan.units;
  p.stripe = plan.stripe;
  p.stages = plan.stages;
  const void* fn = kernel_for(act, a.zeros != nullptr, plan);
  if (const char* err = allow_smem(fn, a.device, plan.smem_bytes)) return err;
  void* args[] = {&p};
  if (launch_kernel(fn, dim3(plan.grid), dim3(kThreads), args, static_cast<size_t>(plan.smem_bytes), stream,
                    kernel_has_pdl(fn)) != cudaSuccess)
    return "mid-M kernel launch failed";
  return nullptr;
}

}  // namespace vmp::machete
