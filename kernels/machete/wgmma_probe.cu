// wgmma issue-rate probe (a measurement tool, not on the GEMM path): how many dense fp16
// FLOP/s the tensor cores of one H200 deliver for wgmma m64nNk16 with N = 64, 128, 256,
// A from shared memory (SS) or from registers (RS, as the mixed-input mainloops feed the
// upconverted weight), with 1 or 2 consumer warpgroups per CTA. It answers a design
// question of issue 16 before a mainloop is written around it: can a 64-token tile
// (N = 64, the tokens on wgmma's N side) reach the tensor peak at all, or must the tokens
// go on the M side and the weight on N (up to 256) through shared memory?
//
// Contract: one CTA per SM, `warpgroups` x 128 threads. Each warpgroup runs `iters`
// k-blocks of 4 wgmma (k = 64) into one accumulator, `in_flight` commit groups
// outstanding (wgmma.wait_group in_flight - 1), like a pipelined mainloop; operand values
// are constant (zeros from shared memory, ones in the A registers), since only the rate
// is measured. The host times the kernel with CUDA events; FLOP = 2 * 64 * N * 64 per
// k-block and warpgroup.
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

template <int N, bool kRS, int kInFlight>
__global__ void __launch_bounds__(256, 1) probe_kernel(int iters, float* sink) {
  extern __shared__ __align__(1024) unsigned char smem[];
  const int wg = threadIdx.x / 128;
  for (int i = threadIdx.x * 16; i < 2 * kABytes + N * 128; i += blockDim.x * 16)
    *reinterpret_cast<uint4*>(smem + i) = make_uint4(0, 0, 0, 0);
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  // K-major 8x8 core matrices: 128 bytes apart along K (lead), 8 rows x 16 bytes apart
  // along M/N (stride = 64 k x 2 bytes x 8 rows / 8 = 1024 bytes for a 64-deep tile).
  const uint64_t da = smem_desc(base + wg * kABytes, 128, 1024);
  const uint64_t db = smem_desc(base + 2 * kABytes, 128, 1024);
  const uint32_t a[4] = {0x3C003C00u, 0x3C003C00u, 0x3C003C00u, 0x3C003C00u};
  float d[N / 2];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) d[i] = 0.f;
  for (int it = 0; it < iters; ++it) {
    cute::warpgroup_arrive();
#pragma unroll
    for (int k = 0; k < 4; ++k)  // k16 step k: +32 bytes along K = 2 core matrices
      wgmma_k16<N, kRS>(d, a, da + 2 * k * (128 >> 4), db + 2 * k * (128 >> 4), std::make_index_sequence<N / 2>{});
    cute::warpgroup_commit_batch();
    cute::warpgroup_wait<kInFlight - 1>();
  }
  cute::warpgroup_wait<0>();
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < N / 2; ++i) s += d[i];
  if (s != 0.f) sink[blockIdx.x] = s;  // never true (zeros): keeps the MMAs alive
}

template <int N, bool kRS, int kInFlight>
cudaError_t launch(int warpgroups, int iters, int sms, float* sink, cudaStream_t stream, float* ms) {
  auto* fn = probe_kernel<N, kRS, kInFlight>;
  const int smem = 2 * kABytes + N * 128;
  cudaError_t err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  cudaEvent_t e[2] = {nullptr, nullptr};
  for (cudaEvent_t& ev : e)
    if (err == cudaSuccess) err = cudaEventCreate(&ev);
  if (err == cudaSuccess) {
    fn<<<sms, 128 * warpgroups, smem, stream>>>(iters / 8, sink);  // warm-up
    cudaEventRecord(e[0], stream);
    fn<<<sms, 128 * warpgroups, smem, stream>>>(iters, sink);
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
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t wgmma_probe(int n, bool rs, int warpgroups, int in_flight, int iters, int sms, float* sink,
                        cudaStream_t stream, float* ms) {
  if (warpgroups < 1 || warpgroups > 2 || iters < 8) return cudaErrorInvalidValue;
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
