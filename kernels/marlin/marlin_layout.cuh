// The Marlin-style weight layout: the ONE definition that the GEMM kernel
// (marlin_gemm.cu) and the GPU repack kernels (marlin_repack.cu) both use.
// The pure-PyTorch mirror for tests is vllm_machete_plugin/marlin_layout_ref.py.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define VMP_HD __host__ __device__ __forceinline__
#else
#define VMP_HD inline
#endif

namespace vmp {
namespace marlin {

// Block tile of the GEMM; K and N are zero-padded to multiples of these at repack.
constexpr int kTileN = 256;
constexpr int kTileK = 128;

// Packed weight: 16 (k) x 64 (n) sub-tiles of 4-bit codes, 512 bytes = 128 uint32
// words each, stored row-major over (K/16, N/64): sub-tile (kb, nb) starts at word
// (kb * (N/64) + nb) * 128. Inside a sub-tile, lane l of the consuming warp owns
// words 4l..4l+3 (one 16-byte load), and nibble i (bits 4i..4i+3) of word w holds
//   row k = 16 kb + packed_row(l, i),  col n = 64 nb + packed_col(l, w, i).
// With g = l / 4 and t = l % 4 these are the m16n8k16 B-fragment elements of lane l
// for n8-blocks 2w and 2w+1: nibbles (0,4) = rows (2t, 2t+1) of block 2w (register
// b0), (1,5) = rows (2t+8, 2t+9) of block 2w (b1), (2,6) and (3,7) the same for
// block 2w+1. So masking 0x000F000F after shifts of 0/4/8/12 (bf16) or masking
// 0x000F000F / 0x00F000F0 after shifts of 0/8 (fp16) yields each register pair.
constexpr int kSubK = 16;
constexpr int kSubN = 64;
constexpr int kSubWords = 128;

VMP_HD int packed_row(int lane, int nib) { return 2 * (lane & 3) + (nib >> 2) + 8 * (nib & 1); }
VMP_HD int packed_col(int lane, int word, int nib) {
  return 8 * (2 * word + ((nib >> 1) & 1)) + (lane >> 2);
}

// Group rows (scales and zero points, [G, N] in the activation dtype): inside each
// 64-column block, position p holds column (p % 8) * 8 + p / 8, so lane l reads
// the 8 values of its columns 8j + l/4 (j = 0..7) with one 16-byte load at p = 8 (l/4).
// The map is its own inverse.
VMP_HD int group_perm_col(int p) { return (p & ~63) | ((p & 7) << 3) | ((p >> 3) & 7); }

}  // namespace marlin
}  // namespace vmp
