// wgmma issue-rate probe (a measurement tool, not on the GEMM path): how many dense fp16
// FLOP/s the tensor cores of one H200 deliver for wgmma m64nNk16 with N = 64, 128, 256,
// A from shared memory (SS) or from registers (RS, as the mixed-input mainloops feed the
// upconverted weight), with 1 or 2 consumer warpgroups per CTA. It answers a design
// question of issue 16 before a mainloop is written around it: can a 64-token tile
// (N = 64, the tokens on wgmma's N side) reach the tensor peak at all, or must the tokens
// go on the M side and the weight on N (up to 256) through shared memory? And, with `dq`:
// does the consumers' ALU work (the upconversion of the next k-block's A registers) overlap
// the wgmmas in flight, or does it add to their time?
//
// Contract: one CTA per SM, `warpgroups` x 128 threads. Each warpgroup runs `iters`
// k-blocks of 4 wgmma (k = 64) into one accumulator, `in_flight` commit groups
// outstanding (wgmma.wait_group in_flight - 1), like a pipelined mainloop; operand values
// are constant (zeros from shared memory, ones in the A registers), since only the rate
// is measured. The host times the kernel with CUDA events; FLOP = 2 * 64 * N * 64 per
// k-block and warpgroup.
// dq > 0 (2 or 3 groups in flight, as many A register sets, used in turn): before its
// wgmmas, each k-block upconverts its A register set with the mid-M kernel's own
// instructions per 16 registers: 4 LDS, 12 shifts and 16 x (LOP3, HADD2, HMUL2), repeated dq
// times. With 2 in flight that is machete_mid_m.cu's order: k-block i + 1 converts while
// group i runs; with 3, while groups i - 1 and i run. RS feeds the converted registers to the
// wgmmas; SS converts them all the same but the wgmmas read A from shared memory (does the
// register operand keep the ALU work from overlapping?). mma = false drops the wgmmas (the
// ALU work alone, timed the same way). Both dq variants XOR each k-block's 16 registers into
// one word that can reach `sink` (8 three-input LOP3 more per k-block): without a consumer
// ptxas deletes the whole ALU loop of mma = false (PTX has no volatile; the run of 2026-12-04
// timed an empty kernel so).
// split (SS, 2 in flight, dq > 0, warpgroups = 4): is the overlap limit per warp or per SM?
// Warpgroups 0-1 run the wgmma-only loop, A from shared memory as a kernel with transform warps
// would (no upconversion; mma = false: they exit at once), warpgroups 2-3 the same upconversion
// of `iters` k-blocks each. split = 1: as transform warps would, each k-block's 16 registers
// are stored to shared memory (4 st.shared.v4 per thread, a ring of two 8 KB buffers per
// warpgroup, 512 contiguous bytes per warp store); split = 2: folded into the sink word
// instead (the ALU work alone, no shared-memory traffic). No barrier joins the two kinds
// (constant operands; only the rates are measured).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include <cute/arch/mma_sm90_gmma.hpp>

#include "machete.h"

