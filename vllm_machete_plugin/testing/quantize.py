"""Round-to-nearest (RTN) 4-bit quantizer: the test oracle's way to make a CanonicalW4
from a float weight. Not a calibration method (no GPTQ/AWQ error feedback)."""
from __future__ import annotations

from typing import Optional

import torch

from ..canonical import SYMMETRIC_ZERO, CanonicalW4


def act_order_g_idx(k: int, group_size: int, generator: torch.Generator) -> torch.Tensor:
    """int32 [K] like GPTQ desc_act: a random permutation `perm` of the rows (GPTQ sorts
    by Hessian diagonal) and g_idx[perm[i]] = i // group_size."""
    perm = torch.randperm(k, generator=generator)
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[perm] = (torch.arange(k) // group_size).to(torch.int32)
    return g_idx


def quantize_rtn(weight: torch.Tensor, group_size: int = 128, sym: bool = True,
                 act_order: bool = False, scale_dtype: torch.dtype = torch.float16,
                 generator: Optional[torch.Generator] = None,
                 g_idx: Optional[torch.Tensor] = None) -> CanonicalW4:
    """weight: float [N, K] (torch Linear layout). group_size -1 = channelwise.
    sym: scale = 2*absmax/15, zero point 8. asym: min/max with an integer zero point in
    0..15. act_order: groups follow act_order_g_idx(generator), or the given `g_idx`
    (layers fed the same input, like q/k/v, share one in GPTQ)."""
    n, k = weight.shape
    g = k if group_size == -1 else group_size
    if k % g:
        raise ValueError(f"group size {g} does not divide K={k}")
    w = weight.detach().float().t().contiguous()  # [K, N]
    if act_order and group_size != -1 and g_idx is None:
        g_idx = act_order_g_idx(k, g, generator if generator is not None else torch.Generator().manual_seed(0))
    if g_idx is not None:
        order = torch.argsort(g_idx.to(torch.int64), stable=True)  # rows of group j at [j*g, (j+1)*g)
    else:
        order = torch.arange(k)
    grouped = w[order].reshape(k // g, g, n)
    if sym:
        amax = grouped.abs().amax(dim=1).clamp_min(1e-8)
        scales = (2 * amax / 15).to(scale_dtype)
        zeros_f = torch.full_like(amax, float(SYMMETRIC_ZERO))
    else:
        lo = grouped.amin(dim=1).clamp(max=0)
        hi = grouped.amax(dim=1).clamp(min=0)
        scales = ((hi - lo).clamp_min(1e-8) / 15).to(scale_dtype)
        zeros_f = torch.round(-lo / scales.float()).clamp(0, 15)
    q = torch.round(grouped / scales.float().unsqueeze(1)) + zeros_f.unsqueeze(1)
    codes_sorted = q.clamp(0, 15).to(torch.uint8).reshape(k, n)
    codes = torch.empty_like(codes_sorted)
    codes[order] = codes_sorted
    return CanonicalW4(codes=codes, scales=scales.contiguous(),
                       zeros=None if sym else zeros_f.to(torch.uint8).contiguous(),
                       group_size=g, g_idx=g_idx).validate("quantize_rtn")
