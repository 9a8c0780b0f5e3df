"""Shared pieces of the GPU kernel tests: random CanonicalW4 weights on the GPU, the
layer spec for one, and CUDA-graph capture."""
from __future__ import annotations


import torch

from vllm_machete_plugin.backends.base import LayerSpec
from vllm_machete_plugin.canonical import CanonicalW4

DEV = "cuda"


def make_weight(k: int, n: int, group: int, zero_points: bool, dtype: torch.dtype,
                pow2_scales: bool = False, act_order: bool = False,
                pow2_exponents: tuple[int, int] = (-9, -4)) -> CanonicalW4:
    """Uniform codes; scales uniform in [0.002, 0.022), or 2^e with e in pow2_exponents
    (half-open) for bit-exact probes; zero points uniform; act_order: GPTQ desc_act
    g_idx (a random permutation of rows, g_idx[perm[i]] = i // group)."""
    gs = k if group == -1 else group
    g = k // gs
    codes = torch.randint(0, 16, (k, n), dtype=torch.uint8, device=DEV)
    if pow2_scales:
        scales = 2.0 ** torch.randint(*pow2_exponents, (g, n), device=DEV).float()
    else:
        scales = torch.rand(g, n, device=DEV) * 0.02 + 0.002
    zeros = torch.randint(0, 16, (g, n), dtype=torch.uint8, device=DEV) if zero_points else None
    g_idx = None
    if act_order:
        perm = torch.randperm(k, device=DEV)
        g_idx = torch.empty(k, dtype=torch.int32, device=DEV)
        g_idx[perm] = (torch.arange(k, device=DEV) // gs).to(torch.int32)
    return CanonicalW4(codes, scales.to(dtype), zeros, gs, g_idx).validate()


def spec_for(w: CanonicalW4, dtype: torch.dtype, act_order: bool = False) -> LayerSpec:
    return LayerSpec(k=w.k, n=w.n, group_size=w.group_size, has_zeros=not w.symmetric,
                     act_dtype=dtype, act_order=act_order)


def prepare_layers(backend, dtype: torch.dtype, shapes) -> list[tuple[CanonicalW4, LayerSpec, dict]]:
    """(weight, spec, backend.prepare's tensors) of a random layer per (k, n, group, zero_points)."""
    out = []
    for k, n, group, zero_points in shapes:
        w = make_weight(k, n, group, zero_points, dtype)
        spec = spec_for(w, dtype)
        out.append((w, spec, backend.prepare(spec, w)))
    return out


def capture_graph(fn) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Warm `fn()` up on a side stream (as capture requires), capture it in a CUDA graph;
    return the graph and its static output."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


# Marlin's drained pipelines (kDrain, marlin_gemm.cu) on an H200 capped to the shared memory of
# sm_86/89 (100 KB) and sm_80 (164 KB): K = 1152 (9 k-tiles) and N = 8192 at these M give every
# compiled drained kernel blocks that restart after a slice end and refill the stages in the
# slice after it (tests/test_marlin_plan.py::test_gpu_tests_reach_every_drained_path).
DRAIN_PLANS = ("smem=102400,drain=1", "smem=167936,drain=1")
DRAIN_K, DRAIN_N, DRAIN_MS = 1152, 8192, (64, 128, 257)


def in_host_memory(prepared: dict, backend) -> dict:
    """`prepared` with the backend's weight tensors moved to pinned host memory behind UVA device
    views, as vLLM's CPU offloading leaves them (vllm_machete_plugin.offload); the rest as is."""
    import pytest

    try:
        import vllm._C_stable_libtorch  # noqa: F401  (vLLM 0.26's library: registers torch.ops._C's UVA view op)
    except ImportError as e:
        pytest.skip(f"the UVA view is vLLM's own op, and vllm._C_stable_libtorch does not import here: {e}")
    from vllm_machete_plugin import offload

    out = dict(prepared)
    for name in backend.host_offloadable:
        if name in out:
            p = torch.nn.Parameter(out[name].clone(), requires_grad=False)
            offload.to_host(p)
            assert p.is_cuda and offload.is_offloaded(p), name
            out[name] = p.data
    return out
