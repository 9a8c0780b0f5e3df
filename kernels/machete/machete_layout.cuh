// The Machete prepacked weight layout, defined once. The GEMM mainloop hands this
// layout to CUTLASS as the gmem layout of its register-sourced wgmma operand (the
// weight, transposed problem Y^T = W^T X^T), and the GPU prepack kernel writes codes
// through the very same layout, so the two cannot disagree.
//
// Contract (logical coordinates (n, k, l) of the weight W^T [N, K]):
//  * One atom = one warp's share of the wgmma A fragments over one 64-deep K tile:
//    16 rows (n) x 64 (k) = 1024 4-bit codes = 512 contiguous bytes. Inside it, the
//    8 values thread t holds for one m64n?k16 instruction form one 32-bit word
//    (word t + 32*kb for k-block kb), so the mainloop's smem->register copy of a
//    k-block is one conflict-free 32-bit LDS per thread.
//  * Inside that word, nibble slot j holds fragment value [0,2,4,6,1,3,5,7][j], the
//    order CUTLASS's LayoutAwareConvert turns into LOP3 upconversion (the register
//    layout of the 8 values coalesces to (2,4):(4,1)).
//  * Atoms tile (N, K) column-major: N/16 atoms of one K tile are contiguous, so a
//    CTA tile of 128 x 64 is one 4 KB chunk of global memory.
//  Requires N % 64 == 0 (a warpgroup covers 64 rows) and K % 64 == 0.
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>

namespace vmp::machete {

// (n, k) -> code offset inside one atom. Value v = v0 + 2*v1 + 4*v2 of lane
// t = t0 + 4*t1 (wgmma A fragment: n = t1 + 8*v1, k = 2*t0 + v0 + 8*v2 + 16*kb)
// lives at 8*t + 256*kb + slot(v), slot(v) = 4*v0 + v1 + 2*v2.
using PrepackAtom = cute::Layout<
    cute::Shape<cute::Shape<cute::_8, cute::_2>, cute::Shape<cute::_2, cute::_4, cute::_2, cute::_4>>,
    cute::Stride<cute::Stride<cute::_32, cute::_1>, cute::Stride<cute::_4, cute::_8, cute::_2, cute::_256>>>;

constexpr int kAtomN = 16;
constexpr int kAtomK = 64;
constexpr int kPrepackAlignN = 64;  // rows of one warpgroup's wgmma
constexpr int kPrepackAlignK = 64;  // one K tile

// The wgmma A-operand thread/value layout the mainloop consumes (64 x 16 per warpgroup,
// column-major (m, k) offsets), for 16-bit MMA types.
using MmaALayout = cute::GMMA::ALayout_64x16;

// Type of the full (N, K, L) layout; CUTLASS receives it in place of a stride.
using PrepackedLayout = decltype(cute::tile_to_shape(PrepackAtom{}, cute::Shape<int, int, int>{}));

CUTE_HOST_DEVICE PrepackedLayout make_prepacked_layout(int n, int k, int l = 1) {
  return cute::tile_to_shape(PrepackAtom{}, cute::make_shape(n, k, l));
}

// Compile-time proof that the atom is the wgmma fragment order: for the first warp's
// lanes t and values v, MmaALayout(t, v) -> (m, k) lands at 8*t + slot(v) in the atom.
constexpr bool atom_matches_mma() {
  for (int t = 0; t < 32; ++t) {
    for (int v = 0; v < 8; ++v) {
      const int mk = MmaALayout{}(t, v);
      const int m = mk % 64, k = mk / 64;
      const int slot = 4 * (v % 2) + (v / 2) % 2 + 2 * (v / 4);
      if (m >= kAtomN || PrepackAtom{}(m, k) != 8 * t + slot) return false;
      if (PrepackAtom{}(m, k + 48) != 8 * t + slot + 768) return false;
    }
  }
  return true;
}
static_assert(cute::cosize(PrepackAtom{}) == kAtomN * kAtomK, "atom must be a bijection onto 1024 codes");
static_assert(atom_matches_mma(), "prepack atom disagrees with the wgmma A fragment layout");

}  // namespace vmp::machete
