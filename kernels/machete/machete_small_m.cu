// Small-M Machete kernels ("64x8", "64x16"): Y[M, N] = X[M, K] . dequant(W)[K, N] for
// M <= 16, reading the SAME prepacked weight as the wgmma mainloop
// (machete_layout.cuh), so one weight copy serves every M.
//
// Why it exists: at M <= 16 a W4A16 GEMM is bound by reading the weight, and the wgmma
// tiles (M-tile >= 16 tokens) dequantize every weight with a multiply-add in the act
// dtype before the MMA; they reached 2.6x the bandwidth floor at M=1. Here the transposed
// problem Y^T = W^T X^T runs on mma.sync m16n8k16 with the weight as operand A. A prepack
// atom row (16 n x 64 k) hands lane t, per k16 step, exactly its A fragment as one
// 32-bit word, so dequantization is 4 LOP3 + 1 SHF per 8 weights and nothing else:
//   * codes become magic-biased floats (fp16: 1024 + q for fragment rows g, 1024 + 16 q
//     for rows g+8; bf16: 128 + q), multiplied unscaled and un-shifted;
//   * a 17th MMA per k16 step with A = ones gives sum_k x, and per group every output
//     row gets  acc += mul * tmp + bias * xsum  in fp32, which removes the bias and the
//     zero point and applies the scale (mul, bias from s and z' = -s*z, coef() below).
//   Products are exact; the bias costs ~10 bits of the fp32 accumulator's 24, far below
//   fp16/bf16 output rounding.
//
// Work split: a warp unit is 64 rows (4 atoms) x 128 k (two 64-deep pipeline stages). A
// block unit is an octet of 8 row groups (512 rows) x one 128-deep k block; block b takes
// a contiguous stripe of block units (octet major), and warp w computes row group
// 8*octet + w of each, through its own cp.async pipeline (no block barrier anywhere): the
// 8 warps read the same X chunk, the weights of 8 different row groups. When the stripe
// leaves an octet, each warp's 64 x M tile is final unless the octet is split over
// blocks; then every block stores an fp32 slot and the last to arrive (per-warp lock)
// sums the slots in block order, so the result is deterministic, and resets the lock.
//
// Only sm_80 instructions (cp.async, ldmatrix, mma.sync) plus the PDL controls (launched
// through launch.h: the first stages' weights are fetched before pdl_wait()); built into
// _machete_C (sm_90a).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "machete.h"
#include "machete_layout.cuh"
#include "split_fixup.cuh"
#include "stripes.h"
#include "../device_limits.h"
#include "../launch.h"
#include "../ptx.cuh"

