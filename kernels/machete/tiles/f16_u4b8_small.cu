// Machete CUTLASS tiles of up to 64 tokens, f16 activations, u4b8 weights.
#include "../machete_gemm.cuh"

VMP_MACHETE_TILE(f16, u4b8, 128x16)
VMP_MACHETE_TILE(f16, u4b8, 128x32)
VMP_MACHETE_TILE(f16, u4b8, 128x64)
VMP_MACHETE_TILE(f16, u4b8, 256x32)
