// The f16 Marlin kernels (marlin_kernel.cuh), one compile unit per dtype.
#include "marlin_kernel.cuh"

namespace vmp {
namespace marlin {

const void* kernel_for_f16(int mb, int stages, bool zeros, bool swap) {
  return kernel_for_type<half>(mb, stages, zeros, swap);
}

}  // namespace marlin
}  // namespace vmp
