"""Act-order (desc_act / g_idx) resolution, done once at load for every backend.

Kernels only handle contiguous uniform groups. With act-order, rows of W belong to
groups in an arbitrary order; sorting the rows by group gives contiguous groups, and
Y = X @ W = X[:, perm] @ W[perm, :], so activations are permuted with the same `perm`
at runtime.

When every group present has exactly `group_size` rows in this partition (tp=1, or a
split that keeps whole groups per rank) that is all. When groups straddle ranks (a
row-parallel layer of an act-order checkpoint with tp > 1, where each rank holds a
random part of every group), each group's run of rows is padded to a multiple of
REGROUP_ROWS with rows whose dequantized weight is exactly zero (code = the group's zero
point), and the result uses groups of REGROUP_ROWS rows, each carrying its group's
scale. K grows to K' (about +25% for tp=2 with g=128); the pad rows read X[:, 0] and
multiply it by an exact 0.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .canonical import SYMMETRIC_ZERO, CanonicalW4

REGROUP_ROWS = 32  # the smallest group every kernel family takes (Marlin: 32)


def sort_by_group(w: CanonicalW4, where: str = "weight") -> tuple[CanonicalW4, torch.Tensor]:
    """Return (W' with contiguous groups and no g_idx, perm int64 [K']) such that
    X @ dequant(W) == X[:, perm] @ dequant(W'). K' == K unless groups straddle (above)."""
    assert w.g_idx is not None, f"{where}: sort_by_group needs an act-order g_idx"
    g = w.g_idx.to(device=w.codes.device, dtype=torch.int64)
    perm = torch.argsort(g, stable=True)
    present, counts = torch.unique_consecutive(g[perm], return_counts=True)
    if bool((counts == w.group_size).all()):
        # Only the groups present in this partition, renumbered 0..G'-1 in sorted order.
        out = replace(w, codes=w.codes[perm].contiguous(), scales=w.scales[present].contiguous(),
                      zeros=None if w.zeros is None else w.zeros[present].contiguous(), g_idx=None)
        return out, perm
    return _regroup(w, perm, present, counts)


def _regroup(w: CanonicalW4, perm: torch.Tensor, present: torch.Tensor,
             counts: torch.Tensor) -> tuple[CanonicalW4, torch.Tensor]:
    r = REGROUP_ROWS
    blocks = (counts + r - 1) // r                         # REGROUP_ROWS-blocks per group
    run = torch.repeat_interleave(torch.arange(len(present), device=perm.device), counts)
    start = torch.cumsum(counts, 0) - counts                # run start in the sorted rows
    padded_start = (torch.cumsum(blocks, 0) - blocks) * r   # run start in the padded rows
    dest = padded_start[run] + torch.arange(w.k, device=perm.device) - start[run]
    k_new = int(blocks.sum()) * r
    block_group = present.repeat_interleave(blocks)         # source group of every new group
    scales = w.scales[block_group].contiguous()
    zeros = None if w.zeros is None else w.zeros[block_group].contiguous()
    # Pad rows hold the zero point, so (code - zero) * scale is exactly 0.
    if zeros is None:
        codes = torch.full((k_new, w.n), SYMMETRIC_ZERO, dtype=w.codes.dtype, device=w.codes.device)
    else:
        codes = zeros.repeat_interleave(r, dim=0).to(w.codes.dtype)
    codes[dest] = w.codes[perm]
    new_perm = torch.zeros(k_new, dtype=torch.int64, device=perm.device)
    new_perm[dest] = perm
    return CanonicalW4(codes=codes, scales=scales, zeros=zeros, group_size=r), new_perm