namespace vmp::machete {
namespace {

// Shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format"), no swizzle:
// start address, leading and stride byte offsets, all in 16-byte units.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lead_bytes, uint32_t stride_bytes) {
  return uint64_t((addr & 0x3FFFF) >> 4) | uint64_t(lead_bytes >> 4) << 16 | uint64_t(stride_bytes >> 4) << 32;
}

// One wgmma m64nNk16, f32 += f16 x f16, through CUTLASS's SM90 GMMA atoms (A and B K-major);
// the accumulator array is spread over the atom's N/2 register arguments.
template <int N, bool kRS>
struct Atom;
#define VMP_PROBE_ATOM(N)                                                                  \
  template <>                                                                              \
  struct Atom<N, false> {                                                                  \
    using Op = cute::SM90::GMMA::MMA_64x##N##x16_F32F16F16_SS<cute::SM90::GMMA::Major::K, cute::SM90::GMMA::Major::K>; \
  };                                                                                       \
  template <>                                                                              \
  struct Atom<N, true> {                                                                   \
    using Op = cute::SM90::GMMA::MMA_64x##N##x16_F32F16F16_RS<cute::SM90::GMMA::Major::K, cute::SM90::GMMA::Major::K>; \
  };
VMP_PROBE_ATOM(64)
VMP_PROBE_ATOM(128)
VMP_PROBE_ATOM(256)
#undef VMP_PROBE_ATOM

template <int N, bool kRS, size_t... I>
__device__ __forceinline__ void wgmma_k16(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t da, uint64_t db,
                                          std::index_sequence<I...>) {
  using Op = typename Atom<N, kRS>::Op;
  if constexpr (kRS) Op::fma(a[0], a[1], a[2], a[3], db, d[I]...);
  else Op::fma(da, db, d[I]...);
}

constexpr int kABytes = 64 * 64 * 2;  // one warpgroup's A tile: 64 rows x 64 k, fp16
constexpr int kWBytes = 8 * 4 * 128;   // packed words read by the dq rounds: 8 k-blocks x 4 LDS x 32 lanes
constexpr int kTBuf = 128 * 64;          // split: one k-block of a transform warpgroup, 128 threads x 16 registers
constexpr int kTBytes = 2 * 2 * kTBuf;   // split: 2 transform warpgroups x a ring of 2 k-blocks

// One k-block's A registers from packed words, as machete_mid_m.cu's fp16 u4b8 dequant: per
// register (LOP3 to 1024 + q, HADD2 to q - 8, HMUL2 by the scale); `rounds` times over.
template <int kRounds>
__device__ __forceinline__ void upconvert(uint32_t (&a)[4][4], uint32_t w_addr, uint32_t scale) {
#pragma unroll
  for (int kb = 0; kb < 4; ++kb) {
    uint32_t w;
    asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(w) : "r"(w_addr + kb * 128));
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      uint32_t v = w >> (4 * r);
#pragma unroll
      for (int round = 0; round < kRounds; ++round) {
        uint32_t raw;
        asm("lop3.b32 %0, %1, 0x000F000F, 0x64086408, 0x6A;\n" : "=r"(raw) : "r"(v));
        half2 h = __hadd2(*reinterpret_cast<half2*>(&raw), __float2half2_rn(-1032.f));
        h = __hmul2(h, *reinterpret_cast<const half2*>(&scale));
        v = *reinterpret_cast<uint32_t*>(&h);
      }
      a[kb][r] = v;
    }
  }
}

// split: one transform warpgroup's loop (see the file comment); out_base: this thread's 16 bytes
// in its warpgroup's ring.
template <int kDq, bool kStore>
__device__ __forceinline__ void transform_loop(int iters, uint32_t w_base, uint32_t out_base, uint32_t scale,
                                               float* sink) {
  uint32_t a[4][4];
  uint32_t fold = 0;
  for (int it = 0; it < iters; ++it) {
    upconvert<kDq>(a, w_base + (it & 7) * 512, scale);
    const uint32_t out = out_base + (it & 1) * kTBuf;
#pragma unroll
    for (int kb = 0; kb < 4; ++kb) {  // store kb of the warpgroup: 128 threads x 16 bytes, contiguous
      if constexpr (kStore)
        asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(out + kb * 128 * 16), "r"(a[kb][0]),
                     "r"(a[kb][1]), "r"(a[kb][2]), "r"(a[kb][3])
                     : "memory");
      else
        fold ^= a[kb][0] ^ a[kb][1] ^ a[kb][2] ^ a[kb][3];
    }
  }
  if (fold == 0xFFFFFFFFu) sink[blockIdx.x] = static_cast<float>(fold);  // never (zero words): keeps the work
}

constexpr int smem_bytes(int n, bool split) { return 2 * kABytes + n * 128 + kWBytes + (split ? kTBytes : 0); }

