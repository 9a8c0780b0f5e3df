"""CanonicalW4: the one format-independent form of a 4-bit weight.

Every checkpoint loader produces it; every backend consumes it (3 loaders + N
backends, never 3 x N paths). It is also what the reference backend computes from.

Contract (K = in_features of this partition, N = out_features of this partition):
  codes    uint8 [K, N], values 0..15
  scales   fp16/bf16 [G, N], G = number of groups (K // group_size, 1 for channelwise)
  zeros    uint8 [G, N] values 0..15, or None for symmetric codes (zero point 8)
  group_size  rows per group along K; channelwise is stored as group_size == K
  g_idx    int32 [K] group of each row (act-order), or None when row k is in
           group k // group_size
  dequant(W)[k, n] = (codes[k, n] - z[g(k), n]) * scales[g(k), n]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

SYMMETRIC_ZERO = 8
PACK_FACTOR = 8  # 4-bit values per int32


@dataclass
class CanonicalW4:
    codes: torch.Tensor
    scales: torch.Tensor
    zeros: Optional[torch.Tensor]
    group_size: int
    g_idx: Optional[torch.Tensor] = None

    @property
    def k(self) -> int:
        return self.codes.shape[0]

    @property
    def n(self) -> int:
        return self.codes.shape[1]

    @property
    def num_groups(self) -> int:
        return self.scales.shape[0]

    @property
    def symmetric(self) -> bool:
        return self.zeros is None

    def group_of_rows(self) -> torch.Tensor:
        """int64 [K]: the group index of every row."""
        if self.g_idx is not None:
            return self.g_idx.to(torch.int64)
        return torch.arange(self.k, device=self.codes.device) // self.group_size

    def validate(self, where: str = "weight") -> "CanonicalW4":
        """Check the contract above; raise ValueError naming `where` on violation."""
        k, n = self.codes.shape
        if self.codes.dtype != torch.uint8:
            raise ValueError(f"{where}: codes must be uint8 [K, N], got {self.codes.dtype}")
        # With g_idx, K of a row-parallel partition need not be a multiple of group_size
        # (act-order keeps the full group table; act_order.sort_by_group checks the split).
        if self.group_size <= 0 or (self.g_idx is None and k % self.group_size != 0):
            raise ValueError(f"{where}: group size {self.group_size} does not divide K={k}")
        g = k // self.group_size if self.g_idx is None else self.scales.shape[0]
        if tuple(self.scales.shape) != (g, n):
            raise ValueError(f"{where}: scales shape {tuple(self.scales.shape)}, expected {(g, n)}")
        if self.scales.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"{where}: scales dtype {self.scales.dtype}, expected float16 or bfloat16")
        if self.zeros is not None and tuple(self.zeros.shape) != tuple(self.scales.shape):
            raise ValueError(f"{where}: zeros shape {tuple(self.zeros.shape)}, expected {tuple(self.scales.shape)}")
        if self.g_idx is not None and tuple(self.g_idx.shape) != (k,):
            raise ValueError(f"{where}: g_idx shape {tuple(self.g_idx.shape)}, expected ({k},)")
        return self


def dequantize(w: CanonicalW4, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Reference dequantization: [K, N] in `dtype` (computed in fp32)."""
    groups = w.group_of_rows()
    s = w.scales.float()[groups]
    z = (w.zeros.float()[groups] if w.zeros is not None
         else torch.full_like(s, float(SYMMETRIC_ZERO)))
    return ((w.codes.float() - z) * s).to(dtype)


# ---- 4-bit bit packing, shared by every checkpoint format -------------------
# `pack_int4(x, dim)` packs 8 consecutive values along `dim` into one int32, value j
# of a word in bits [4j, 4j+4) (plain little-endian order). `order` permutes
# which logical element goes to nibble slot j (AWQ uses [0,2,4,6,1,3,5,7]).

def pack_int4(values: torch.Tensor, dim: int, order: Optional[list[int]] = None) -> torch.Tensor:
    # One pass per nibble slot (8 strided slices), so the peak extra memory is one int64
    # word per 8 values: this runs on the GPU at load time for 70B-size layers.
    v = values.movedim(dim, -1)
    if v.shape[-1] % PACK_FACTOR:
        raise ValueError(f"cannot pack {v.shape[-1]} values along dim {dim}: not a multiple of 8")
    order = order if order is not None else list(range(PACK_FACTOR))
    word = torch.zeros(*v.shape[:-1], v.shape[-1] // PACK_FACTOR, dtype=torch.int64, device=v.device)
    for slot, logical in enumerate(order):
        word |= (v[..., logical::PACK_FACTOR].to(torch.int64) & 0xF) << (4 * slot)
    word = torch.where(word >= 2**31, word - 2**32, word)  # reinterpret as int32
    return word.to(torch.int32).movedim(-1, dim).contiguous()


def unpack_int4(packed: torch.Tensor, dim: int, order: Optional[list[int]] = None) -> torch.Tensor:
    """Inverse of pack_int4: uint8 values, `dim` grows 8x. The 8 values of a word are written
    as a new axis right after `dim` and merged into it, so the result is built contiguous
    (no transposing copy of the [K, N] bytes: that copy dominated GPTQ's unpack). The words
    are read as their 4 little-endian bytes, nibble slot s being byte s // 2's low (even s)
    or high (odd s) half: one uint8 op per slot, reading bytes and writing the output in
    place, where int32 shifts and masks moved about 4x the bytes (this runs on the GPU at
    load time, once per 70B-size layer)."""
    dim = dim % packed.dim()
    w = packed.to(torch.int32).contiguous()
    order = order if order is not None else list(range(PACK_FACTOR))
    shape = list(w.shape)
    byte = w.reshape(-1).view(torch.uint8).view(shape + [4])  # byte b of a word: nibble slots 2b, 2b + 1
    out = torch.empty(shape[:dim + 1] + [PACK_FACTOR] + shape[dim + 1:], dtype=torch.uint8, device=w.device)
    for slot, logical in enumerate(order):
        src, dst = byte[..., slot // 2], out.select(dim + 1, logical)
        if slot % 2:
            torch.bitwise_right_shift(src, 4, out=dst)
        else:
            torch.bitwise_and(src, 0xF, out=dst)
    return out.reshape(shape[:dim] + [shape[dim] * PACK_FACTOR] + shape[dim + 1:])
