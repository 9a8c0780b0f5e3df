"""Programmatic dependent launch (kernels/launch.h): our GEMMs may start while the
previous kernel on the stream still runs, and must wait for it before they touch
activations, outputs, workspaces or locks. A chain of GEMMs where each consumes the
previous one's output (and the same layer runs twice in a row, reusing its locks) is
where a missing or misplaced wait shows: the kernels are deterministic, so the chain
run back to back, eagerly and in a CUDA graph, must equal the chain run with a device
synchronization between the steps, bit for bit. VMP_PDL=0 (plain launches) must give
the same bits too.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from vllm_machete_plugin import ops
from vllm_machete_plugin.backends.machete import MacheteBackend
from vllm_machete_plugin.backends.marlin import MarlinBackend
from gpu_common import DEV, capture_graph, make_weight, spec_for  # noqa: E402

_why_skip = ("no CUDA GPU" if not torch.cuda.is_available()
             else "" if ops.kernels_available() else f"kernels not built: {ops._load()}")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(_why_skip), reason=_why_skip or "-")]

K = 2048  # square layers: each output feeds the next layer


def _backends():
    out = [pytest.param(MarlinBackend, id="marlin")]
    hopper = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
    out.append(pytest.param(MacheteBackend, id="machete", marks=pytest.mark.skipif(
        not hopper, reason="Machete needs a Hopper (sm_90) GPU")))
    return out


def _layers(backend, dtype, seed=0):
    torch.manual_seed(seed)
    layers = []
    for zero_points in (False, True):
        w = make_weight(K, K, 128, zero_points, dtype)
        spec = spec_for(w, dtype)
        layers.append((spec, backend.prepare(spec, w)))
    a, b = layers
    return [a, a, b, b, a]  # the same layer back to back reuses its locks


def _chain(backend, layers, x, sync: bool):
    y = x
    for spec, weights in layers:
        y = backend.apply(spec, weights, y)
        if sync:
            torch.cuda.synchronize()
    return y


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("m", [1, 16, 64, 200])
def test_back_to_back_chain_equals_synchronized_chain(backend, m):
    dtype = torch.float16
    layers = _layers(backend, dtype)
    x = torch.randn(m, K, device=DEV, dtype=dtype) * 0.5
    ref = _chain(backend, layers, x, sync=True)
    assert torch.isfinite(ref).all() and ref.abs().max() > 0
    for _ in range(5):
        assert torch.equal(_chain(backend, layers, x, sync=False), ref)
    graph, out = capture_graph(lambda: _chain(backend, layers, x, sync=False))
    for _ in range(5):
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, ref)


def test_plain_launches_give_the_same_bits():
    """VMP_PDL=0 turns PDL off (kernels/launch.h); the kernels and their results are the
    same, so both settings must agree bit for bit."""
    code = (f"import sys, torch; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            "from test_pdl import _layers, _chain, K, DEV, MacheteBackend, MarlinBackend; "
            "b = MacheteBackend if torch.cuda.get_device_capability()[0] == 9 else MarlinBackend; "
            "layers = _layers(b, torch.float16); torch.manual_seed(1); "
            "ys = [_chain(b, layers, torch.randn(m, K, device=DEV, dtype=torch.float16) * 0.5, False) "
            "for m in (1, 16, 64, 200)]; "
            "print('sum', repr([float(y.double().sum()) for y in ys]))")
    sums = []
    for pdl in ("1", "0"):
        r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "VMP_PDL": pdl},
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        sums.append([ln for ln in r.stdout.splitlines() if ln.startswith("sum ")][-1])
    assert sums[0] == sums[1], sums
