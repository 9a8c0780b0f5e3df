// The schedule table of the CUTLASS tiles: per type configuration, schedule index ->
// the mm_tile its tile unit (kernels/machete/tiles/) defines. A unit missing from the
// build leaves its mm_tile undefined, so _machete_C fails to import;
// tests/test_machete_tiles.py checks the tile files against machete.h without a compiler.
#include <utility>

#include "machete_tile.h"

namespace vmp::machete {
namespace {

using TileFn = const char* (*)(const MMArgs&, void*, size_t*, cudaStream_t);

template <ActType kAct, bool kZeros, int... I>
const char* run_tile(int schedule, const MMArgs& a, void* ws, size_t* ws_bytes, cudaStream_t stream,
                     std::integer_sequence<int, I...>) {
  static constexpr TileFn kTiles[] = {&mm_tile<kAct, kZeros, I>...};
  if (schedule < 0 || schedule >= kNumCutlassTiles) return "unknown schedule index";
  return kTiles[schedule](a, ws, ws_bytes, stream);
}

template <ActType kAct, bool kZeros>
const char* run_schedule(int schedule, const MMArgs& a, void* ws, size_t* ws_bytes, cudaStream_t stream) {
  return run_tile<kAct, kZeros>(schedule, a, ws, ws_bytes, stream,
                                std::make_integer_sequence<int, kNumCutlassTiles>{});
}

}  // namespace

MMFn mm_fn(ActType act, bool has_zeros) {
  if (act == kF16) return has_zeros ? &run_schedule<kF16, true> : &run_schedule<kF16, false>;
  return has_zeros ? &run_schedule<kBF16, true> : &run_schedule<kBF16, false>;
}

}  // namespace vmp::machete
