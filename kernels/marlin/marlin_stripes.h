// Which block of a Marlin GEMM does which work: the ONE definition that the kernel
// (marlin_gemm.cu), its planner and the host-only op vmp::marlin_stripe_map (CPU tests)
// use.
//
// A unit is one k-tile of one slice; a slice is all k_tiles k-tiles of one (n-tile, M
// chunk) pair. Units are numbered with the k-tile fastest, slice s = u / k_tiles, and the
// slices in one of two orders:
//  * n-major (chunk_major = false): s = nt * chunks + c. One span of all units, cut into
//    `groups` = grid stripes of `per` units: block b owns [b per, min((b+1) per, total)).
//  * chunk-major (chunk_major = true): s = c * n_tiles + nt, and every chunk is a span of
//    its own, cut into `groups` stripes: block b = c * groups + g owns units
//    [c span + g per, c span + min((g+1) per, span)). All chunks' blocks then walk the same
//    (n-tile, k-tile) positions in step, so each weight tile is fetched from DRAM about once
//    and read from L2 by the other chunks (an LRU model of the H200's 50 MB L2 gives gate_up
//    at 256 tokens 228 MB of DRAM reads against 900 MB n-major, docs/profile_h200.md).
// Either way a span is a whole number of slices, a stripe lies inside one span, and a slice
// is split over the consecutive blocks first_block(s)..last_block(s); a block has at most
// two split slices, its first and its last.
#pragma once

#include "marlin_layout.cuh"  // VMP_HD

namespace vmp {
namespace marlin {

struct StripeMap {
  int chunks, n_tiles, k_tiles;
  bool chunk_major;
  int groups;  // stripes per span
  int per;     // units per stripe

  VMP_HD int span() const { return chunk_major ? n_tiles * k_tiles : chunks * n_tiles * k_tiles; }
  VMP_HD int grid() const { return (chunk_major ? chunks : 1) * groups; }
  VMP_HD int begin(int b) const { return b / groups * span() + min_(b % groups * per, span()); }
  VMP_HD int end(int b) const { return b / groups * span() + min_((b % groups + 1) * per, span()); }
  VMP_HD int chunk_of(int slice) const { return chunk_major ? slice / n_tiles : slice % chunks; }
  VMP_HD int n_tile_of(int slice) const { return chunk_major ? slice % n_tiles : slice / chunks; }
  VMP_HD int slice_of(int c, int nt) const { return chunk_major ? c * n_tiles + nt : nt * chunks + c; }
  // (c, nt) := the slice after it in this order.
  VMP_HD void next(int& c, int& nt) const {
    if (chunk_major ? ++nt == n_tiles : ++c == chunks) {
      if (chunk_major) nt = 0, ++c;
      else c = 0, ++nt;
    }
  }
  // Blocks whose stripes hold units of slice s (consecutive).
  VMP_HD int first_block(int slice) const { return block_of(slice * k_tiles); }
  VMP_HD int last_block(int slice) const { return block_of(slice * k_tiles + k_tiles - 1); }

  // The stripes the planner gives `slots` resident blocks (slots >= 1) in `order`: -1 the
  // default rule, 0 n-major, 1 chunk-major wherever it can be (2..slots chunks). The default
  // is chunk-major when there are 2..slots chunks and at most slots / 16 of the slots would
  // idle: H200, each column alone for 1.5 s (kernels-h200-2026-12-04-marlin-order), the 4
  // Llama-70B layers 0.98 / 0.95 / 0.95 / 0.95x vLLM's Marlin at 128 / 256 / 512 / 1024
  // tokens against n-major's 1.00 / 0.98 / 1.02 / 1.02, gate_up at 1024 tokens clocking
  // 1830 MHz under the 700 W cap against n-major's 1665 (the L2 model's DRAM reads: 240
  // against 3,600 MB).
  static VMP_HD StripeMap plan(int chunks, int n_tiles, int k_tiles, int slots, int order) {
    const bool fits = chunks >= 2 && chunks <= slots;
    const bool chunk_major = order == 1 ? fits : order == -1 && fits && slots % chunks * 16 <= slots;
    return make(chunks, n_tiles, k_tiles, slots, chunk_major);
  }

  // The stripes of at most `slots` blocks (slots >= 1; chunk-major needs chunks <= slots and
  // gives every chunk slots / chunks of them, so slots % chunks stay idle).
  static VMP_HD StripeMap make(int chunks, int n_tiles, int k_tiles, int slots, bool chunk_major) {
    StripeMap s{chunks, n_tiles, k_tiles, chunk_major, 1, 1};
    const int want = chunk_major ? slots / chunks : slots;
    s.per = (s.span() + want - 1) / want;
    s.groups = (s.span() + s.per - 1) / s.per;
    return s;
  }

 private:
  VMP_HD int block_of(int u) const { return u / span() * groups + u % span() / per; }
  static VMP_HD int min_(int a, int b) { return a < b ? a : b; }
};

}  // namespace marlin
}  // namespace vmp
