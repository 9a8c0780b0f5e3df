"""Pure-PyTorch reference backend: the test oracle. Never auto-selected for serving."""
from __future__ import annotations

import torch

from ..canonical import CanonicalW4, dequantize
from .base import Backend, LayerSpec


class ReferenceBackend(Backend):
    name = "reference"
    host_offloadable = ("w_fp32",)
    serving = False

    @classmethod
    def can_implement(cls, spec: LayerSpec, capability: int) -> tuple[bool, str]:
        return True, ""

    @classmethod
    def prepare(cls, spec: LayerSpec, w: CanonicalW4) -> dict[str, torch.Tensor]:
        # Keep the dequantized weight in fp32: the oracle trades memory for exactness.
        return {"w_fp32": dequantize(w, torch.float32)}

    @classmethod
    def apply(cls, spec: LayerSpec, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return (x.float() @ weights["w_fp32"]).to(x.dtype)


def reference_mm(x: torch.Tensor, w: CanonicalW4) -> torch.Tensor:
    """Y = X @ dequant(W) in fp32, returned in X's dtype. X: [M, K]."""
    return (x.float() @ dequantize(w, torch.float32).to(x.device)).to(x.dtype)