namespace vmp::machete {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kAtoms = 4;                     // atom rows (16 n each) per unit
constexpr int kRows = kAtoms * kAtomN;        // 64 output features per unit
constexpr int kStageK = kAtomK;               // 64 k per pipeline stage
constexpr int kUnitK = 2 * kStageK;           // 128 k per unit
constexpr int kWBytes = kAtoms * 512;         // weight bytes per stage (4 contiguous atoms)
constexpr int kGBytes = kRows * 2;            // one group row of scales (or zeros) per stage
constexpr int kXOff = kWBytes + 2 * kGBytes;  // X tile after weights, scales, zeros
constexpr int kXRowBytes = kStageK * 2;       // 128 bytes: 8 chunks of 16, swizzled by row
constexpr int kSlotFloats = 16 * kRows;       // one cross-block partial tile (<= 16 tokens)
constexpr int kChannelShift = 30;             // group_shift for channelwise: (k >> 30) == 0

// One token block: 2 blocks of 8 warps per SM (<= 128 registers); two token blocks need
// more registers (~150): 1 block per SM.
__host__ __device__ constexpr int blocks_per_sm(int t) { return t == 1 ? 2 : 1; }
// Pipeline depth per warp. H200, Llama-3.1-70B layers (4 GEMMs summed, fp16 u4b8 g128,
// graph replay): M=1 3 stages 135.5 us, 4 142.6, 5 147.0; M=8 3 stages 150.5, 4 158.1.
constexpr int kStages = 3;

struct Params {
  const void* x;
  int64_t ldx;
  const uint32_t* w;
  const void* scales;
  const void* zeros;
  void* y;
  float* partials;
  int* locks;
  int m, n, k;
  int group_shift, groups;
  int na;        // N / 16: atoms per 64-deep K column of the layout
  int k_atoms;   // K / 64
  int kb_count;  // units per row group = ceil(K / 128)
  int units, stripe;
  int stage_bytes;
};

// ---- PTX wrappers: ../ptx.cuh ------------------------------------------------------
using ptx::cp_async16;
using ptx::cp_async16_l1;
using ptx::cp_async_commit;
using ptx::cp_async_wait;
using ptx::lds16;
using ptx::lds32;
using ptx::ldsm_x4;
using ptx::smem_u32;

// (a & mask) ^ c in one instruction.
template <uint32_t kMask, uint32_t kC>
__device__ __forceinline__ uint32_t and_xor(uint32_t a) {
  return ptx::lop3<0x6A, kMask, kC>(a);
}

template <class A>
__device__ __forceinline__ void zero_all(A& arr) {
  float* f = reinterpret_cast<float*>(&arr);
#pragma unroll
  for (int i = 0; i < static_cast<int>(sizeof(A) / sizeof(float)); ++i) f[i] = 0.f;
}

// ---- per activation type: upconversion, MMA, group coefficients ---------------------
// Stored nibbles: the signed q-8 (u4b8; XOR 8 turns it back into q) or q (u4 + zeros).
template <typename T>
struct Ops;

template <>
struct Ops<half> {
  static constexpr uint32_t kOnes = 0x3C003C00;
  // A registers of one word: rows g (regs 0, 2) hold 1024 + q, rows g+8 (regs 1, 3) 1024 + 16 q.
  template <bool kZeros>
  __device__ static void upconvert(uint32_t w, uint32_t (&a)[4]) {
    constexpr uint32_t kLo = 0x64006400u ^ (kZeros ? 0u : 0x00080008u);
    constexpr uint32_t kHi = 0x64006400u ^ (kZeros ? 0u : 0x00800080u);
    const uint32_t w8 = w >> 8;
    a[0] = and_xor<0x000F000F, kLo>(w);
    a[1] = and_xor<0x00F000F0, kHi>(w);
    a[2] = and_xor<0x000F000F, kLo>(w8);
    a[3] = and_xor<0x00F000F0, kHi>(w8);
  }
  // Y += mul * sum(A x) + bias * sum(x) equals s * sum((q - 8) x) (u4b8) or
  // sum((q s + z') x) (u4 + zeros) for the row's A encoding.
  template <bool kZeros>
  __device__ static void coef(float s, float z, bool hi_row, float& mul, float& bias) {
    mul = hi_row ? s * 0.0625f : s;
    bias = kZeros ? z - (hi_row ? 64.f : 1024.f) * s : -(hi_row ? 72.f : 1032.f) * s;
  }
  __device__ static float to_float(uint16_t b) { return __half2float(__ushort_as_half(b)); }
  __device__ static void mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    ptx::mma_f16(c, a, b[0], b[1]);
  }
  __device__ static half from_float(float v) { return __float2half_rn(v); }
};

template <>
struct Ops<__nv_bfloat16> {
  static constexpr uint32_t kOnes = 0x3F803F80;
  // Every A register holds 128 + q (bf16 has no room for the 16 q trick).
  template <bool kZeros>
  __device__ static void upconvert(uint32_t w, uint32_t (&a)[4]) {
    constexpr uint32_t kC = 0x43004300u ^ (kZeros ? 0u : 0x00080008u);
    a[0] = and_xor<0x000F000F, kC>(w);
    a[1] = and_xor<0x000F000F, kC>(w >> 4);
    a[2] = and_xor<0x000F000F, kC>(w >> 8);
    a[3] = and_xor<0x000F000F, kC>(w >> 12);
  }
  template <bool kZeros>
  __device__ static void coef(float s, float z, bool, float& mul, float& bias) {
    mul = s;
    bias = kZeros ? z - 128.f * s : -136.f * s;
  }
  __device__ static float to_float(uint16_t b) { return __bfloat162float(__ushort_as_bfloat16(b)); }
  __device__ static void mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    ptx::mma_bf16(c, a, b[0], b[1]);
  }
  __device__ static __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

