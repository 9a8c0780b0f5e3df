// The arguments every GEMM op takes for the L2 prefetch of the next layer's weight (next_w,
// next_scales, next_zeros, prefetch_bytes; l2_prefetch.cuh), checked the same way by each op:
// they come together, a next layer on another device drops the hint, the group rows are
// contiguous 2-byte [groups, N] tensors for the weight, and all start 16-byte aligned. Each
// op checks its own weight layout and says which K and N that gives.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

#include "check.h"

namespace vmp {

// False when there is no hint to give: none asked for, or the next layer lives on another
// device (an offloaded one).
inline bool next_given(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& next_w,
                       const std::optional<at::Tensor>& next_scales, const std::optional<at::Tensor>& next_zeros,
                       int64_t bytes) {
  VMP_CHECK(bytes >= 0, op, ": prefetch_bytes must be >= 0, got ", bytes);
  VMP_CHECK(next_w.has_value() == next_scales.has_value() && (next_w || !next_zeros), op,
            ": next_w and next_scales (and next_zeros, if the next layer has zero points) come together: the next "
            "layer's own w, scales and zeros; got ", next_w ? "" : "no ", "next_w, ", next_scales ? "" : "no ",
            "next_scales, ", next_zeros ? "" : "no ", "next_zeros");
  if (!next_w) return false;
  for (const std::optional<at::Tensor>* t : {&next_w, &next_scales, &next_zeros})
    if (*t && (*t)->device() != x.device()) return false;
  return true;
}

// The next layer's group rows for its weight of K = k, N = n (k_name, n_name: what the op's
// weight calls them, e.g. "K_pad", "N_pad"), and the alignment of all three tensors.
inline void check_next_groups(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& next_w,
                              const std::optional<at::Tensor>& next_scales,
                              const std::optional<at::Tensor>& next_zeros, int64_t k, int64_t n,
                              const char* k_name, const char* n_name) {
  for (const std::optional<at::Tensor>* t : {&next_scales, &next_zeros}) {
    if (!*t) continue;
    const at::Tensor& g = **t;
    VMP_CHECK(g.dim() == 2 && g.size(1) == n && g.size(0) >= 1 && k % g.size(0) == 0 &&
                  g.sizes() == next_scales->sizes() && g.is_contiguous() && g.element_size() == 2 &&
                  g.device() == x.device(), op, ": ", t == &next_scales ? "next_scales" : "next_zeros",
              " must be the next layer's contiguous 2-byte [groups, ", n_name, "] tensor for its weight of ", k_name,
              "=", k, ", ", n_name, "=", n, " on ", x.device(), ", got ", g.scalar_type(), " ", g.sizes(), " on ",
              g.device());
  }
  for (const std::optional<at::Tensor>* t : {&next_w, &next_scales, &next_zeros})
    VMP_CHECK(!*t || reinterpret_cast<uintptr_t>((*t)->data_ptr()) % 16 == 0, op,
              ": the next layer's tensors must start 16-byte aligned (the L2 prefetch reads them in 16-byte units); "
              "fix: pass the prepared tensors themselves, not offset views");
}

// For the host-only listing ops (tests): a NextWeight's `zeros` that only says "has zero
// points" (the listing reads no tensor).
inline const void* zeros_marker(bool zeros) {
  static const char kMarker = 0;
  return zeros ? &kMarker : nullptr;
}

}  // namespace vmp
