// Machete CUTLASS tiles of 128 tokens or more, bf16 activations, u4b8 weights.
#include "../machete_gemm.cuh"

VMP_MACHETE_TILE(bf16, u4b8, 128x128)
VMP_MACHETE_TILE(bf16, u4b8, 256x128)
VMP_MACHETE_TILE(bf16, u4b8, 128x256)
VMP_MACHETE_TILE(bf16, u4b8, 128x128c2)
