// Machete CUTLASS tiles of 128 tokens or more, f16 activations, u4 weights.
#include "../machete_gemm.cuh"

VMP_MACHETE_TILE(f16, u4, 128x128)
VMP_MACHETE_TILE(f16, u4, 256x128)
VMP_MACHETE_TILE(f16, u4, 128x256)
VMP_MACHETE_TILE(f16, u4, 128x128c2)
