"""Machete backend: our Hopper (sm_90a) W4A16 GEMM on one prepacked weight: CUTLASS's wgmma
mixed-input collective, our own small-M mma.sync kernel and our own mid-M wgmma kernel
(kernels/machete/, extension vllm_machete_plugin._machete_C).

prepare(): codes -> vmp::machete_prepack (GPU, layout of kernels/machete/machete_layout.cuh;
u4b8 codes are stored as signed q-8 in an int32 tensor, u4 codes as q in a uint32 tensor, so
vmp::machete_mm refuses a weight prepacked for the other kind: the dtype is its record of the
kind, checked without reading the GPU), scales [G, N] in the act dtype, zero points
pre-multiplied as -s*z in the act dtype, so the mainloop dequantizes with one FMA
(q*s + z'), and a zeroed int32 lock buffer for the cross-block reductions of our own
kernels (it is back to zero after every call). apply(): vmp::machete_mm with the schedule from
VMP_MACHETE_SCHEDULE if set when this module was imported, else the C++ heuristic (kernels/machete/machete_heuristic.cpp):
the small-M mma.sync kernel (kernels/machete/machete_small_m.cu) for M <= 16 (64x8 up to
8 tokens, 64x16 up to 16), our own wgmma tiles (kernels/machete/machete_mid_m.cu) 256x32w /
256x64w at 17..64 tokens and 256x128w at 65..128 (and 257..512 on gate_up-sized N) on large
layers, the CUTLASS wgmma tiles elsewhere (docs/machete_heuristic.md).
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from .. import ops
from ..canonical import CanonicalW4
from . import add_backend
from .base import Backend, LayerSpec

ENV_SCHEDULE = "VMP_MACHETE_SCHEDULE"  # force one schedule name (see schedules())
GROUP_SIZES = (64, 128)                # plus channelwise (group_size == K)
ALIGN_N = 128
ALIGN_K = 64


def kernels_built() -> bool:
    return ops.kernels_available() and ops.has_op("machete_mm")


def schedules() -> list[str]:
    """Names of the compiled schedules, e.g. '128x16' (output features x tokens per tile)."""
    ops.require_kernels("machete schedules")
    if not kernels_built():
        raise ops.KernelsNotBuiltError("the Machete kernels (vllm_machete_plugin._machete_C) were not built; "
                                       "rebuild with VMP_CUDA_ARCHS containing 90 and nvidia-cutlass installed")
    return list(torch.ops.vmp.machete_schedules())


def forced_schedule() -> Optional[str]:
    return os.environ.get(ENV_SCHEDULE, "").strip() or None


# Read once, at import: apply() runs under torch.compile, where reading os.environ would put
# the `os` module among the traced sources of vLLM's compile-cache key (it cannot read
# "<frozen os>", and a warm restart then missed the cache).
FORCED_SCHEDULE = forced_schedule()


class MacheteBackend(Backend):
    name = "machete"
    host_offloadable = ("w", "scales", "zeros")
    min_capability = 90
    max_capability = 100  # sm_90 only: wgmma is sm_90a-specific

    @classmethod
    def can_implement(cls, spec: LayerSpec, capability: int) -> tuple[bool, str]:
        if not 90 <= capability < 100:
            where = "no CUDA GPU" if capability < 0 else f"sm_{capability}"
            return False, f"needs Hopper (sm_90), this is {where}"
        if spec.act_dtype not in (torch.float16, torch.bfloat16):
            return False, f"activations must be float16 or bfloat16, got {spec.act_dtype}"
        if spec.n % ALIGN_N:
            return False, f"N={spec.n} is not a multiple of {ALIGN_N}"
        if spec.k % ALIGN_K:
            return False, f"K={spec.k} is not a multiple of {ALIGN_K}"
        if spec.group_size != spec.k and spec.group_size not in GROUP_SIZES:
            return False, f"group size {spec.group_size} unsupported (64, 128 or channelwise)"
        if not kernels_built():
            return False, ("kernels not built for sm_90a (vllm_machete_plugin._machete_C missing: build with "
                           "VMP_CUDA_ARCHS containing 90 and nvidia-cutlass installed)")
        return True, ""

    @classmethod
    def prepare(cls, spec: LayerSpec, w: CanonicalW4) -> dict[str, torch.Tensor]:
        ops.require_kernels("machete prepare")
        if w.g_idx is not None:
            raise ValueError("machete prepare: resolve act-order first (act_order.sort_by_group)")
        codes = w.codes.contiguous()
        out = {"w": torch.ops.vmp.machete_prepack(codes, w.zeros is not None)}
        scales = w.scales.to(device=codes.device, dtype=spec.act_dtype).contiguous()
        out["scales"] = scales
        if w.zeros is not None:
            out["zeros"] = (-(scales.float() * w.zeros.to(codes.device).float())).to(spec.act_dtype).contiguous()
        if spec.act_dtype == torch.float16:
            check_fp16_scale_range(scales)
        # The small-M kernel's cross-block counters: zero between calls (each call leaves
        # them zero). One buffer per layer: two calls of the same layer must not run
        # concurrently on different streams (vLLM runs a dense model's layers in order).
        out["locks"] = torch.zeros(torch.ops.vmp.machete_small_m_locks(), dtype=torch.int32, device=codes.device)
        return out

    @classmethod
    def apply(cls, spec: LayerSpec, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        group = -1 if spec.group_size == spec.k else spec.group_size
        return torch.ops.vmp.machete_mm(x, weights["w"], weights["scales"], weights.get("zeros"), group,
                                        FORCED_SCHEDULE, weights.get("locks"))


# fp16 mid-M kernels hold rows row + 8 of each fragment as 16x the weight (machete_mid_m.cu):
# 16 * 15 * |s| must stay below fp16's 65504.
FP16_MAX_SCALE = 256.0


def check_fp16_scale_range(scales: torch.Tensor) -> None:
    """Refuses fp16 scales the fp16 Machete kernels would overflow on, instead of computing
    Inf. No real 4-bit checkpoint comes near (its weights would reach 15 * 256)."""
    biggest = float(scales.abs().max())
    if not biggest < FP16_MAX_SCALE:
        raise ValueError(
            f"machete prepare: the scales of shape {tuple(scales.shape)} reach {biggest:.4g}; the fp16 "
            f"Machete kernels handle |scale| < {FP16_MAX_SCALE:g}. Fix: --dtype bfloat16, or "
            f"VMP_BACKEND=marlin.")


def prepacked_dtype(has_zeros: bool) -> torch.dtype:
    """The dtype of vmp::machete_prepack's output, which records the kind it was packed for:
    uint32 holds u4 codes q (used with zero points), int32 u4b8 codes q-8."""
    return torch.uint32 if has_zeros else torch.int32


def check_weight_kind(w: torch.Tensor, has_zeros: bool) -> None:
    """What vmp::machete_mm checks (machete_bindings.cpp), for tracing: a weight prepacked for
    one kind read as the other would be off by 8 codes, silently."""
    kinds = {torch.int32: "u4b8 (has_zeros=False: int32 codes q-8)",
             torch.uint32: "u4 with zero points (has_zeros=True: uint32 codes q)"}
    if w.dtype not in kinds:
        raise RuntimeError(f"vmp::machete_mm: w must be the int32 or uint32 [K/8, N] tensor from "
                           f"vmp::machete_prepack, got {w.dtype}")
    if w.dtype != prepacked_dtype(has_zeros):
        raise RuntimeError(
            f"vmp::machete_mm: w ({w.dtype}) was prepacked for {kinds[w.dtype]}, but the call "
            f"{'passes' if has_zeros else 'passes no'} zeros; fix: prepack the codes with "
            f"has_zeros={has_zeros}, or {'drop' if has_zeros else 'pass'} the zeros")


# Fakes for torch.compile / CUDA-graph tracing (registered by ops._load when the op exists).
@ops.fake_impl("machete_prepack")
def _prepack_fake(codes: torch.Tensor, has_zeros: bool) -> torch.Tensor:
    return codes.new_empty((codes.shape[0] // 8, codes.shape[1]), dtype=prepacked_dtype(has_zeros))


@ops.fake_impl("machete_mm")
def _mm_fake(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
             group_size: int, schedule: Optional[str] = None,
             locks: Optional[torch.Tensor] = None) -> torch.Tensor:
    check_weight_kind(w, zeros is not None)
    return x.new_empty((x.shape[0], w.shape[1]))


# Priority 0: tried before Marlin; it declines every GPU but sm_90.
add_backend(MacheteBackend, priority=0)