template <int N, bool kRS, int kInFlight, int kDq, bool kMma, int kSplit>
__global__ void __launch_bounds__(kSplit ? 512 : 256, 1) probe_kernel(int iters, uint32_t scale, float* sink) {
  static_assert(kDq == 0 || kInFlight >= 2, "dq converts the next k-block while one runs");
  static_assert(kMma || kDq > 0, "nothing to time");
  static_assert(!kSplit || (kDq > 0 && kInFlight == 2 && !kRS), "split: SS wgmmas beside dq rounds");
  constexpr int kConvert = kSplit ? 0 : kDq;      // rounds done by the wgmma warpgroups themselves
  constexpr int kSets = kConvert > 0 ? kInFlight : 2;  // A register sets (constant without dq)
  extern __shared__ __align__(1024) unsigned char smem[];
  const int wg = threadIdx.x / 128;
  for (int i = threadIdx.x * 16; i < smem_bytes(N, kSplit); i += blockDim.x * 16)
    *reinterpret_cast<uint4*>(smem + i) = make_uint4(0, 0, 0, 0);
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  if constexpr (kSplit) {
    if (wg >= 2) {
      const uint32_t ring = base + smem_bytes(N, false) + (wg - 2) * 2 * kTBuf;  // this warpgroup's
      transform_loop<kDq, kSplit == 1>(iters, base + 2 * kABytes + N * 128 + (threadIdx.x % 32) * 4,
                                       ring + (threadIdx.x % 128) * 16, scale, sink);
      return;
    }
    if constexpr (!kMma) return;
  }
  // K-major 8x8 core matrices: 128 bytes apart along K (lead), 8 rows x 16 bytes apart
  // along M/N (stride = 64 k x 2 bytes x 8 rows / 8 = 1024 bytes for a 64-deep tile).
  const uint64_t da = smem_desc(base + wg * kABytes, 128, 1024);
  const uint64_t db = smem_desc(base + 2 * kABytes, 128, 1024);
  const uint32_t w_base = base + 2 * kABytes + N * 128 + (threadIdx.x % 32) * 4;
  uint32_t a[kSets][4][4];
#pragma unroll
  for (int set = 0; set < kSets; ++set)
#pragma unroll
    for (int kb = 0; kb < 4; ++kb)
#pragma unroll
      for (int r = 0; r < 4; ++r) a[set][kb][r] = 0x3C003C00u;
  uint32_t fold = 0;  // dq: every upconverted register, so that none is dead code
  float d[N / 2];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) d[i] = 0.f;
  // k-block `it` uses set it % kSets; with dq it first fills that set (its last reader,
  // k-block it - kSets, is done: wait_group kInFlight - 1 at the end of it - 1), while the
  // wgmmas of the kInFlight - 1 k-blocks before it run.
  auto k_block = [&](auto set_c, int it) {
    [[maybe_unused]] constexpr int set = decltype(set_c)::value;
    if constexpr (kConvert > 0) {
      upconvert<kConvert>(a[set], w_base + (it & 7) * 512, scale);
#pragma unroll
      for (int kb = 0; kb < 4; ++kb) fold ^= a[set][kb][0] ^ a[set][kb][1] ^ a[set][kb][2] ^ a[set][kb][3];
    }
    if constexpr (kMma) {
      cute::warpgroup_arrive();
#pragma unroll
      for (int k = 0; k < 4; ++k)  // k16 step k: +32 bytes along K = 2 core matrices
        wgmma_k16<N, kRS>(d, a[set][k], da + 2 * k * (128 >> 4), db + 2 * k * (128 >> 4),
                          std::make_index_sequence<N / 2>{});
      cute::warpgroup_commit_batch();
      cute::warpgroup_wait<kInFlight - 1>();
    }
  };
  int it = 0;
  for (; it + kSets <= iters; it += kSets) {
    k_block(std::integral_constant<int, 0>{}, it);
    k_block(std::integral_constant<int, 1>{}, it + 1);
    if constexpr (kSets == 3) k_block(std::integral_constant<int, 2>{}, it + 2);
  }
  if constexpr (kSets == 3) {  // iters % 3 k-blocks left, in set order
    if (it < iters) k_block(std::integral_constant<int, 0>{}, it);
    if (it + 1 < iters) k_block(std::integral_constant<int, 1>{}, it + 1);
  }
  cute::warpgroup_wait<0>();
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < N / 2; ++i) s += d[i];
  // Never true (zero operands give s = 0 and fold = 0), unknown to the compiler: keeps the work alive.
  if (s != 0.f || fold == 0xFFFFFFFFu) sink[blockIdx.x] = s + static_cast<float>(fold);
}

template <int N, bool kRS, int kInFlight, int kDq = 0, bool kMma = true, int kSplit = 0>
cudaError_t launch(int warpgroups, int iters, int sms, float* sink, cudaStream_t stream, float* ms) {
  auto* fn = probe_kernel<N, kRS, kInFlight, kDq, kMma, kSplit>;
  const int smem = smem_bytes(N, kSplit);
  const uint32_t one = 0x3C003C00u;  // the scale: 1.0 in both halves (a kernel argument: not folded)
  cudaError_t err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  cudaEvent_t e[2] = {nullptr, nullptr};
  for (cudaEvent_t& ev : e)
    if (err == cudaSuccess) err = cudaEventCreate(&ev);
  if (err == cudaSuccess) {
    fn<<<sms, 128 * warpgroups, smem, stream>>>(iters / 8 & ~1, one, sink);  // warm-up
    cudaEventRecord(e[0], stream);
    fn<<<sms, 128 * warpgroups, smem, stream>>>(iters, one, sink);
    cudaEventRecord(e[1], stream);
    err = cudaEventSynchronize(e[1]);
    if (err == cudaSuccess) err = cudaGetLastError();
    if (err == cudaSuccess) err = cudaEventElapsedTime(ms, e[0], e[1]);
  }
  for (cudaEvent_t ev : e)
    if (ev) cudaEventDestroy(ev);
  return err;
}

