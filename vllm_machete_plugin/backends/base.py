"""The backend contract: what every kernel backend (and the reference) implements.

A backend turns a CanonicalW4 into device tensors once (`prepare`, at load time)
and computes Y[M, N] = X[M, K] @ dequant(W)[K, N] with them (`apply`, every forward).
Act-order is resolved before a backend sees the weight: the linear method sorts the
rows by group (regrouping when groups straddle TP ranks) and permutes activations the
same way (see `vllm_machete_plugin.act_order`), so `prepare` never receives a g_idx.
The reference backend still accepts any g_idx, as the test oracle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..canonical import CanonicalW4


@dataclass(frozen=True)
class LayerSpec:
    """Static facts about one linear layer partition; what can_implement decides on."""
    k: int                 # in_features the kernel sees (act-order regrouping may pad K)
    n: int                 # out_features of this partition
    group_size: int        # rows per group; == k for channelwise
    has_zeros: bool        # u4 with zero points (else u4b8, zero point 8)
    act_dtype: torch.dtype
    act_order: bool = False  # rows were sorted by group; activations are permuted per call
    k_split: bool = False  # K is split across tensor-parallel ranks (row-parallel, tp > 1)

    def describe(self) -> str:
        kind = "u4+zeros" if self.has_zeros else "u4b8"
        g = "channel" if self.group_size == self.k else str(self.group_size)
        extra = (", act-order" if self.act_order else "") + (", K split over TP" if self.k_split else "")
        return f"K={self.k} N={self.n} {kind} group={g} {str(self.act_dtype).removeprefix('torch.')}{extra}"


class Backend:
    name: ClassVar[str]
    min_capability: ClassVar[int] = 0          # e.g. 80 for sm_80
    max_capability: ClassVar[int] = 10_000     # exclusive family limits go here
    serving: ClassVar[bool] = True             # False: tests/debugging only, never auto-selected
    # The prepared tensors that are weights: under vLLM's CPU offloading (--cpu-offload-gb) they
    # may live in host memory, read by the kernels through UVA (vllm_machete_plugin.offload).
    host_offloadable: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def can_implement(cls, spec: LayerSpec, capability: int) -> tuple[bool, str]:
        """(True, "") or (False, reason). `capability` is major*10+minor, -1 for no GPU."""
        raise NotImplementedError

    @classmethod
    def built_for(cls, capability: int) -> tuple[bool, str]:
        """(True, "") when this build has machine code for a GPU of `capability` (asked by
        select() of the GPU it runs on, after can_implement), else (False, reason with the fix)."""
        return True, ""

    @classmethod
    def prepare(cls, spec: LayerSpec, w: CanonicalW4) -> dict[str, torch.Tensor]:
        """Repack `w` (on the target device) into this backend's tensors."""
        raise NotImplementedError

    @classmethod
    def apply(cls, spec: LayerSpec, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """x: [M, K] contiguous, act dtype. Returns [M, N] in the act dtype."""
        raise NotImplementedError
