// Hopper (sm_90a) asynchronous-copy and wgmma plumbing for our own wgmma kernel
// (machete_mid_m.cu): shared-memory mbarriers, bulk and tensor (TMA) copies into shared
// memory that complete on an mbarrier, and the wgmma shared-memory matrix descriptor of a
// 128-byte-swizzled K-major tile. Device code only; every address is a shared-window
// (32-bit) address unless named gmem.
#pragma once

#include <cuda.h>

#include <cstdint>

namespace vmp::sm90 {

// ---- mbarrier (PTX ISA "mbarrier") ---------------------------------------------------
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes the inits visible to the async proxy (TMA completes transactions on them).
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
}
// Arrive once and announce `bytes` of asynchronous transactions for the current phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(bar),
               "r"(bytes)
               : "memory");
}
// Blocks until the phase with parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n .reg .pred p;\n"
      "WAIT_%=:\n mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n @!p bra WAIT_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// ---- bulk copies global -> shared, completing `bytes` transactions on `bar` -----------
// 1-D: bytes % 16 == 0, both addresses 16-byte aligned.
__device__ __forceinline__ void bulk_g2s(uint32_t dst, const void* gmem, uint32_t bytes, uint32_t bar,
                                         uint64_t policy) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;\n" ::"r"(
          dst),
      "l"(gmem), "r"(bytes), "r"(bar), "l"(policy)
      : "memory");
}
// 2-D tile of a tensor map at element coordinates (c0 innermost, c1); out-of-bounds
// elements arrive as zeros and count as transferred bytes.
__device__ __forceinline__ void tma_g2s_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
// L2 policy for data read once (the weight stream): evicted first, so re-read data (the
// activation tile every CTA reads) keeps its lines.
__device__ __forceinline__ uint64_t l2_evict_first() {
  uint64_t p;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(p));
  return p;
}

// ---- register budget of a warpgroup (all 128 threads execute it) -------------------------
// A block's registers are allocated for its warps in groups of four, so a 384-thread block
// gets at most 168 per thread at launch; warp-specialized kernels move them from the
// producer warpgroup to the consumers.
template <int kRegs>
__device__ __forceinline__ void regs_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void regs_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// ---- wgmma operand descriptor (PTX ISA "Matrix Descriptor Format") -----------------------
// A K-major tile of 128-byte rows (64 16-bit k per row) written with the 128-byte swizzle
// (TMA CU_TENSOR_MAP_SWIZZLE_128B), 1024-byte aligned: 8-row core groups 1024 bytes apart
// (stride byte offset), leading byte offset unused for this layout (1), layout type 1 =
// SWIZZLE_128B. The k16 step j of the tile starts 32 j bytes in (the hardware applies the
// swizzle to the advanced address).
__device__ __forceinline__ uint64_t desc_k_sw128(uint32_t addr) {
  return uint64_t((addr & 0x3FFFF) >> 4) | uint64_t(1) << 16 | uint64_t(1024 >> 4) << 32 | uint64_t(1) << 62;
}
// The descriptor of the same tile `bytes` (a multiple of 16) further in, by adding to the
// 14-bit start-address field: desc_k_sw128(addr + bytes) as long as addr + bytes stays below
// 256 KB (shared memory is 228 KB), without recomputing the whole descriptor per wgmma.
__device__ __forceinline__ uint64_t desc_advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

}  // namespace vmp::sm90