// kT token blocks of 8 (M <= 8 kT). Shared memory: [zero row][per warp: kStages stages of
// p.stage_bytes]. Warp w of a block owns row group 8*rgo + w of every block unit (rgo, kb)
// of the block's stripe, so the 8 warps read the same X chunk (copied through L1, .ca).
template <typename T, int kT, bool kZeros>
__global__ void __launch_bounds__(kThreads, blocks_per_sm(kT)) small_m_kernel(const Params p) {
  using O = Ops<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int v0 = blockIdx.x * p.stripe;
  const int v1 = min(p.units, v0 + p.stripe);
  const int rgo_first = v0 / p.kb_count;
  const int rg_count = p.n / kRows;
  if (v0 >= v1) return;

  const uint32_t zero_row = smem_u32(smem);
  const int sb = p.stage_bytes;
  const uint32_t stages0 = zero_row + kXRowBytes + warp * kStages * sb;
  const uint32_t stages_end = stages0 + kStages * sb;
  const T* x = static_cast<const T*>(p.x);
  const T* scales = static_cast<const T*>(p.scales);
  const T* zeros = static_cast<const T*>(p.zeros);
  if (lane < kXRowBytes / 16)
    asm volatile("st.shared.v4.u32 [%0], {%1,%1,%1,%1};\n" ::"r"(zero_row + lane * 16), "r"(0));
  __syncthreads();  // the zero row is shared by the block's warps
  // A warp whose row group is past N in the stripe's first octet is past it in all
  // (N not a multiple of 512: only the last octet is partial).
  if (8 * rgo_first + warp >= rg_count) return;

  // ---- producer: one stage = this warp's 4 atoms of one 64-deep K column, the group
  // row of their scales (and zeros), and X rows < m of those 64 k. The loader walks the
  // stripe's stages in order with running pointers (one add per stage), recomputed only
  // when the stripe moves on to the next octet.
  const bool g_on = lane < 8 || (kZeros && lane < 16);
  const T* g_lane = (lane < 8 ? scales : zeros) + (lane & 7) * 8;
  const uint32_t g_dst = kWBytes + (lane >> 3) * kGBytes + (lane & 7) * 16;
  const size_t w_col_bytes = static_cast<size_t>(p.na) * 512;  // one 64-deep K column of atoms
  const unsigned char* w_lane = reinterpret_cast<const unsigned char*>(p.w) + lane * 16;
  // X: copy i of a lane is chunk c = lane + 32 i (row xr + 4 i, 16-byte chunk xc) if c < 8 m;
  // its shared offset is swizzled by the row's low 3 bits, xr + 4 (i % 2).
  constexpr int kXCopies = 8 * kT * 8 / 32;
  const int xr = lane >> 3, xc = lane & 7;
  const int x_n = (p.m * 8 - lane + 31) / 32;  // copies of this lane with c < 8 m
  const uint32_t x_dst[2] = {static_cast<uint32_t>(kXOff + xr * kXRowBytes + ((xc ^ xr) << 4)),
                             static_cast<uint32_t>(kXOff + xr * kXRowBytes + ((xc ^ (xr + 4)) << 4))};
  const T* x_lane = x + xr * p.ldx + xc * 8;
  const int64_t x_step = 4 * p.ldx;  // elements: 4 rows

  // A stage's copies come in two parts: kW (codes, scales, zeros: data no kernel writes)
  // and kX (activations).
  constexpr int kW = 1, kX = 2;
  struct Loader {
    int left;                // stages of the stripe still to load
    int ak;                  // K column (64 deep) of the next stage: 2 kb + half
    int rg;                  // its row group
    const unsigned char* w;  // its atoms (this lane's chunk)
    const T* x;              // its X columns (this lane's chunk of row xr)
  };
  auto load_part = [&](uint32_t st, const Loader& q, int parts) {
    if (q.left > 0 && q.rg < rg_count) {
      const bool valid = q.ak < p.k_atoms;  // K % 128 == 64: the last unit's second half is zeros
      if (parts & kW) {
        const unsigned char* wsrc = valid ? q.w : w_lane;
#pragma unroll
        for (int i = 0; i < kWBytes / 16 / 32; ++i) cp_async16(st + lane * 16 + i * 512, wsrc + i * 512, valid);
        if (g_on) {
          const int gr = (q.ak * kStageK) >> p.group_shift;  // the half's group row (also for !valid)
          const bool gvalid = gr < p.groups;
          cp_async16(st + g_dst, g_lane + static_cast<size_t>(gvalid ? gr : 0) * p.n + kRows * q.rg, gvalid);
        }
      }
      if (parts & kX) {
        const T* xsrc = valid ? q.x : x_lane;
#pragma unroll
        for (int i = 0; i < kXCopies; ++i)
          if (i < x_n) cp_async16_l1(st + x_dst[i & 1] + i * 512, xsrc + i * x_step, valid);
      }
    }
  };
  // The loader at K column ak of row group rg, `left` stages to go.
  auto seek = [&](int left, int ak, int rg) {
    return Loader{left, ak, rg, w_lane + ak * w_col_bytes + static_cast<size_t>(rg) * kWBytes, x_lane + ak * kStageK};
  };
  auto step = [&](Loader& q) {
    if (q.ak + 1 == 2 * p.kb_count) {  // next octet, K column 0
      q = seek(q.left - 1, 0, q.rg + kWarps);
    } else {
      --q.left;
      ++q.ak;
      q.w += w_col_bytes;
      q.x += kStageK;
    }
  };
  Loader ld = seek(2 * (v1 - v0), 2 * (v0 % p.kb_count), 8 * rgo_first + warp);
  auto load_next = [&](uint32_t st, int parts) {
    load_part(st, ld, parts);
    step(ld);
    cp_async_commit();
  };

  // ---- consumer state ----------------------------------------------------------------
  float acc[kAtoms][kT][4], tmp[kAtoms][kT][4], xs[kT][4];
  const uint32_t ones[4] = {O::kOnes, O::kOnes, O::kOnes, O::kOnes};
  // ldmatrix row addresses: lane -> token row tb*8 + lane%8, 16-byte chunk 4*pair + lane/8
  // (b0, b1 of k16 step 2*pair, then of step 2*pair+1); rows >= m read the zero row.
  uint32_t x_rd[kT][2];
  bool x_real[kT];
#pragma unroll
  for (int t = 0; t < kT; ++t) {
    const int r = t * 8 + (lane & 7);
    x_real[t] = r < p.m;
#pragma unroll
    for (int pr = 0; pr < 2; ++pr) {
      const int ch = 4 * pr + (lane >> 3);
      x_rd[t][pr] = x_real[t] ? kXOff + r * kXRowBytes + ((ch ^ (r & 7)) << 4) : (lane >> 3) * 16;
    }
  }
  const uint32_t w_rd = lane * 4;
  const uint32_t g_rd = (lane >> 2) * 2;  // fragment row g of atom 0; +16 bytes for row g+8
  const bool per_stage_groups = p.group_shift == 6;  // g = 64: one group per stage

  // Fold the period's raw sums into acc with the group's coefficients (stage st's row).
  auto close_period = [&](uint32_t st) {
#pragma unroll
    for (int a = 0; a < kAtoms; ++a) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // h = 0: fragment row g, h = 1: row g + 8
        const uint32_t off = st + kWBytes + a * 32 + h * 16 + g_rd;
        const float s = O::to_float(lds16(off));
        const float z = kZeros ? O::to_float(lds16(off + kGBytes)) : 0.f;
        float mul, bias;
        O::template coef<kZeros>(s, z, h == 1, mul, bias);
#pragma unroll
        for (int t = 0; t < kT; ++t)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            acc[a][t][2 * h + e] = fmaf(bias, xs[t][e], fmaf(mul, tmp[a][t][2 * h + e], acc[a][t][2 * h + e]));
      }
    }
  };
  auto compute_stage = [&](uint32_t st) {
#pragma unroll
    for (int pr = 0; pr < 2; ++pr) {
      uint32_t b[kT][2][2];
#pragma unroll
      for (int t = 0; t < kT; ++t) {
        uint32_t r[4];
        ldsm_x4(r, (x_real[t] ? st : zero_row) + x_rd[t][pr]);
        b[t][0][0] = r[0];
        b[t][0][1] = r[1];
        b[t][1][0] = r[2];
        b[t][1][1] = r[3];
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int step = 2 * pr + j;
#pragma unroll
        for (int a = 0; a < kAtoms; ++a) {
          uint32_t af[4];
          O::template upconvert<kZeros>(lds32(st + a * 512 + step * 128 + w_rd), af);
#pragma unroll
          for (int t = 0; t < kT; ++t) O::mma(tmp[a][t], af, b[t][j]);
        }
#pragma unroll
        for (int t = 0; t < kT; ++t) O::mma(xs[t], ones, b[t][j]);
      }
    }
  };

  // ---- pipeline: stages 0..S-2 up front; each consume waits for its stage, refills the
  // slot consumed last (every lane is past it after __syncwarp), computes -------------------
  // Launched with PDL (launch.h): the prologue's weight copies go out before pdl_wait(),
  // overlapping the previous kernel's tail; X, Y, partials and locks only after it. Those
  // copies join the first commit group.
  {
    Loader q = ld;
    for (int s = 0; s < kStages - 1; ++s, step(q)) load_part(stages0 + s * sb, q, kW);
  }
  ptx::pdl_wait();
  ptx::pdl_launch_dependents();
  for (int s = 0; s < kStages - 1; ++s) load_next(stages0 + s * sb, kX);
  uint32_t rd_st = stages0, ld_st = stages0 + (kStages - 1) * sb;
  auto advance = [&]() {
    cp_async_wait<kStages - 2>();
    __syncwarp();
    load_next(ld_st, kW | kX);
    ld_st = rd_st;
    const uint32_t st = rd_st;
    rd_st += sb;
    if (rd_st == stages_end) rd_st = stages0;
    return st;
  };
  auto consume = [&]() {
    const uint32_t st = advance();
    compute_stage(st);
    return st;
  };

  T* y = static_cast<T*>(p.y);
  // Fragment position of value e of acc[a][t]: token and row of this warp's 64 x M tile.
  auto tok_of = [&](int t, int e) { return t * 8 + 2 * (lane & 3) + (e & 1); };
  auto row_of = [&](int a, int e) { return a * kAtomN + (lane >> 2) + 8 * (e >> 1); };
  auto store_y = [&](const float (&v)[kAtoms][kT][4], int rg) {
#pragma unroll
    for (int a = 0; a < kAtoms; ++a)
#pragma unroll
      for (int t = 0; t < kT; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (tok_of(t, e) < p.m)
            y[static_cast<size_t>(tok_of(t, e)) * p.n + rg * kRows + row_of(a, e)] = O::from_float(v[a][t][e]);
  };
  // Cross-block slot: a warp's whole fragment tile in fragment order, float4 (a, t) of
  // lane l at float4 index (a kT + t) 32 + l, so stores and loads are coalesced 512-byte
  // rows. Token rows >= m are stored too (they are zeros): a per-lane predicate measured
  // slower at M = 1 than the extra bytes (H200, 4 GEMMs: 148.0 vs 137.7 us).
  auto slot_of = [&](int b, int rgo, int first_b) {  // block b's slot for octet rgo
    const int odd = b == first_b && first_b * p.stripe / p.kb_count != rgo;
    return reinterpret_cast<float4*>(p.partials + ((2 * b + odd) * kWarps + warp) * kSlotFloats) + lane;
  };

  for (int v = v0; v < v1;) {
    const int rgo = v / p.kb_count;
    const int v_end = min(v1, (rgo + 1) * p.kb_count);
    const int rg = 8 * rgo + warp;
    zero_all(acc);
    for (; v < v_end; ++v) {
      if (rg < rg_count) {
        zero_all(tmp);
        zero_all(xs);
        const uint32_t st0 = consume();
        if (per_stage_groups) {
          close_period(st0);
          zero_all(tmp);
          zero_all(xs);
        }
        close_period(consume());
      } else {  // past N (partial last octet): nothing was loaded; keep the ring in step
        advance();
        advance();
      }
    }
    if (rg >= rg_count) continue;

    // ---- row group rg done in this block: this warp's 64 x m tile --------------------
    const int first_b = rgo * p.kb_count / p.stripe;
    const int last_b = (rgo * p.kb_count + p.kb_count - 1) / p.stripe;
    if (first_b == last_b) {
      store_y(acc, rg);
      continue;
    }
    // Split over blocks first_b..last_b (split_fixup.cuh). Block b's slot for this octet
    // is 2b (rgo is its first octet), except that first_b's is 2 first_b + 1 when rgo is not
    // first_b's first octet. Four blocks' loads in flight: a few L2 round trips, not one per
    // block (unroll 4 measured 133.9 / 136.2 / 172.1 us at M = 1 / 8 / 16, unroll 2
    // 137.7 / 140.3 / 179.5).
    int* lock = p.locks + first_b * kWarps + warp;
    auto& flat = reinterpret_cast<float(&)[kAtoms * kT * 4]>(acc);
    if (!fixup_arrive<4>(flat, slot_of(blockIdx.x, rgo, first_b),
                         [&](int b) { return slot_of(b, rgo, first_b); }, first_b, last_b, lock))
      continue;
    store_y(acc, rg);
    fixup_release(lock);
  }
  cp_async_wait<0>();
}

