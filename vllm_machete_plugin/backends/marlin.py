"""Marlin backend: our own Marlin-style W4A16 kernel (mma.sync, sm_80 and newer).

Device tensors made by `prepare` (layout: kernels/marlin/marlin_layout.cuh):
  qweight    int32 [K_pad/16, 2*N_pad]   vmp::marlin_repack of the codes
  scales     act dtype [G_pad, N_pad]    vmp::marlin_permute_groups of the scales
  zeros      act dtype [G_pad, N_pad]    zero points as values (only for u4 + zeros)
  workspace  int32 [4 * multiprocessors] cross-block locks (one per resident block, at most 2 per
                                         SM, see blocks_per_sm in marlin_gemm.cu); zero, and zero
                                         again after every call
K_pad, N_pad are K, N rounded up to 128 and 256 (zero padding); G_pad = K_pad / g, or 1 for
channelwise. Activations are zero-padded to K_pad in `apply` when K % 128 != 0.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..canonical import CanonicalW4
from ..marlin_layout_ref import padded_kn
from ..ops import built_archs, fake_impl, kernels_available, require_kernels, runs_on
from . import add_backend
from .base import Backend, LayerSpec

SUPPORTED_GROUPS = (32, 64, 128)
ACT_DTYPES = (torch.float16, torch.bfloat16)


def _kernel_group_size(spec: LayerSpec) -> int:
    """The kernel's group_size argument: -1 for channelwise (one group over K)."""
    return -1 if spec.group_size == spec.k else spec.group_size


@add_backend
class MarlinBackend(Backend):
    name = "marlin"
    host_offloadable = ("qweight", "scales", "zeros")  # not the workspace: its locks take atomics
    min_capability = 80

    @classmethod
    def can_implement(cls, spec: LayerSpec, capability: int) -> tuple[bool, str]:
        if capability < cls.min_capability:
            where = "no CUDA GPU" if capability < 0 else f"sm_{capability}"
            return False, f"needs sm_80 or newer (cp.async, bf16 mma.sync), this is {where}"
        if spec.act_dtype not in ACT_DTYPES:
            return False, f"activation dtype {spec.act_dtype} unsupported (float16 or bfloat16 only)"
        if spec.group_size != spec.k and spec.group_size not in SUPPORTED_GROUPS:
            return False, (f"group size {spec.group_size} unsupported: Marlin takes channelwise (group == K) or "
                           f"groups of {', '.join(map(str, SUPPORTED_GROUPS))}")
        if spec.k < 1 or spec.n < 1:
            return False, f"empty weight (K={spec.k}, N={spec.n})"
        if not kernels_available():
            return False, "the CUDA kernels of vllm-machete-plugin were not built (see vllm_machete_plugin.ops)"
        return True, ""

    @classmethod
    def built_for(cls, capability: int) -> tuple[bool, str]:
        if runs_on(capability):
            return True, ""
        built = ", ".join(f"sm_{a}" for a in built_archs())
        return False, (f"the kernels were built for {built}, none of which runs on sm_{capability} (machine "
                       f"code runs only within its major version). Fix: rebuild for this GPU, "
                       f"VMP_CUDA_ARCHS=\"{capability}\" pip install --no-build-isolation -e . (untested on it)")

    @classmethod
    def prepare(cls, spec: LayerSpec, w: CanonicalW4) -> dict[str, torch.Tensor]:
        require_kernels("MarlinBackend.prepare")
        if w.g_idx is not None:
            raise ValueError("MarlinBackend.prepare got a g_idx: resolve act-order first with "
                             "vllm_machete_plugin.act_order.sort_by_group and permute activations with its perm")
        w.validate("MarlinBackend.prepare")
        ok, why = cls.can_implement(spec, 80)
        if not ok:
            raise ValueError(f"MarlinBackend cannot run layer {spec.describe()}: {why}")
        if (w.k, w.n) != (spec.k, spec.n) or w.group_size != spec.group_size or w.symmetric == spec.has_zeros:
            raise ValueError(f"MarlinBackend.prepare: weight (K={w.k}, N={w.n}, group={w.group_size}, "
                             f"zeros={not w.symmetric}) does not match the layer spec ({spec.describe()})")
        device = w.codes.device if w.codes.is_cuda else torch.device("cuda", torch.cuda.current_device())
        k_pad, n_pad = padded_kn(w.k, w.n)
        g_pad = 1 if _kernel_group_size(spec) == -1 else k_pad // w.group_size
        out = {
            "qweight": torch.ops.vmp.marlin_repack(w.codes.to(device).contiguous(), k_pad, n_pad),
            "scales": torch.ops.vmp.marlin_permute_groups(
                w.scales.to(device=device, dtype=spec.act_dtype).contiguous(), g_pad, n_pad),
            "workspace": torch.zeros(4 * torch.cuda.get_device_properties(device).multi_processor_count,
                                     dtype=torch.int32, device=device),
        }
        if w.zeros is not None:
            out["zeros"] = torch.ops.vmp.marlin_permute_groups(
                w.zeros.to(device=device, dtype=spec.act_dtype).contiguous(), g_pad, n_pad)
        return out

    @classmethod
    def apply(cls, spec: LayerSpec, weights: dict[str, torch.Tensor], x: torch.Tensor,
              plan: Optional[str] = None) -> torch.Tensor:
        """`plan`: launch-plan caps in VMP_MARLIN_PLAN's form for this call only (benchmarks)."""
        require_kernels("MarlinBackend.apply")
        k_pad = weights["qweight"].shape[0] * 16
        if x.shape[-1] != k_pad:
            x = F.pad(x, (0, k_pad - x.shape[-1]))
        return torch.ops.vmp.marlin_gemm(x.contiguous(), weights["qweight"], weights["scales"],
                                         weights.get("zeros"), weights["workspace"], spec.n,
                                         _kernel_group_size(spec), plan)


@fake_impl("marlin_repack")
def _marlin_repack_fake(codes: torch.Tensor, k_pad, n_pad) -> torch.Tensor:
    return codes.new_empty((k_pad // 16, 2 * n_pad), dtype=torch.int32)


@fake_impl("marlin_permute_groups")
def _marlin_permute_groups_fake(src: torch.Tensor, g_pad, n_pad) -> torch.Tensor:
    return src.new_empty((g_pad, n_pad))


@fake_impl("marlin_gemm")
def _marlin_gemm_fake(x, w, scales, zeros, workspace, size_n, group_size, plan=None) -> torch.Tensor:
    return x.new_empty((x.shape[0], size_n))
