"""Pure-PyTorch mirror of the Marlin weight layout (test oracle only).

The layout is defined once, in kernels/marlin/marlin_layout.cuh; the GPU ops
vmp::marlin_repack and vmp::marlin_permute_groups implement it. This file restates
the same index formulas so tests can check the GPU repack bit for bit:

  packed word (kb, nb, lane, w) of the [K_pad/16, 2*N_pad] int32 tensor, at row kb,
  column nb*128 + lane*4 + w, holds in nibble i the code at
    k = 16 kb + 2 (lane % 4) + (i >> 2) + 8 (i & 1)
    n = 64 nb + 8 (2 w + ((i >> 1) & 1)) + lane // 4
  group rows [G_pad, N_pad]: position p holds column (p & ~63) | (p % 8) * 8 | (p // 8) % 8.
"""
from __future__ import annotations

import torch

TILE_K = 128  # K and N are zero-padded to multiples of these (kTileK, kTileN)
TILE_N = 256


def padded_kn(k: int, n: int) -> tuple[int, int]:
    return -(-k // TILE_K) * TILE_K, -(-n // TILE_N) * TILE_N


def _source_index(k_pad: int, n_pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) int64 [K_pad/16, N_pad/64, 32, 4, 8]: source of each nibble."""
    lane = torch.arange(32, device=device).view(32, 1, 1)
    word = torch.arange(4, device=device).view(1, 4, 1)
    nib = torch.arange(8, device=device).view(1, 1, 8)
    row = (2 * (lane % 4) + (nib >> 2) + 8 * (nib & 1)).expand(32, 4, 8)
    col = 8 * (2 * word + ((nib >> 1) & 1)) + lane // 4
    kb = torch.arange(k_pad // 16, device=device).view(-1, 1, 1, 1, 1)
    nb = torch.arange(n_pad // 64, device=device).view(1, -1, 1, 1, 1)
    rows = (kb * 16 + row).expand(-1, n_pad // 64, -1, -1, -1)
    cols = (nb * 64 + col).expand(k_pad // 16, -1, -1, -1, -1)
    return rows, cols


def repack_ref(codes: torch.Tensor, k_pad: int, n_pad: int) -> torch.Tensor:
    """uint8 codes [K, N] -> int32 [K_pad/16, 2*N_pad]; padding holds code 0."""
    k, n = codes.shape
    q = torch.zeros(k_pad, n_pad, dtype=torch.int64, device=codes.device)
    q[:k, :n] = codes.to(torch.int64) & 0xF
    rows, cols = _source_index(k_pad, n_pad, codes.device)
    shifts = 4 * torch.arange(8, device=codes.device)
    words = (q[rows, cols] << shifts).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32).reshape(k_pad // 16, 2 * n_pad)


def unpack_ref(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of repack_ref: int32 [K_pad/16, 2*N_pad] -> uint8 codes [K_pad, N_pad]."""
    k_pad, n_pad = packed.shape[0] * 16, packed.shape[1] // 2
    words = packed.to(torch.int64).reshape(k_pad // 16, n_pad // 64, 32, 4, 1) & 0xFFFFFFFF
    vals = (words >> (4 * torch.arange(8, device=packed.device))) & 0xF
    rows, cols = _source_index(k_pad, n_pad, packed.device)
    out = torch.zeros(k_pad, n_pad, dtype=torch.uint8, device=packed.device)
    out[rows, cols] = vals.to(torch.uint8)
    return out


def group_perm(n_pad: int, device=None) -> torch.Tensor:
    """int64 [N_pad]: the source column of each stored position."""
    p = torch.arange(n_pad, device=device)
    return (p & ~63) | ((p & 7) << 3) | ((p >> 3) & 7)


def permute_groups_ref(src: torch.Tensor, g_pad: int, n_pad: int) -> torch.Tensor:
    """[G, N] -> [G_pad, N_pad] permuted group rows, zero padding."""
    g, n = src.shape
    full = torch.zeros(g_pad, n_pad, dtype=src.dtype, device=src.device)
    full[:g, :n] = src
    return full[:, group_perm(n_pad, src.device)].contiguous()
