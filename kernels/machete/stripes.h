// Host helper shared by the launch plans of our own Machete kernels (machete_small_m.cu,
// machete_mid_m.cu): the split of `units` of work into equal contiguous stripes, one per
// resident block. (Their device limits and shared-memory opt-in: ../device_limits.h.)
#pragma once

namespace vmp::machete {

// `units` over `slots` resident blocks: block b takes units [b stripe, min(units, (b+1) stripe)),
// and `grid` blocks have work.
struct Stripes {
  int stripe, grid;
};
inline Stripes split_stripes(long long units, long long slots) {
  const long long stripe = (units + slots - 1) / slots;
  return {static_cast<int>(stripe), static_cast<int>((units + stripe - 1) / stripe)};
}

}  // namespace vmp::machete