template <int N, bool kRS>
cudaError_t launch_depth(int in_flight, int warpgroups, int iters, int sms, float* sink, cudaStream_t s, float* ms) {
  switch (in_flight) {
    case 1: return launch<N, kRS, 1>(warpgroups, iters, sms, sink, s, ms);
    case 2: return launch<N, kRS, 2>(warpgroups, iters, sms, sink, s, ms);
    case 3: return launch<N, kRS, 3>(warpgroups, iters, sms, sink, s, ms);
    default: return cudaErrorInvalidValue;
  }
}

// The dq variants of one (N, A source, groups in flight, split): 1 or 2 rounds, with or without wgmma.
template <int N, bool kRS, int kInFlight, int kSplit = 0>
cudaError_t launch_dq_rounds(int dq, bool mma, int warpgroups, int iters, int sms, float* sink, cudaStream_t s,
                             float* ms) {
  switch (dq * 2 + (mma ? 1 : 0)) {
    case 2: return launch<N, kRS, kInFlight, 1, false, kSplit>(warpgroups, iters, sms, sink, s, ms);
    case 3: return launch<N, kRS, kInFlight, 1, true, kSplit>(warpgroups, iters, sms, sink, s, ms);
    case 4: return launch<N, kRS, kInFlight, 2, false, kSplit>(warpgroups, iters, sms, sink, s, ms);
    case 5: return launch<N, kRS, kInFlight, 2, true, kSplit>(warpgroups, iters, sms, sink, s, ms);
    default: return cudaErrorInvalidValue;
  }
}

// The dq variants: N = 64 or 128; RS with 2 or 3 groups in flight, SS with 2; split: SS, 2 in flight.
template <int N>
cudaError_t launch_dq(bool rs, int in_flight, int dq, bool mma, int split, int warpgroups, int iters, int sms,
                      float* sink, cudaStream_t s, float* ms) {
  if (split) {
    if (warpgroups != 4 || in_flight != 2 || rs || split > 2) return cudaErrorInvalidValue;
    return split == 1 ? launch_dq_rounds<N, false, 2, 1>(dq, mma, warpgroups, iters, sms, sink, s, ms)
                      : launch_dq_rounds<N, false, 2, 2>(dq, mma, warpgroups, iters, sms, sink, s, ms);
  }
  if (rs && in_flight == 2) return launch_dq_rounds<N, true, 2>(dq, mma, warpgroups, iters, sms, sink, s, ms);
  if (rs && in_flight == 3) return launch_dq_rounds<N, true, 3>(dq, mma, warpgroups, iters, sms, sink, s, ms);
  if (!rs && in_flight == 2) return launch_dq_rounds<N, false, 2>(dq, mma, warpgroups, iters, sms, sink, s, ms);
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t wgmma_probe(int n, bool rs, int warpgroups, int in_flight, int dq, bool mma, int iters, int sms,
                        float* sink, cudaStream_t stream, float* ms, int split) {
  if (warpgroups < 1 || warpgroups > (split ? 4 : 2) || iters < 16 || iters % 2) return cudaErrorInvalidValue;
  if (dq != 0) {
    if (n == 64) return launch_dq<64>(rs, in_flight, dq, mma, split, warpgroups, iters, sms, sink, stream, ms);
    if (n == 128) return launch_dq<128>(rs, in_flight, dq, mma, split, warpgroups, iters, sms, sink, stream, ms);
    return cudaErrorInvalidValue;
  }
  if (!mma || split) return cudaErrorInvalidValue;
  switch (n * 2 + (rs ? 1 : 0)) {
    case 128: return launch_depth<64, false>(in_flight, warpgroups, iters, sms, sink, stream, ms);
    case 129: return launch_depth<64, true>(in_flight, warpgroups, iters, sms, sink, stream, ms);
    case 256: return launch_depth<128, false>(in_flight, warpgroups, iters, sms, sink, stream, ms);
    case 257: return launch_depth<128, true>(in_flight, warpgroups, iters, sms, sink, stream, ms);
    case 512: return launch_depth<256, false>(in_flight, warpgroups, iters, sms, sink, stream, ms);
    case 513: return launch_depth<256, true>(in_flight, warpgroups, iters, sms, sink, stream, ms);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace vmp::machete
