// Default schedule (vmp::machete_mm with schedule=None). The table and the H100
// measurements it came from: docs/machete_heuristic.md.
#include <algorithm>

#include "machete.h"
#include "machete_tile.h"

namespace vmp::machete {

// Schedule indices (machete.h's tables) by name.
constexpr int kT128x128 = tile_index("128x128");
constexpr int kT128x128c2 = tile_index("128x128c2");
constexpr int kT128x256 = tile_index("128x256");
constexpr int kT128x32 = tile_index("128x32");
constexpr int kT128x64 = tile_index("128x64");
constexpr int kT256x128 = tile_index("256x128");
constexpr int kT256x128w = tile_index("256x128w");
constexpr int kT256x32w = tile_index("256x32w");
constexpr int kT256x64w = tile_index("256x64w");
constexpr int kT64x16 = tile_index("64x16");
constexpr int kT64x8 = tile_index("64x8");
static_assert(std::max({kT128x128, kT128x128c2, kT128x256, kT128x32, kT128x64, kT256x128, kT256x128w, kT256x32w,
                        kT256x64w, kT64x16, kT64x8}) < kNumSchedules,
              "a schedule named here is missing from machete.h");

Schedule choose_schedule(int m, int n, int k, int sm_count) {
  const int64_t weights = int64_t(n) * k;
  const bool wide_n = n % 256 == 0;             // 256-row tiles and the 2x1 cluster need it
  const bool mid_w = wide_n && weights >= (int64_t(64) << 20);  // o_proj's 8192x8192 and above
  Schedule s;
  if (m <= 16) {  // the small-M mma.sync kernel: 64x8 up to 8 tokens, 64x16 up to 16
    s.tile = m <= 8 ? kT64x8 : kT64x16;
    return s;
  }
  if (m <= 32 && mid_w) {
    // 256x32w (machete_mid_m.cu): H200, one in-model run with the peers
    // (midm-h200-2026-12-04-inmodel-small): every Llama-70B layer faster than the CUTLASS picks
    // at 24 and 32 tokens (4 layers 193.7 / 200.3 against 210.1 / 217.5 us; o_proj 22.2
    // against 128x32_sk's 26.2 at 24). Not measured below o_proj's 64 Mi weights.
    s.tile = kT256x32w;
    return s;
  }
  if (m <= 64 && mid_w) {
    // 256x64w, our own wgmma mainloop (machete_mid_m.cu): H200, 64 tokens, every Llama-70B
    // layer faster than 128x64 (4 layers 239.0 vs 291.6 us, Humming 263.1); its K split is
    // its own (no suffix). Not measured below o_proj's 64 Mi weights: those keep 128x64.
    s.tile = kT256x64w;
    return s;
  }
  if (m > 64 && wide_n && weights > (int64_t(128) << 20) && (m <= 128 || (m > 256 && m <= 512 && n >= 32768))) {
    // 256x128w (machete_mid_m.cu): H200, one run with the peers (midm-h200-2026-12-03-v4):
    // gate_up 182.6 us at 128 tokens against the CUTLASS pick's 203.6, down 101.3 against
    // 103.2; gate_up 672.9 against 738.5 at 512 (down lost there, 344.3 against 324.8).
    // Slower on qkv and o_proj (<= 80 Mi).
    s.tile = kT256x128w;
    return s;
  }
  if (m > 128 && m <= 256 && wide_n && weights > (int64_t(128) << 20)) {
    // 128x256 (CUTLASS, 2x1 cluster): H200, in-model, one run (midm-h200-2026-12-04-large):
    // at 256 tokens gate_up 369.9 us against 256x128w's 403.1 and vLLM's Machete 382.8,
    // down 189.4 against 202.2 and 191.0.
    s.tile = kT128x256;
    return s;
  }
  if (m <= 32) {
    s.tile = kT128x32;
  } else if (m <= 64) {
    s.tile = kT128x64;
  } else if (m <= 128) {
    // 128x128c2: the CTA pair's multicast keeps 65..80 tokens as fast as 96..128
    // (128x128 alone: +15% at 65); Stream-K on every layer.
    if (wide_n) {
      s.tile = kT128x128c2;
      s.decomposition = kStreamK;
      return s;
    }
    s.tile = kT128x128;
  } else if (m <= 256) {
    s.tile = kT128x128;  // layers above 128 Mi took 128x256 above
  } else {
    // 128x256 (2x1 cluster) from o_proj's 64 Mi up: H200, in-model, 512 tokens
    // (midm-h200-2026-12-04-large): o_proj 102.5 us against 256x128's 107.1.
    s.tile = !wide_n ? kT128x128 : mid_w ? kT128x256 : kT256x128;
  }
  // Up to 128 tokens with fewer output tiles than SMs, CUTLASS's own decomposition
  // heuristic leaves SMs idle (qkv: 80 tiles on 132 SMs); forced Stream-K spreads the
  // K loop over every SM (-20% on qkv, neutral on 64-tile layers).
  const int tile_m = kTileTokens[s.tile];
  const int64_t tiles = int64_t(n / kTileN[s.tile]) * ((m + tile_m - 1) / tile_m);
  if (m <= 128 && tiles < sm_count) s.decomposition = kStreamK;
  if (m > 512) {
    // Raster along features, swizzle 4 (+f4): H200, in-model, one run with the peers
    // (raster-h200-2026-12-04): at 16384 tokens qkv 3939 us against CUTLASS's own order's
    // 4377, o 3213 against 3471, gate_up 22333 against 24415 (Humming 4164 / 3365 / 24826),
    // as the L2 model predicts (benchmarks/l2_model.py: DRAM reads ~10x fewer); 4096 tokens
    // -1..-3%, 1024 tokens within 1% but gate_up -3%.
    s.raster = kRasterFeatures;
    s.swizzle = 4;
  }
  return s;
}

}  // namespace vmp::machete