template <typename T, bool kZeros>
const void* kernel_for_type(int t) {
  return t == 1 ? reinterpret_cast<const void*>(&small_m_kernel<T, 1, kZeros>)
                : reinterpret_cast<const void*>(&small_m_kernel<T, 2, kZeros>);
}

const void* kernel_for(ActType act, bool zeros, int t) {
  if (act == kF16) return zeros ? kernel_for_type<half, true>(t) : kernel_for_type<half, false>(t);
  return zeros ? kernel_for_type<__nv_bfloat16, true>(t) : kernel_for_type<__nv_bfloat16, false>(t);
}

}  // namespace

const char* plan_small_m(int schedule, const MMArgs& a, SmallMPlan* plan) {
  if (!is_small_m(schedule)) return "not a small-M schedule";
  const int rows = kTileN[schedule], tokens_per_tile = kTileTokens[schedule];
  if (rows != kRows || (tokens_per_tile != 8 && tokens_per_tile != 16)) return "small-M tiles are 64x8 and 64x16";
  if (a.m < 1 || a.m > tokens_per_tile) return "M exceeds the small-M tile's token count";
  if (a.n % kRows || a.k % kStageK) return "small-M kernel needs N % 64 == 0 and K % 64 == 0";
  const int t = tokens_per_tile / 8;
  DeviceLimits lim;
  if (device_limits(a.device, &lim) != cudaSuccess) return "cudaDeviceGetAttribute failed";
  const int budget = lim.smem_budget(blocks_per_sm(t));
  plan->stage_bytes = kXOff + a.m * kXRowBytes;  // X rows < m only
  plan->smem_bytes = kXRowBytes + kWarps * kStages * plan->stage_bytes;
  if (plan->smem_bytes > budget) return "too little shared memory per SM for the small-M pipeline";
  plan->tokens = tokens_per_tile;
  // Block units: (octet of 8 row groups, 128-deep k block); stripes balanced over the
  // resident blocks.
  const long long octets = (a.n / kRows + kWarps - 1) / kWarps;
  const long long units = octets * ((a.k + kUnitK - 1) / kUnitK);
  const Stripes sp = split_stripes(units, static_cast<long long>(a.sm_count) * blocks_per_sm(t));
  plan->units = static_cast<int>(units);
  plan->stripe = sp.stripe;
  plan->grid = sp.grid;
  plan->partial_floats = static_cast<size_t>(plan->grid) * 2 * kWarps * kSlotFloats;
  plan->locks = plan->grid * kWarps;
  return nullptr;
}

