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


def _fp16_pair(bits: torch.Tensor) -> torch.Tensor:
    """int64 32-bit words -> float64 [..., 2]: their low and high fp16 halves."""
    halves = torch.stack([bits & 0xFFFF, (bits >> 16) & 0xFFFF], dim=-1).to(torch.int16)
    return halves.view(torch.float16).to(torch.float64)


def _fl16(x: torch.Tensor) -> torch.Tensor:
    """Round to fp16 (one rounding, as HADD2 / HMUL2 / HFMA2 do), kept as float64."""
    return x.to(torch.float16).to(torch.float64)


def dequant_fp16_ref(words: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None,
                     hi16: bool) -> torch.Tensor:
    """The fp16 mid-M kernel's A registers of packed words (machete_mid_m.cu, dequant), as
    float64 [..., 4 registers, 2 halves]. Register r holds nibbles r and r + 4. s is the
    scale of the fragment's row (registers 0, 2) and of row + 8 (registers 1, 3), [..., 2];
    z the pre-multiplied z' = -s*z likewise, or None (u4b8: nibbles hold q - 8). hi16 takes
    registers 1 and 3 from bits 4..7 of each half (1024 + 16 q), so they hold 16x the weight
    (their z' scaled by 16 first); otherwise every register is shifted down to bits 0..3."""
    words = words.to(torch.int64) & 0xFFFFFFFF
    regs = []
    for r in range(4):
        hi = hi16 and r % 2 == 1
        src = words >> (8 if r >= 2 else 0) if hi16 else words >> (4 * r)
        mask, flip = (0x00F000F0, 0x00800080) if hi else (0x000F000F, 0x00080008)
        raw = (src & mask) ^ (0x64006400 ^ (0 if z is not None else flip))
        m = 16 if hi else 1
        v = _fl16(_fp16_pair(raw) - (1024 + (0 if z is not None else 8 * m)))
        sr = s[..., r % 2, None].to(torch.float64)
        if z is None:
            regs.append(_fl16(v * sr))
        else:
            zr = _fl16(z[..., r % 2, None].to(torch.float64) * m)
            regs.append(_fl16(v * sr + zr))
    return torch.stack(regs, dim=-2)
