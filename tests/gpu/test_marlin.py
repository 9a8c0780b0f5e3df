"""GPU tests of the Marlin backend (vmp::marlin_* ops) against the reference backend.

Tolerance (see `assert_close_to_reference`): the kernel rounds every dequantized
weight (q - z) * s to the activation dtype (error |e_k| <= u |w_k|, u = 2^-11 fp16,
2^-8 bf16), multiplies exactly by x_k and accumulates the K products in fp32, then
rounds the result to the activation dtype. sum_k x_k e_k has random signs through x,
so its standard deviation is at most u * sqrt(K) * rms(x) * rms(w): the bound grows
with sqrt(K). (Worst case |e_k|, not the rms of a uniform rounding error: with one
scale per column the e_k of a column repeat and need not average out.) We allow 6
such deviations plus two ulps of the reference for the output rounding; the fp32
accumulation error is orders of magnitude smaller.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from vllm_machete_plugin import ops
from vllm_machete_plugin.act_order import sort_by_group
from vllm_machete_plugin.backends.base import LayerSpec
from vllm_machete_plugin.backends.marlin import MarlinBackend
from vllm_machete_plugin.backends.reference import reference_mm
from vllm_machete_plugin.bench.kernels import smem_limits
from vllm_machete_plugin.canonical import CanonicalW4, dequantize
from vllm_machete_plugin.marlin_layout_ref import padded_kn, permute_groups_ref, repack_ref
from gpu_common import (DEV, DRAIN_K, DRAIN_MS, DRAIN_N, DRAIN_PLANS, capture_graph, in_host_memory,  # noqa: E402
                        make_weight, prepare_layers, spec_for)

_why_skip = ("no CUDA GPU" if not torch.cuda.is_available()
             else "" if ops.kernels_available() else f"kernels not built: {ops._load()}")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(_why_skip), reason=_why_skip or "-")]

DTYPES = [torch.float16, torch.bfloat16]
UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def poisoned_cache(m: int, n: int, dtype: torch.dtype) -> None:
    """Leave a NaN block of the output's size in the caching allocator, so an output
    element the kernel fails to write shows up as NaN instead of a lucky zero."""
    t = torch.full((m, n), float("nan"), dtype=dtype, device=DEV)
    del t


def run_marlin(w: CanonicalW4, x: torch.Tensor, act_order: bool = False, plan: str | None = None) -> torch.Tensor:
    spec = spec_for(w, x.dtype, act_order)
    ok, why = MarlinBackend.can_implement(spec, 80)
    assert ok, why
    weights = MarlinBackend.prepare(spec, w)
    poisoned_cache(x.shape[0], w.n, x.dtype)
    out = MarlinBackend.apply(spec, weights, x, plan)
    assert int(weights["workspace"].abs().sum()) == 0, "locks must be back at zero after every call"
    return out


def assert_close_to_reference(out: torch.Tensor, x: torch.Tensor, w: CanonicalW4, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert not out.isnan().any(), "NaN in output: some element was not written"
    u = UNIT_ROUNDOFF[x.dtype]
    w_rms = dequantize(w).float().pow(2).mean().sqrt().item()
    x_rms = x.float().pow(2).mean().sqrt().item()
    tol = 6 * u * math.sqrt(w.k) * x_rms * w_rms + 2 * u * ref.float().abs()
    err = (out.float() - ref.float()).abs()
    ratio = err / tol
    worst = int(ratio.argmax())
    assert not (ratio > 1).any(), (
        f"{int((ratio > 1).sum())} of {err.numel()} elements off; worst at {divmod(worst, err.shape[1])}: "
        f"err {err.flatten()[worst].item():.4g} > bound {tol.flatten()[worst].item():.4g}")


# ---- layout ---------------------------------------------------------------------------

@pytest.mark.parametrize("k,n", [(128, 128), (256, 384), (200, 300), (1024, 1280)])
def test_repack_matches_layout_reference(k, n):
    codes = torch.randint(0, 16, (k, n), dtype=torch.uint8, device=DEV)
    k_pad, n_pad = padded_kn(k, n)
    got = torch.ops.vmp.marlin_repack(codes, k_pad, n_pad)
    assert torch.equal(got, repack_ref(codes, k_pad, n_pad))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("g,n,g_pad", [(1, 128, 1), (8, 256, 8), (3, 200, 4)])
def test_permute_groups_matches_layout_reference(dtype, g, n, g_pad):
    src = torch.randn(g, n, device=DEV).to(dtype)
    n_pad = padded_kn(128, n)[1]
    got = torch.ops.vmp.marlin_permute_groups(src, g_pad, n_pad)
    assert torch.equal(got, permute_groups_ref(src, g_pad, n_pad))


# ---- exactness probe ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zero_points", [False, True])
@pytest.mark.parametrize("k,n,group", [(256, 256, -1), (256, 256, 32), (256, 256, 128),
                                       (192, 200, 64), (192, 200, -1)])  # second shape is padded
def test_identity_probe_is_bit_exact(dtype, zero_points, k, n, group):
    """X = I, power-of-two scales: every output is one exact product, so Y must equal
    the dequantized weight bit for bit; any layout, scale or zero-point slip shows."""
    w = make_weight(k, n, group, zero_points, dtype, pow2_scales=True)
    x = torch.eye(k, dtype=dtype, device=DEV)
    out = run_marlin(w, x)
    assert torch.equal(out, dequantize(w, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zero_points", [False, True])
@pytest.mark.parametrize("m", [1, 3, 8, 9])
def test_identity_rows_probe_small_m_is_bit_exact(dtype, zero_points, m):
    """M <= 8 runs the transposed MMAs (weight as the A operand): m random rows of I
    must return exactly those rows of the dequantized weight; M = 9 is the plain path."""
    w = make_weight(512, 768, 128, zero_points, dtype, pow2_scales=True)
    rows = torch.randperm(w.k, device=DEV)[:m]
    x = torch.eye(w.k, dtype=dtype, device=DEV)[rows].contiguous()
    assert torch.equal(run_marlin(w, x), dequantize(w, dtype)[rows])


def _under_plan(plan: str, code: str) -> subprocess.CompletedProcess:
    """Runs `code` (after `from test_marlin import *`) in a fresh process under
    VMP_MARLIN_PLAN=plan, which the extension reads once per process."""
    prelude = f"import torch, sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); " \
              "from test_marlin import *; "
    return subprocess.run([sys.executable, "-c", prelude + code], env={**os.environ, "VMP_MARLIN_PLAN": plan},
                          capture_output=True, text=True, timeout=300)


def _assert_ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-2000:]


def _assert_refused(r: subprocess.CompletedProcess, item: str, form: str) -> None:
    assert r.returncode != 0 and f"cannot parse '{item}'" in r.stderr and form in r.stderr, r.stderr[-2000:]


def test_plan_knobs_keep_results_and_bad_knobs_are_named():
    """VMP_MARLIN_PLAN only changes the launch plan: one block per SM, 8 stages, no
    transposed MMAs and 32-row M chunks give the reference result; a bad knob is refused
    with the accepted forms."""
    code = ("w = make_weight(1024, 768, 128, False, torch.float16); "
            "[assert_close_to_reference(run_marlin(w, x), x, w, reference_mm(x, w)) "
            "for x in (torch.randn(m, 1024, device=DEV).half() for m in (1, 5, 16, 64))]; print('ok')")
    _assert_ok(_under_plan("blocks=1,stages=8,swap=0,mb=2", code))
    _assert_refused(_under_plan("blocks=1,turbo=2", code), "turbo=2", "swap=0|1")


# Launch plans that must give the reference result at the M values where they differ:
# n-major / chunk-major stripes (the default from 2 chunks, marlin_stripes.h) at 2..16 M
# chunks with split slices; one / two blocks per SM for 16-row tiles (one is the default up
# to 80 Mi weights, so for every layer here), transposed MMAs (M <= 8) included.
# The plans of 100 KB (sm_86/89) and 164 KB (sm_80) GPUs, run here under a shared-memory cap:
# by default (drain=1) their 32..64-row tiles drain the pipeline at every slice end (the reduction
# tile overlays the stages; tests/test_marlin_plan.py), here on tiles with padding rows; with
# drain=0, 16-row tiles on 100 KB and rebalanced chunks on 164 KB. Restarts and refills after a
# slice end: test_drained_pipelines_restart_and_refill.
PLAN_PAIRS = {"stripe order": (("order=0", "order=1"), (65, 128, 200, 257, 1024)),
              "blocks per SM": (("blocks=1", "blocks=2"), (1, 5, 8, 9, 16)),
              "smaller GPUs": (("smem=102400,drain=1", "smem=167936,drain=1", "smem=102400,drain=0", "smem=167936,drain=0"),
                               (17, 33, 48, 64, 100, 128, 257))}


@pytest.mark.parametrize("pair", list(PLAN_PAIRS))
@pytest.mark.parametrize("dtype,zero_points,group", [(torch.float16, False, 128), (torch.float16, True, 32),
                                                    (torch.bfloat16, True, 128)])
def test_launch_plans_keep_results(pair, dtype, zero_points, group):
    plans, ms = PLAN_PAIRS[pair]
    w = make_weight(2048, 1536, group, zero_points, dtype)
    for m in ms:
        x = torch.randn(m, w.k, device=DEV).to(dtype)
        want = reference_mm(x, w)
        for plan in plans:
            assert_close_to_reference(run_marlin(w, x, plan=plan), x, w, want)


@pytest.mark.parametrize("dtype,zero_points,group", [(torch.float16, False, 128), (torch.float16, True, 32),
                                                    (torch.bfloat16, False, 64)])
def test_drained_pipelines_restart_and_refill(dtype, zero_points, group):
    """Every drained kernel, where its blocks cross slice ends, restart the pipeline and refill
    the stages after the restart (gpu_common.DRAIN_PLANS), gives the reference result."""
    w = make_weight(DRAIN_K, DRAIN_N, group, zero_points, dtype)
    for m in DRAIN_MS:
        x = torch.randn(m, w.k, device=DEV).to(dtype)
        want = reference_mm(x, w)
        for plan in DRAIN_PLANS:
            assert_close_to_reference(run_marlin(w, x, plan=plan), x, w, want)


def test_smaller_gpu_plans_drain_here():
    """The drained plans above really run the drained pipeline on this GPU."""
    limits = smem_limits()
    for cap, m in (("smem=102400,drain=1", 64), ("smem=102400,drain=1", 128), ("smem=167936,drain=1", 64)):
        assert torch.ops.vmp.marlin_tile_plan(m, 1536, 2048, *limits, cap)[4] == 1, (cap, m)
    for cap in DRAIN_PLANS:
        for m in DRAIN_MS:
            assert torch.ops.vmp.marlin_tile_plan(m, DRAIN_N, DRAIN_K, *limits, cap)[4] == 1, (cap, m)


def test_a_call_plan_replaces_the_environment_and_is_checked():
    """A call's plan (bench kernels --marlin-plans) is parsed like VMP_MARLIN_PLAN, whose own
    order=1 is honoured and whose bad values are refused in a fresh process."""
    w = make_weight(1024, 768, 128, False, torch.float16)
    x = torch.randn(64, 1024, device=DEV).half()
    with pytest.raises(RuntimeError, match="vmp::marlin_gemm plan: cannot parse 'order=2'"):
        run_marlin(w, x, plan="order=2")
    code = ("w = make_weight(1024, 768, 128, False, torch.float16); x = torch.randn(256, 1024, device=DEV).half(); "
            "assert_close_to_reference(run_marlin(w, x), x, w, reference_mm(x, w)); print('ok')")
    _assert_ok(_under_plan("order=1", code))
    _assert_refused(_under_plan("order=2", code), "order=2", "order=0|1")


# ---- against the reference ------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zero_points", [False, True])
@pytest.mark.parametrize("group", [-1, 32, 64, 128])
@pytest.mark.parametrize("m", [1, 7, 16, 33, 64, 128, 257, 1024])
def test_matches_reference(dtype, zero_points, group, m):
    w = make_weight(1024, 768, group, zero_points, dtype)
    x = torch.randn(m, w.k, device=DEV).to(dtype)
    assert_close_to_reference(run_marlin(w, x), x, w, reference_mm(x, w))


# Llama-3.1-70B layer shapes (N x K) and tensor-parallel slices of them.
TP_SHAPES = [            # (K, N)
    (8192 // 8, 1280),      # K sliced by TP=8 with a TP=8 qkv N
    (8192, 10240 // 8),     # qkv, TP=8
    (8192 // 8, 8192),      # o_proj, TP=8
    (8192, 57344 // 8),     # gate_up, TP=8
    (28672 // 8, 8192),     # down, TP=8 (K = 3584)
    (28672 // 4, 8192 // 4),  # down, TP=4 (N cut to 2048 to keep the test quick)
    (8192, 8192),           # o_proj, TP=1
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,n", TP_SHAPES)
@pytest.mark.parametrize("m", [1, 16, 100])
def test_tp_shapes(dtype, k, n, m):
    w = make_weight(k, n, 128, False, dtype)
    x = torch.randn(m, k, device=DEV).to(dtype)
    assert_close_to_reference(run_marlin(w, x), x, w, reference_mm(x, w))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,n,group,zero_points", [
    (320, 200, 64, True),    # K and N both padded
    (96, 100, 32, False),
    (200, 136, -1, True),    # channelwise, K not a multiple of 32
    (4096, 72, 128, False),  # N smaller than one tile
])
@pytest.mark.parametrize("m", [1, 5, 70])
def test_padded_shapes(dtype, k, n, group, zero_points, m):
    w = make_weight(k, n, group, zero_points, dtype)
    x = torch.randn(m, k, device=DEV).to(dtype)
    assert_close_to_reference(run_marlin(w, x), x, w, reference_mm(x, w))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zero_points", [False, True])
@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("m", [3, 64])
def test_act_order(dtype, zero_points, group, m):
    w = make_weight(1024, 512, group, zero_points, dtype, act_order=True)
    x = torch.randn(m, w.k, device=DEV).to(dtype)
    w_sorted, perm = sort_by_group(w)
    out = run_marlin(w_sorted, x[:, perm].contiguous(), act_order=True)
    assert_close_to_reference(out, x, w, reference_mm(x, w))


def test_scales_in_other_dtype_than_activations():
    w = make_weight(512, 256, 128, True, torch.float16)
    x = torch.randn(9, 512, device=DEV).to(torch.bfloat16)
    assert_close_to_reference(run_marlin(w, x), x, w, reference_mm(x, w))


def test_repeat_calls_are_deterministic():
    """The cross-block reduction has a fixed order: a race shows as a moving result."""
    w = make_weight(4096, 1024, 128, False, torch.float16)
    spec = spec_for(w, torch.float16)
    weights = MarlinBackend.prepare(spec, w)
    x = torch.randn(16, 4096, device=DEV).half()
    first = MarlinBackend.apply(spec, weights, x)
    for _ in range(20):
        assert torch.equal(MarlinBackend.apply(spec, weights, x), first)


# ---- CUDA graphs and streams ------------------------------------------------------------

@pytest.mark.parametrize("m", [1, 48, 200])
def test_cuda_graph_capture_and_replay(m):
    w = make_weight(2048, 1280, 128, True, torch.float16)
    spec = spec_for(w, torch.float16)
    weights = MarlinBackend.prepare(spec, w)
    static_x = torch.randn(m, w.k, device=DEV).half()
    graph, static_out = capture_graph(lambda: MarlinBackend.apply(spec, weights, static_x))
    for _ in range(3):
        new_x = torch.randn(m, w.k, device=DEV).half()
        static_x.copy_(new_x)
        static_out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_close_to_reference(static_out, new_x, w, reference_mm(new_x, w))
    assert int(weights["workspace"].abs().sum()) == 0


@pytest.mark.parametrize("m", [1, 16, 64, 300])
def test_weights_in_host_memory_give_the_same_bits(m):
    """vLLM's CPU offloading (--cpu-offload-gb) leaves the weight, scales and zero points in host
    memory behind UVA views; the kernel's copies read them across the bus, the workspace stays."""
    [(w, spec, weights)] = prepare_layers(MarlinBackend, torch.float16, [(2048, 1024, 128, True)])
    x = torch.randn(m, w.k, device=DEV).half()
    want = MarlinBackend.apply(spec, weights, x)
    assert torch.equal(MarlinBackend.apply(spec, in_host_memory(weights, MarlinBackend), x), want)


