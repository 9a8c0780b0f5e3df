// GPU repack of 4-bit codes and group rows into the layout of marlin_layout.cuh.
#include "marlin.h"
#include "marlin_layout.cuh"

namespace vmp {
namespace marlin {
namespace {

// One thread per output word.
__global__ void repack_kernel(const uint8_t* __restrict__ codes, int k, int n, int n_pad,
                              long long total_words, uint32_t* __restrict__ out) {
  const long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total_words) return;
  const long long tile = idx / kSubWords;
  const int in_tile = static_cast<int>(idx % kSubWords);
  const int lane = in_tile >> 2, word = in_tile & 3;
  const int tiles_n = n_pad / kSubN;
  const int kb = static_cast<int>(tile / tiles_n), nb = static_cast<int>(tile % tiles_n);
  uint32_t packed = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int r = kb * kSubK + packed_row(lane, i);
    const int c = nb * kSubN + packed_col(lane, word, i);
    const uint32_t q = (r < k && c < n) ? (codes[static_cast<long long>(r) * n + c] & 0xFu) : 0u;
    packed |= q << (4 * i);
  }
  out[idx] = packed;
}

__global__ void permute_groups_kernel(const uint16_t* __restrict__ src, int g, int n, int n_pad,
                                      long long total, uint16_t* __restrict__ dst) {
  const long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int row = static_cast<int>(idx / n_pad);
  const int col = group_perm_col(static_cast<int>(idx % n_pad));
  dst[idx] = (row < g && col < n) ? src[static_cast<long long>(row) * n + col] : uint16_t(0);
}

constexpr int kThreads = 256;

}  // namespace

cudaError_t repack(const uint8_t* codes, int k, int n, int k_pad, int n_pad, uint32_t* out,
                   cudaStream_t stream) {
  if (k < 0 || n < 0 || k > k_pad || n > n_pad || k_pad % kTileK || n_pad % kTileN)
    return cudaErrorInvalidValue;
  const long long total = static_cast<long long>(k_pad / kSubK) * (n_pad / kSubN) * kSubWords;
  if (total == 0) return cudaSuccess;
  const long long blocks = (total + kThreads - 1) / kThreads;
  repack_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(codes, k, n, n_pad, total, out);
  return cudaGetLastError();
}

cudaError_t permute_groups(const uint16_t* src, int g, int n, int g_pad, int n_pad, uint16_t* dst,
                           cudaStream_t stream) {
  if (g < 0 || n < 0 || g > g_pad || n > n_pad || n_pad % kSubN) return cudaErrorInvalidValue;
  const long long total = static_cast<long long>(g_pad) * n_pad;
  if (total == 0) return cudaSuccess;
  const long long blocks = (total + kThreads - 1) / kThreads;
  permute_groups_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(src, g, n, n_pad, total, dst);
  return cudaGetLastError();
}

}  // namespace marlin
}  // namespace vmp
