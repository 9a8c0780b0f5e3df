"""The Marlin tile planner (choose_tile in kernels/marlin/marlin_gemm.cu), through the host-only
op vmp::marlin_tile_plan: which M tile, pipeline depth and shared-memory layout a call gets on a
GPU with given limits. Host code only: runs without a GPU wherever the Marlin extension was built
(CI builds it), for the shared memory of every GPU class the kernel targets."""
from __future__ import annotations

import os
import sys

import pytest
import torch

from vllm_machete_plugin import ops

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu"))
from gpu_common import DRAIN_K, DRAIN_MS, DRAIN_N, DRAIN_PLANS  # noqa: E402  (the GPU test's shapes)

pytestmark = pytest.mark.skipif(not (ops.kernels_available() and ops.has_op("marlin_tile_plan")),
                                reason="the Marlin extension was not built (needs nvcc)")

# cudaDeviceGetAttribute: SMs, shared memory per SM, per block opt-in, reserved per block.
GPUS = {
    "H200 (sm_90)": (132, 233472, 232448, 1024),
    "A100 (sm_80)": (108, 167936, 166912, 1024),
    "L40S (sm_89)": (142, 102400, 101376, 1024),
    "A10 (sm_86)": (72, 102400, 101376, 1024),
}
# (N_pad, K_pad): Llama-3.1-70B qkv (below the 80 Mi-weight rule for two blocks) and gate_up.
LAYERS = [(10240, 8192), (57344, 8192)]
MS = [1, 8, 9, 16, 17, 32, 33, 48, 49, 64, 65, 100, 128, 200, 256, 1024, 4096]


def plan(m, n_pad, k_pad, gpu, hints=None):
    """[m_blocks, chunks, stages, blocks_per_sm, drain, smem_bytes] for GPUS[gpu] under `hints`
    (VMP_MARLIN_PLAN's form; None: the default plan, drained kernels allowed)."""
    got = torch.ops.vmp.marlin_tile_plan(m, n_pad, k_pad, *GPUS[gpu], hints)
    assert len(got) == 6, f"no tile fits M={m} on {gpu}"
    mb, chunks, stages, blocks, drain, smem = got
    return dict(mb=mb, chunks=chunks, stages=stages, blocks=blocks, drain=bool(drain), smem=smem)


@pytest.mark.parametrize("gpu", list(GPUS))
@pytest.mark.parametrize("layer", LAYERS)
def test_every_m_gets_a_balanced_tile_that_fits(gpu, layer):
    """Every M gets a tile on every GPU class: chunks of <= 64 rows covering M with less than one
    16-row block left over per chunk, at least 3 stages, within the per-block opt-in and the
    per-SM shared memory of its blocks."""
    _, per_sm, optin, reserved = GPUS[gpu]
    for m in MS:
        p = plan(m, *layer, gpu)
        assert 1 <= p["mb"] <= 4 and p["stages"] >= 3 and p["blocks"] in (1, 2)
        rows = 16 * p["mb"] * p["chunks"]
        assert m <= rows < m + 16 * p["chunks"], (m, p)
        assert p["smem"] <= optin and p["blocks"] * (p["smem"] + reserved) <= per_sm, (m, p)
        assert not (p["drain"] and p["blocks"] != 1), (m, p)


