// The bf16 Marlin kernels (marlin_kernel.cuh), one compile unit per dtype.
#include "marlin_kernel.cuh"

namespace vmp {
namespace marlin {

const void* kernel_for_bf16(int mb, int stages, bool zeros, bool swap) {
  return kernel_for_type<__nv_bfloat16>(mb, stages, zeros, swap);
}

}  // namespace marlin
}  // namespace vmp
