// Cross-block split-K fix-up of one warp's fp32 tile, shared by the small-M and mid-M
// kernels (whose stripes may split a tile's K range over blocks first_b..last_b).
//
// Contract: acc is the warp's tile as kN = 4 kQ contiguous floats; slot_of(b) is block b's slot
// for this tile, already offset by the lane, float4 q of the tile at +32 q (a warp stores and
// loads coalesced 512-byte rows); *lock counts the blocks that have arrived, 0 at rest.
// fixup_arrive stores acc in `mine` (slot_of of this block) and counts this block in; it
// returns false for every block but the last to arrive, whose acc then holds the sum of all
// slots in block order (deterministic). That block stores Y, then calls fixup_release.
#pragma once

namespace vmp::machete {

// kUnroll: block slots whose loads are in flight at once (0: the compiler's choice).
template <int kUnroll, int kN, typename SlotOf>
__device__ __forceinline__ bool fixup_arrive(float (&acc)[kN], float4* mine, const SlotOf& slot_of, int first_b,
                                             int last_b, int* lock) {
  static_assert(kN % 4 == 0, "a tile of whole float4s");
  constexpr int kQ = kN / 4;
#pragma unroll
  for (int q = 0; q < kQ; ++q)
    __stcg(mine + 32 * q, make_float4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]));
  __threadfence();
  __syncwarp();
  int last = 0;
  if ((threadIdx.x & 31) == 0) last = atomicAdd(lock, 1) == last_b - first_b;
  if (!__shfl_sync(0xffffffffu, last, 0)) return false;
  __threadfence();
#pragma unroll
  for (int i = 0; i < kN; ++i) acc[i] = 0.f;
  auto add = [&](int b) {
    const float4* sp = slot_of(b);
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      const float4 v = __ldcg(sp + 32 * q);
      acc[4 * q] += v.x;
      acc[4 * q + 1] += v.y;
      acc[4 * q + 2] += v.z;
      acc[4 * q + 3] += v.w;
    }
  };
  if constexpr (kUnroll > 0) {
#pragma unroll kUnroll
    for (int b = first_b; b <= last_b; ++b) add(b);
  } else {
    for (int b = first_b; b <= last_b; ++b) add(b);
  }
  return true;
}

// The last block, after storing Y: every contributor has arrived, so the lock is reset.
__device__ __forceinline__ void fixup_release(int* lock) {
  __syncwarp();
  if ((threadIdx.x & 31) == 0) *lock = 0;
}

}  // namespace vmp::machete
