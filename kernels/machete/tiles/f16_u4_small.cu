// Machete CUTLASS tiles of up to 64 tokens, f16 activations, u4 weights.
#include "../machete_gemm.cuh"

VMP_MACHETE_TILE(f16, u4, 128x16)
VMP_MACHETE_TILE(f16, u4, 128x32)
VMP_MACHETE_TILE(f16, u4, 128x64)
VMP_MACHETE_TILE(f16, u4, 256x32)
