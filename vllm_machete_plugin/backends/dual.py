"""Hopper batch-adaptive dispatch: a Machete copy and a Marlin copy of each weight, and
per call Marlin when the call has at most VMP_MARLIN_MAX_M tokens, Machete above.

Why it is opt-in (VMP_MARLIN_MAX_M unset or 0 = off, Machete only): the Marlin copy
costs as much memory as the weight itself (K*N/2 bytes + scales; +35 GB for
Llama-3.1-70B, more than the KV cache an 80 GB H100 has left), for a gain only at
M <= 16 (H200, 4 Llama-70B GEMMs summed: M=1 215 vs 270 us, M=16 220 vs 239 us, M=32
320 vs 247 us; benchmarks/results/kernels-*.json). 16 is the measured crossover.

The choice is made inside one custom op (vmp::dual_mm) so torch.compile sees a single
opaque call whatever M is: no guard on the batch size, no recompiles; CUDA-graph
capture records the kernel of the captured size.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from ..canonical import CanonicalW4
from . import add_backend
from .base import Backend, LayerSpec
from .machete import MacheteBackend
from .marlin import MarlinBackend

ENV_MAX_M = "VMP_MARLIN_MAX_M"
CROSSOVER_M = 16  # measured (module docstring); the value to set ENV_MAX_M to
_MT, _ML = "mt_", "ml_"  # name prefixes of the Machete and the Marlin tensors


def max_m() -> int:
    raw = os.environ.get(ENV_MAX_M, "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{ENV_MAX_M}={raw!r}: expected a token count >= 0 (0 = Machete only; "
                         f"{CROSSOVER_M} = measured crossover)")
    return value


class DualBackend(Backend):
    name = "machete+marlin"
    min_capability = 90
    max_capability = 100

    @classmethod
    def can_implement(cls, spec: LayerSpec, capability: int) -> tuple[bool, str]:
        if max_m() == 0:
            return False, f"off ({ENV_MAX_M} unset or 0; a second weight copy is opt-in)"
        for b in (MacheteBackend, MarlinBackend):
            ok, why = b.can_implement(spec, capability)
            if not ok:
                return False, f"{b.name}: {why}"
        return True, ""

    @classmethod
    def prepare(cls, spec: LayerSpec, w: CanonicalW4) -> dict[str, torch.Tensor]:
        out = {_MT + k: v for k, v in MacheteBackend.prepare(spec, w).items()}
        out.update({_ML + k: v for k, v in MarlinBackend.prepare(spec, w).items()})
        return out

    @classmethod
    def apply(cls, spec: LayerSpec, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.ops.vmp.dual_mm(
            x, weights[_MT + "w"], weights[_MT + "scales"], weights.get(_MT + "zeros"),
            weights[_ML + "qweight"], weights[_ML + "scales"], weights.get(_ML + "zeros"),
            weights[_ML + "workspace"], spec.k, spec.n, spec.group_size, max_m())


@torch.library.custom_op("vmp::dual_mm", mutates_args=())
def dual_mm(x: torch.Tensor, mt_w: torch.Tensor, mt_scales: torch.Tensor, mt_zeros: Optional[torch.Tensor],
            ml_qweight: torch.Tensor, ml_scales: torch.Tensor, ml_zeros: Optional[torch.Tensor],
            ml_workspace: torch.Tensor, k: int, n: int, group_size: int, max_m: int) -> torch.Tensor:
    """Y[M, n] = X @ W with Marlin if M <= max_m else Machete. The Marlin workspace is
    back to zero after every call, so the op mutates nothing observable."""
    spec = LayerSpec(k=k, n=n, group_size=group_size, has_zeros=ml_zeros is not None, act_dtype=x.dtype)
    if x.shape[0] <= max_m:
        ws = {"qweight": ml_qweight, "scales": ml_scales, "workspace": ml_workspace}
        if ml_zeros is not None:
            ws["zeros"] = ml_zeros
        return MarlinBackend.apply(spec, ws, x)
    ws = {"w": mt_w, "scales": mt_scales}
    if mt_zeros is not None:
        ws["zeros"] = mt_zeros
    return MacheteBackend.apply(spec, ws, x)


@dual_mm.register_fake
def _dual_mm_fake(x, mt_w, mt_scales, mt_zeros, ml_qweight, ml_scales, ml_zeros, ml_workspace, k, n,
                  group_size, max_m):
    return x.new_empty((x.shape[0], n))


# Priority 0: when turned on, it is tried before Machete alone.
add_backend(DualBackend, priority=0)
