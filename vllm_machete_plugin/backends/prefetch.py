"""The L2 prefetch budget of our kernels (VMP_L2_PREFETCH_MB): how much of the next layer's
weight a GEMM asks L2 for as it finishes, so that weight streams in while the kernels between
the two GEMMs (norm, attention, activation) leave DRAM idle. The small-M Machete kernel
(1..16 tokens, kernels/machete/machete_small_m.cu) and the Marlin kernel
(kernels/marlin/marlin_gemm.cu) do it; the layers are linked by the linear method
(MacheteLinearMethod._link_previous). A hint: results never depend on it."""
from __future__ import annotations

import os

ENV_PREFETCH = "VMP_L2_PREFETCH_MB"


def prefetch_bytes() -> int:
    """VMP_L2_PREFETCH_MB as bytes; 0 (the default until it is measured end to end) turns it off."""
    raw = os.environ.get(ENV_PREFETCH, "").strip()
    if not raw:
        return 0
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not 0 <= mb <= 1024:
        raise ValueError(f"{ENV_PREFETCH}={raw!r}: expected megabytes of L2 prefetch per call, 0 to 1024 "
                         f"(0: off); fix: e.g. {ENV_PREFETCH}=16, or unset it")
    return int(mb * 2**20)


# Read once, at import: apply() runs under torch.compile, where reading os.environ would put the
# `os` module among the traced sources of vLLM's compile-cache key.
PREFETCH_BYTES = prefetch_bytes()


def prefetch_args(next_weights, weight_key: str, prefetch=None) -> tuple:
    """The GEMM ops' trailing next_w, next_scales, next_zeros, prefetch_bytes for a call: the
    next layer's prepared weight (under `weight_key`), scales and zeros, and `prefetch` bytes
    (default PREFETCH_BYTES); () without a next layer or a budget (the plain call)."""
    budget = PREFETCH_BYTES if prefetch is None else prefetch
    if next_weights is None or budget <= 0:
        return ()
    return next_weights[weight_key], next_weights["scales"], next_weights.get("zeros"), budget
