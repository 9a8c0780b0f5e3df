// Machete GEMM, activations f16, weights u4b8: the frozen schedule set of machete.h.
#include "machete_gemm.cuh"

namespace vmp::machete {
const char* mm_f16_u4b8(int schedule, const MMArgs& a, void* ws, size_t* ws_bytes, cudaStream_t stream) {
  return run_schedule<cutlass::half_t, cutlass::int4b_t, false>(schedule, a, ws, ws_bytes, stream);
}
}  // namespace vmp::machete
