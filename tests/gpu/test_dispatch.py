"""GPU tests of what the linear method does around the kernels: act-order weights whose
groups straddle tensor-parallel ranks (regrouped, Marlin). Tolerance: relative to the reference output scale, as loose
as the kernels' own tests at these K (see test_marlin.py / test_machete.py)."""
from __future__ import annotations

import pytest
import torch

from vllm_machete_plugin import ops
from vllm_machete_plugin.act_order import REGROUP_ROWS, sort_by_group
from vllm_machete_plugin.backends import machete, select
from vllm_machete_plugin.backends.marlin import MarlinBackend
from vllm_machete_plugin.backends.reference import reference_mm
from vllm_machete_plugin.canonical import CanonicalW4
from vllm_machete_plugin.testing import quantize_rtn
from gpu_common import spec_for  # noqa: E402


def _skip_reason() -> str:
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if not ops.kernels_available():
        return f"kernels not built: {ops._load()}"
    if torch.cuda.get_device_capability()[0] != 9 or not machete.kernels_built():
        return "needs a Hopper (sm_90) GPU and the Machete kernels"
    return ""


_why_skip = _skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(_why_skip), reason=_why_skip or "-")]


def _weight(k: int, n: int, group: int, sym: bool, dtype, act_order: bool = False) -> CanonicalW4:
    gen = torch.Generator().manual_seed(k + n + group)
    w = quantize_rtn(torch.randn(n, k, generator=gen) * 0.05, group, sym, act_order=act_order,
                     scale_dtype=dtype, generator=gen)
    return CanonicalW4(w.codes.cuda(), w.scales.cuda(), None if w.zeros is None else w.zeros.cuda(),
                       w.group_size, None if w.g_idx is None else w.g_idx.cuda())


def _assert_matches(y: torch.Tensor, ref: torch.Tensor) -> None:
    err = (y.float() - ref.float()).abs().max().item()
    scale = ref.float().abs().max().item()
    assert err <= 0.02 * scale + 1e-3, f"max error {err} vs output scale {scale}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("tp", [2, 4])
def test_act_order_split_over_ranks_runs_regrouped_on_marlin(dtype, sym, tp):
    """A row-parallel rank of an act-order checkpoint (groups straddle ranks) gives the
    same product as the reference on that rank's rows with the full group table."""
    full = _weight(4096, 512, 128, sym, dtype, act_order=True)
    k = full.k // tp
    for rank in range(tp):
        rows = slice(rank * k, (rank + 1) * k)
        part = CanonicalW4(full.codes[rows], full.scales, full.zeros, 128, full.g_idx[rows])
        ws, perm = sort_by_group(part, where="down_proj")
        assert ws.group_size == REGROUP_ROWS and ws.k > k
        spec = spec_for(ws, dtype)
        backend = select(spec, "down_proj")
        assert backend is MarlinBackend  # Machete has no 32-row groups
        weights = backend.prepare(spec, ws)
        x = torch.randn(33, k, device="cuda", dtype=dtype)
        _assert_matches(backend.apply(spec, weights, x.index_select(1, perm).contiguous()),
                        reference_mm(x, part))
