// Machete GEMM, activations bf16, weights u4: the frozen schedule set of machete.h.
#include "machete_gemm.cuh"

namespace vmp::machete {
const char* mm_bf16_u4(int schedule, const MMArgs& a, void* ws, size_t* ws_bytes, cudaStream_t stream) {
  return run_schedule<cutlass::bfloat16_t, cutlass::uint4b_t, true>(schedule, a, ws, ws_bytes, stream);
}
}  // namespace vmp::machete