@pytest.mark.parametrize("layer", LAYERS)
def test_hopper_keeps_its_plans(layer):
    """228 KB hold the 64-row tile beside its reduction tile: no drained pipeline on Hopper, and
    the fewest chunks (one per 64 tokens)."""
    for m in MS:
        p = plan(m, *layer, "H200 (sm_90)")
        assert not p["drain"], (m, p)
        assert p["chunks"] == -(-m // 64), (m, p)


@pytest.mark.parametrize("gpu,most_rows", [("A100 (sm_80)", 64), ("L40S (sm_89)", 48), ("A10 (sm_86)", 48)])
def test_smaller_gpus_get_tiles_of_32_rows_and_more(gpu, most_rows):
    """On 164 KB and 100 KB of shared memory the reduction tile overlays the
    stages where it must, so from 17 tokens up a tile holds 32..most_rows rows (without: 16-row
    chunks on sm_86/89 at every M, each re-reading and re-dequantizing the weight, and 48-row
    ones with a third of their rows empty on the A100 at 49..64 tokens)."""
    for layer in LAYERS:
        for m in [m for m in MS if m > 16]:
            p = plan(m, *layer, gpu)
            assert 32 <= 16 * p["mb"] <= most_rows, (m, p)
        assert plan(64, *layer, gpu)["drain"]
        assert 16 * plan(1024, *layer, gpu)["mb"] == most_rows


@pytest.mark.parametrize("gpu,cap", [("A100 (sm_80)", 167936), ("L40S (sm_89)", 102400)])
def test_a_smem_cap_plans_as_the_smaller_gpu(gpu, cap):
    """`smem=BYTES` (VMP_MARLIN_PLAN, a call's plan) gives an H200 the plan of a GPU with that
    much shared memory per SM, so the GPU tests and benchmarks run those plans on the H200."""
    for layer in LAYERS:
        for m in MS:
            assert plan(m, *layer, "H200 (sm_90)", f"smem={cap},drain=1") == plan(m, *layer, gpu), m


def test_drain_is_on_by_default_and_drain_0_gives_the_undrained_plans():
    """The default plan is drain=1's (measured on the H200, 2026-12-05); drain=0 keeps the plans
    of before: no drained tile anywhere, 16-row chunks on sm_86/89."""
    for gpu in GPUS:
        for m in MS:
            assert plan(m, 10240, 8192, gpu) == plan(m, 10240, 8192, gpu, "drain=1"), (gpu, m)
            assert not plan(m, 10240, 8192, gpu, "drain=0")["drain"], (gpu, m)
    assert plan(64, 10240, 8192, "L40S (sm_89)")["drain"]
    assert plan(64, 10240, 8192, "L40S (sm_89)", "drain=0")["mb"] == 1
    # Where the 64-row tile does not fit undrained, the chunks are rebalanced: two of 32 rows at 64
    # tokens on the A100, not two of 48 with a third of their rows empty.
    assert plan(64, 10240, 8192, "A100 (sm_80)", "drain=0") == dict(mb=2, chunks=2, stages=4, blocks=1, drain=False,
                                                                 smem=4 * 28672 + 2 * 16 * 264 * 4 + 16)


def test_plan_caps_are_honoured_and_bad_ones_named():
    p = plan(64, 10240, 8192, "L40S (sm_89)", "mb=1")
    assert p["mb"] == 1 and p["chunks"] == 4 and not p["drain"]
    p = plan(64, 10240, 8192, "H200 (sm_90)", "stages=3,drain=1")  # no 64-row tile is built with 3 stages
    assert p["stages"] == 3 and p["mb"] == 2 and p["chunks"] == 2
    with pytest.raises(RuntimeError, match=r"cannot parse 'smem=65536'.*>= 102400"):
        torch.ops.vmp.marlin_tile_plan(64, 10240, 8192, *GPUS["H200 (sm_90)"], "smem=65536")
    with pytest.raises(RuntimeError, match="n_pad a multiple of 256"):
        torch.ops.vmp.marlin_tile_plan(64, 1000, 8192, *GPUS["H200 (sm_90)"], None)


# (m_blocks, stages) of the drained kernels compiled in marlin_gemm.cu (stages_compiled(.., true)).
DRAINED_KERNELS = {(2, 3), (3, 3), (4, 4)}


def test_gpu_tests_reach_every_drained_path():
    """tests/gpu/test_marlin.py::test_drained_pipelines_restart_and_refill runs, on an H200 under its
    shared-memory caps, every drained kernel in blocks that cross a slice end (drain, reduce through
    the overlaid tile, restart) and then refill the stages within the next slice: read from the
    planner and the stripe map the kernel launches with (one block per SM)."""
    reached = set()
    for cap in DRAIN_PLANS:
        for m in DRAIN_MS:
            p = plan(m, DRAIN_N, DRAIN_K, "H200 (sm_90)", cap)
            assert p["drain"] and p["blocks"] == 1, (cap, m, p)
            kt, n_slices = DRAIN_K // 128, p["chunks"] * DRAIN_N // 256
            flat = torch.ops.vmp.marlin_stripe_map(p["chunks"], DRAIN_N // 256, kt, GPUS["H200 (sm_90)"][0], -1)
            stripes = flat[1:len(flat) - 2 * n_slices]
            for b, e in zip(stripes[::2], stripes[1::2]):
                parts = [(max(b, s * kt), min(e, (s + 1) * kt)) for s in range(b // kt, (e - 1) // kt + 1)]
                if any(hi - lo > p["stages"] for lo, hi in parts[1:]):
                    reached.add((p["mb"], p["stages"]))
    assert reached == DRAINED_KERNELS
