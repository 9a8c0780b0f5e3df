// The L2 prefetch of the next layer's weight (VMP_L2_PREFETCH_MB), the part the GEMM kernels
// share: what one item is, how a warp issues a block's items, and how the host lists them for
// tests. Which item is where (its offsets: the layout and the next call's stripes) is each
// kernel's own prefetch_item (machete_small_m.cu, marlin_gemm.cu).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "ptx.cuh"

namespace vmp {

// One item: a run of the next layer's weight and, if g_bytes != 0, one of its group rows (the
// scales, and the zero points at the same offset). w_bytes == 0: nothing to fetch (an item past
// its stripe or past K). Offsets in bytes from the tensors' starts.
struct PrefetchSpan {
  size_t w_off, g_off;
  uint32_t w_bytes, g_bytes;
};

// The next layer's tensors (zeros: nullptr without zero points).
struct PrefetchBases {
  const unsigned char* w;
  const unsigned char* scales;
  const unsigned char* zeros;
};

// The calling warp's lanes issue items lane, lane + 32, ... of this block; item(i, &span) is
// false past the block's last item.
template <class Item>
__device__ __forceinline__ void prefetch_block(const PrefetchBases& b, int lane, Item item) {
  PrefetchSpan it;
  for (int i = lane; item(i, &it); i += 32) {
    if (it.w_bytes == 0) continue;
    ptx::prefetch_l2(b.w + it.w_off, it.w_bytes);
    if (it.g_bytes == 0) continue;
    ptx::prefetch_l2(b.scales + it.g_off, it.g_bytes);
    if (b.zeros != nullptr) ptx::prefetch_l2(b.zeros + it.g_off, it.g_bytes);
  }
}

// Host, for tests: every item of blocks 0..blocks-1 (item(block, i, &span)), as [w_off, w_bytes,
// g_off, g_bytes] each.
template <class Item>
std::vector<int64_t> list_prefetch(int blocks, Item item) {
  std::vector<int64_t> out;
  PrefetchSpan it;
  for (int b = 0; b < blocks; ++b)
    for (int i = 0; item(b, i, &it); ++i)
      if (it.w_bytes > 0) out.insert(out.end(), {int64_t(it.w_off), it.w_bytes, int64_t(it.g_off), it.g_bytes});
  return out;
}

}  // namespace vmp
