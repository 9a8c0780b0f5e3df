"""Pure-PyTorch reference of the Machete prepack (test oracle for vmp::machete_prepack).

Written from the layout contract in kernels/machete/machete_layout.cuh, independently
of the CuTe code: W^T [N, K] is cut into atoms of 16 rows x 64 k (one warp's wgmma A
fragments over one K tile), atoms tile (N, K) column-major (N fastest), and inside an
atom row n = t1 + 8*v1, column k = 2*t0 + v0 + 8*v2 + 16*kb of lane t = t0 + 4*t1 is
stored at code offset 256*kb + 8*t + slot(v), slot = 4*v0 + v1 + 2*v2, i.e. nibble slot
j of a word holds fragment value [0,2,4,6,1,3,5,7][j]. Code offset o is nibble o % 8 of
32-bit word o // 8.
"""
from __future__ import annotations

import torch

ATOM_N = 16
ATOM_K = 64


def prepacked_offsets(k: int, n: int, device=None) -> torch.Tensor:
    """int64 [K, N]: code offset of logical element (k, n) of the [K, N] codes."""
    if k % ATOM_K or n % ATOM_N:
        raise ValueError(f"prepack needs K % {ATOM_K} == 0 and N % {ATOM_N} == 0, got K={k} N={n}")
    kk = torch.arange(k, device=device, dtype=torch.int64).view(k, 1)
    nn = torch.arange(n, device=device, dtype=torch.int64).view(1, n)
    an, m = nn // ATOM_N, nn % ATOM_N
    ak, r = kk // ATOM_K, kk % ATOM_K
    t1, v1 = m % 8, m // 8
    kb, r = r // 16, r % 16
    v2, r = r // 8, r % 8
    t0, v0 = r // 2, r % 2
    lane = t0 + 4 * t1
    atom = ak * (n // ATOM_N) + an
    return atom * (ATOM_N * ATOM_K) + 256 * kb + 8 * lane + 4 * v0 + v1 + 2 * v2


def prepack_ref(codes: torch.Tensor, has_zeros: bool) -> torch.Tensor:
    """uint8 codes [K, N] (0..15) -> int32 [K/8, N] words, bit-identical to
    vmp::machete_prepack(codes, has_zeros).view(torch.int32) (the op returns uint32 for
    has_zeros). Without zeros (u4b8) the stored nibble is q - 8 in two's complement (q ^ 8)."""
    k, n = codes.shape
    q = codes.to(torch.int64) & 0xF
    if not has_zeros:
        q = q ^ 8
    off = prepacked_offsets(k, n, codes.device)
    words = torch.zeros(k * n // 8, dtype=torch.int64, device=codes.device)
    words.index_add_(0, (off // 8).flatten(), (q << (4 * (off % 8))).flatten())
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32).view(k // 8, n)