def test_non_default_stream():
    w = make_weight(4096, 2048, 64, False, torch.bfloat16)
    spec = spec_for(w, torch.bfloat16)
    weights = MarlinBackend.prepare(spec, w)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        x = torch.randn(24, w.k, device=DEV).bfloat16()  # produced on `stream`
        out = MarlinBackend.apply(spec, weights, x)
        ref = reference_mm(x, w)
    stream.synchronize()
    assert_close_to_reference(out, x, w, ref)


# ---- op contracts --------------------------------------------------------------------

def test_opcheck_every_op():
    w = make_weight(256, 256, 128, True, torch.float16)
    spec = spec_for(w, torch.float16)
    weights = MarlinBackend.prepare(spec, w)
    x = torch.randn(5, 256, device=DEV).half()
    torch.library.opcheck(torch.ops.vmp.marlin_repack.default, (w.codes, 256, 256))
    torch.library.opcheck(torch.ops.vmp.marlin_permute_groups.default, (w.scales, 2, 256))
    torch.library.opcheck(torch.ops.vmp.marlin_gemm.default,
                          (x, weights["qweight"], weights["scales"], weights["zeros"], weights["workspace"], 256, 128))
    torch.library.opcheck(torch.ops.vmp.marlin_gemm.default,
                          (x, weights["qweight"], weights["scales"], None, weights["workspace"], 200, 128))


