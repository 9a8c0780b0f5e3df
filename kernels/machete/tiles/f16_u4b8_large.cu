// Machete CUTLASS tiles of 128 tokens or more, f16 activations, u4b8 weights.
#include "../machete_gemm.cuh"

VMP_MACHETE_TILE(f16, u4b8, 128x128)
VMP_MACHETE_TILE(f16, u4b8, 256x128)
VMP_MACHETE_TILE(f16, u4b8, 128x256)
VMP_MACHETE_TILE(f16, u4b8, 128x128c2)