const char* run_small_m(ActType act, const SmallMPlan& plan, const MMArgs& a, float* partials, int* locks,
                        cudaStream_t stream) {
  const int t = plan.tokens / 8;
  const void* fn = kernel_for(act, a.zeros != nullptr, t);
  if (allow_dynamic_smem(fn, a.device, plan.smem_bytes) != cudaSuccess)
    return "cudaFuncSetAttribute (dynamic shared memory) failed for the small-M kernel";
  Params p;
  p.x = a.x;
  p.ldx = a.ldx;
  p.w = static_cast<const uint32_t*>(a.w);
  p.scales = a.scales;
  p.zeros = a.zeros;
  p.y = a.y;
  p.partials = partials;
  p.locks = locks;
  p.m = a.m;
  p.n = a.n;
  p.k = a.k;
  p.group_shift = a.group_size == a.k ? kChannelShift : __builtin_ctz(static_cast<unsigned>(a.group_size));
  p.groups = a.k / a.group_size;
  p.na = a.n / kAtomN;
  p.k_atoms = a.k / kStageK;
  p.kb_count = (a.k + kUnitK - 1) / kUnitK;
  p.units = plan.units;
  p.stripe = plan.stripe;
  p.stage_bytes = plan.stage_bytes;
  void* args[] = {&p};
  if (launch_kernel(fn, dim3(plan.grid), dim3(kThreads), args, static_cast<size_t>(plan.smem_bytes), stream,
                    kernel_has_pdl(fn)) != cudaSuccess)
    return "small-M kernel launch failed";
  return nullptr;
}

}  // namespace vmp::machete
