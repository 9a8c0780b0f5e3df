// GPU prepack of uint8 codes [K, N] into the Machete layout (machete_layout.cuh). The
// traversal follows the wgmma A fragment (MmaALayout) and every destination comes from
// PrepackedLayout, the layout the mainloop reads with, so the nibbles one lane reads
// as one 32-bit word are built and stored as one word.
#include "machete.h"
#include "machete_layout.cuh"

namespace vmp::machete {
namespace {

// One thread per (16-row block, 16-deep k-block, lane): 8 codes -> 1 word.
__global__ void prepack_kernel(const uint8_t* __restrict__ codes, int k, int n, bool to_signed,
                               uint32_t* __restrict__ out) {
  const int64_t gid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int blocks_n = n / kAtomN;
  const int64_t cells = int64_t(blocks_n) * (k / 16);
  if (gid >= cells * 32) return;
  const int lane = int(gid % 32);
  const int64_t cell = gid / 32;
  const int n0 = int(cell % blocks_n) * kAtomN;
  const int k0 = int(cell / blocks_n) * 16;
  const PrepackedLayout layout = make_prepacked_layout(n, k, 1);
  uint32_t word = 0;
  int64_t word_idx = 0;
  CUTE_UNROLL
  for (int v = 0; v < 8; ++v) {
    const int mk = MmaALayout{}(lane, v);  // lane < 32: rows 0..15 of the warpgroup tile
    const int nn = n0 + mk % 64, kk = k0 + mk / 64;
    uint32_t q = codes[int64_t(kk) * n + nn] & 0xF;
    if (to_signed) q ^= 8;  // q - 8 as a two's-complement nibble
    const int64_t off = layout(nn, kk, 0);
    word |= q << (4 * (off % 8));
    word_idx = off / 8;
  }
  out[word_idx] = word;
}

}  // namespace

cudaError_t prepack(const uint8_t* codes, int k, int n, bool to_signed, uint32_t* out, cudaStream_t stream) {
  const int64_t threads = int64_t(n / kAtomN) * (k / 16) * 32;
  if (threads == 0) return cudaSuccess;
  constexpr int kBlock = 256;
  prepack_kernel<<<unsigned((threads + kBlock - 1) / kBlock), kBlock, 0, stream>>>(codes, k, n, to_signed, out);
  return cudaGetLastError();
}

}  // namespace vmp::machete