def test_bad_inputs_raise_clear_errors():
    w = make_weight(256, 256, 128, False, torch.float16)
    spec = spec_for(w, torch.float16)
    weights = MarlinBackend.prepare(spec, w)
    gemm = torch.ops.vmp.marlin_gemm
    x = torch.randn(4, 256, device=DEV).half()
    with pytest.raises(RuntimeError, match=r"x must be \[M, K_pad\]"):
        gemm(x[:, :128].contiguous(), weights["qweight"], weights["scales"], None, weights["workspace"], 256, 128)
    with pytest.raises(RuntimeError, match="scales dtype"):
        gemm(x, weights["qweight"], weights["scales"].bfloat16(), None, weights["workspace"], 256, 128)
    with pytest.raises(RuntimeError, match="group_size"):
        gemm(x, weights["qweight"], weights["scales"], None, weights["workspace"], 256, 48)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        gemm(x.t(), weights["qweight"], weights["scales"], None, weights["workspace"], 256, 128)
    with pytest.raises(RuntimeError, match="workspace has"):
        gemm(torch.randn(64, 256, device=DEV).half(), weights["qweight"], weights["scales"], None,
             weights["workspace"][:1], 256, 128)


def test_can_implement_reasons():
    ok_spec = LayerSpec(k=4096, n=4096, group_size=128, has_zeros=False, act_dtype=torch.float16)
    assert MarlinBackend.can_implement(ok_spec, 80) == (True, "")
    assert "sm_80" in MarlinBackend.can_implement(ok_spec, 75)[1]
    bad_group = LayerSpec(k=4096, n=4096, group_size=256, has_zeros=False, act_dtype=torch.float16)
    assert "group size 256" in MarlinBackend.can_implement(bad_group, 90)[1]
    fp32 = LayerSpec(k=4096, n=4096, group_size=128, has_zeros=False, act_dtype=torch.float32)
    assert "float32" in MarlinBackend.can_implement(fp32, 90)[1]
