// Default schedule (vmp::machete_mm with schedule=None). The table and the H100
// measurements it came from: docs/machete_heuristic.md.
#include "machete.h"

namespace vmp::machete {

Schedule choose_schedule(int m, int n, int k, int sm_count) {
  const int64_t weights = int64_t(n) * k;
  const bool wide_n = n % 256 == 0;             // 256-row tiles and the 2x1 cluster need it
  const bool big = weights > (int64_t(64) << 20);  // above o_proj's 8192x8192
  Schedule s;
  if (m <= 16) {  // the small-M mma.sync kernel: 64x8 up to 8 tokens, 64x16 up to 16
    s.tile = m <= 8 ? kNumCutlassTiles : kNumCutlassTiles + 1;
    return s;
  }
  if (m <= 32 && wide_n && big) {  // 256x32, always Stream-K (gate_up's 224 tiles: -9% vs auto)
    s.tile = 5;
    s.decomposition = kStreamK;
    return s;
  }
  if (m > 32 && m <= 64 && wide_n && weights >= (int64_t(64) << 20)) {
    // 256x64w, our own wgmma mainloop (machete_mid_m.cu): H200, 64 tokens, every Llama-70B
    // layer faster than 128x64 (4 layers 239.0 vs 291.6 us, Humming 263.1); its K split is
    // its own (no suffix). Not measured below o_proj's 64 Mi weights: those keep 128x64.
    s.tile = 11;
    return s;
  }
  if (m <= 32) {
    s.tile = 1;  // 128x32
  } else if (m <= 64) {
    s.tile = 2;  // 128x64
  } else if (m <= 128) {
    // 128x128c2: the CTA pair's multicast keeps 65..80 tokens as fast as 96..128
    // (128x128 alone: +15% at 65); Stream-K on every layer.
    if (wide_n) {
      s.tile = 7;
      s.decomposition = kStreamK;
      return s;
    }
    s.tile = 3;  // 128x128
  } else if (m <= 256) {
    s.tile = (wide_n && weights > (int64_t(128) << 20)) ? 4 : 3;  // 256x128 only on large layers
  } else {
    s.tile = !wide_n ? 3 : big ? 6 : 4;  // 128x256 (2x1 cluster) on the big layers, else 256x128
  }
  // Up to 128 tokens with fewer output tiles than SMs, CUTLASS's own decomposition
  // heuristic leaves SMs idle (qkv: 80 tiles on 132 SMs); forced Stream-K spreads the
  // K loop over every SM (-20% on qkv, neutral on 64-tile layers).
  const int tile_m = kTileTokens[s.tile];
  const int64_t tiles = int64_t(n / kTileN[s.tile]) * ((m + tile_m - 1) / tile_m);
  if (m <= 128 && tiles < sm_count) s.decomposition = kStreamK;
  return s;
}

}  // namespace vmp::machete
