"""Act-order (desc_act / g_idx) resolution for kernel backends.

Kernels only handle contiguous uniform groups. With act-order, rows of W belong to
groups in an arbitrary order; sorting the rows by group gives contiguous groups, and
Y = X @ W = X[:, perm] @ W[perm, :], so activations are permuted with the same `perm`
at runtime. This works when every group present has exactly `group_size` rows in this
partition, which holds for tp=1 and for any split that keeps whole groups per rank.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .canonical import CanonicalW4


class ActOrderSplitError(ValueError):
    pass


def sort_by_group(w: CanonicalW4, where: str = "weight") -> tuple[CanonicalW4, torch.Tensor]:
    """Return (W with rows sorted by group and g_idx dropped, perm int64 [K])."""
    assert w.g_idx is not None
    g = w.g_idx.to(torch.int64)
    perm = torch.argsort(g, stable=True)
    sorted_g = g[perm]
    present, counts = torch.unique_consecutive(sorted_g, return_counts=True)
    if not bool((counts == w.group_size).all()):
        bad = int((counts != w.group_size).nonzero()[0, 0])
        raise ActOrderSplitError(
            f"{where}: act-order group {int(present[bad])} has {int(counts[bad])} rows in this "
            f"partition (K={w.k}), expected group_size={w.group_size}. This happens when a "
            f"row-parallel layer's K is split across tensor-parallel ranks so that groups "
            f"straddle ranks. Fix: run with tensor_parallel_size=1 for this model, or use a "
            f"checkpoint quantized without act-order (desc_act=False / static_groups=True).")
    # Only the groups present in this partition, renumbered 0..G'-1 in sorted order.
    scales = w.scales[present]
    zeros = w.zeros[present] if w.zeros is not None else None
    out = replace(w, codes=w.codes[perm].contiguous(), scales=scales.contiguous(),
                  zeros=None if zeros is None else zeros.contiguous(), g_idx=None)
    return out, perm
