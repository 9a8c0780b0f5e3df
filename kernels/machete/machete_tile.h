// One CUTLASS tile of one type configuration: the function a tile unit defines
// (kernels/machete/tiles/<act>_<wtype>_<group>.cu, through VMP_MACHETE_TILE in
// machete_gemm.cuh) and machete_dispatch.cpp tabulates. Contract as MMFn in machete.h,
// for the one schedule index kTile < kNumCutlassTiles.
#pragma once

#include "machete.h"

namespace vmp::machete {

template <ActType kAct, bool kZeros, int kTile>
const char* mm_tile(const MMArgs& args, void* workspace, size_t* workspace_bytes, cudaStream_t stream);

// The spellings of a type configuration in tile file names: activation dtype, and the
// weight type (u4: codes q with zero points; u4b8: codes q-8, no zero points).
namespace tile_types {
constexpr ActType f16 = kF16, bf16 = kBF16;
constexpr bool u4 = true, u4b8 = false;
}  // namespace tile_types

constexpr bool same_name(const char* a, const char* b) {
  while (*a != '\0' && *a == *b) ++a, ++b;
  return *a == *b;
}

// Index of a tile name in kScheduleNames; kNumSchedules when it is none of them.
constexpr int tile_index(const char* name) {
  int i = 0;
  while (i < kNumSchedules && !same_name(kScheduleNames[i], name)) ++i;
  return i;
}

}  // namespace vmp::machete
