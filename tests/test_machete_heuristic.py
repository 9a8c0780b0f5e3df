"""The Machete schedule heuristic (kernels/machete/machete_heuristic.cpp) against the
table in docs/machete_heuristic.md. Host code only: the op takes the SM count, so this
runs without a GPU wherever the Machete extension was built (CI builds it)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from vllm_machete_plugin import ops

pytestmark = pytest.mark.skipif(not (ops.kernels_available() and ops.has_op("machete_heuristic")),
                                reason="the Machete extension was not built (needs nvcc and VMP_CUDA_ARCHS with 90)")

H100_SMS = 132  # H100 SXM and H200
QKV, O, GATE_UP, DOWN = (10240, 8192), (8192, 8192), (57344, 8192), (8192, 28672)
TP_SLICE = (1280, 8192)  # qkv at TP=8: under 64 Mi weights

# (M, (N, K)) -> schedule, row by row of docs/machete_heuristic.md's table.
TABLE = {
    (1, QKV): "64x8", (8, GATE_UP): "64x8",                                  # 1..8
    (9, O): "64x16", (16, DOWN): "64x16",                                    # 9..16
    (17, DOWN): "256x32w", (32, QKV): "256x32w", (32, GATE_UP): "256x32w",  # our own wgmma kernel
    (24, O): "256x32w",                                                      # >= 64 Mi weights
    (32, TP_SLICE): "128x32_sk", (32, (8064, 8192)): "128x32_sk",            # under 64 Mi / N % 256
    (33, QKV): "256x64w", (64, O): "256x64w", (64, GATE_UP): "256x64w",       # our own wgmma kernel
    (48, DOWN): "256x64w",
    (64, TP_SLICE): "128x64_sk", (64, (384, 4096)): "128x64_sk",              # under 64 Mi / N % 256
    (64, (8192, 4096)): "128x64_sk", (64, (57344, 1024)): "128x64",          # 448 tiles: auto
    (65, QKV): "128x128c2_sk", (96, O): "128x128c2_sk",                      # <= 128 Mi weights
    (96, (1152, 8192)): "128x128_sk", (128, (17024, 8192)): "128x128",       # N % 256 != 0
    (65, GATE_UP): "256x128w", (128, DOWN): "256x128w",                       # > 128 Mi: our own wgmma kernel
    (129, GATE_UP): "128x256", (256, DOWN): "128x256", (256, GATE_UP): "128x256",  # > 128 Mi: CUTLASS 2x1
    (256, QKV): "128x128", (256, O): "128x128", (129, (57344, 1024)): "128x128",   # <= 128 Mi
    (257, GATE_UP): "256x128w", (512, GATE_UP): "256x128w",                  # N >= 32768 up to 512 tokens
    (257, DOWN): "128x256", (512, DOWN): "128x256", (257, O): "128x256", (512, (8192, 4096)): "256x128",
    # above 512 tokens the CUTLASS tiles raster along features, swizzle 4
    (513, GATE_UP): "128x256+f4", (1024, GATE_UP): "128x256+f4", (1024, O): "128x256+f4",
    (4096, QKV): "128x256+f4", (16384, DOWN): "128x256+f4", (1024, TP_SLICE): "256x128+f4",
    (1024, (1152, 8192)): "128x128+f4",                                      # under 64 Mi
}


@pytest.mark.parametrize("m,shape", list(TABLE))
def test_table(m, shape):
    n, k = shape
    assert torch.ops.vmp.machete_heuristic(m, n, k, H100_SMS) == TABLE[m, shape]


def test_stream_k_only_below_one_wave():
    """Up to 128 tokens the 1-CTA tiles run forced Stream-K only while there are fewer
    output tiles than SMs: o_proj at 96 tokens has 64 tiles of 128x128, so Stream-K on 132
    SMs and CUTLASS's own decomposition on 48 (N = 8064: not a multiple of 256)."""
    assert torch.ops.vmp.machete_heuristic(96, 8064, 8192, H100_SMS) == "128x128_sk"
    assert torch.ops.vmp.machete_heuristic(96, 8064, 8192, 48) == "128x128"


def test_every_pick_is_a_listed_schedule():
    names = set(torch.ops.vmp.machete_schedules())
    for m in (1, 7, 16, 17, 33, 64, 65, 128, 129, 257, 513, 4096):
        for n, k in (QKV, O, GATE_UP, DOWN, TP_SLICE, (384, 4096)):
            assert torch.ops.vmp.machete_heuristic(m, n, k, H100_SMS).split("+")[0].split("_")[0] in names


def test_bad_arguments_are_refused():
    with pytest.raises(RuntimeError, match="m, n, k must be in"):
        torch.ops.vmp.machete_heuristic(0, 8192, 8192, H100_SMS)
    with pytest.raises(RuntimeError, match="is not an SM count"):
        torch.ops.vmp.machete_heuristic(1, 8192, 8192, 10**9)


def _heuristic_with_env(env: dict[str, str], m: int, shape: tuple[int, int]) -> subprocess.CompletedProcess:
    """The heuristic's pick in a fresh process with these VMP_* knobs set (read once per process)."""
    code = ("import torch; from vllm_machete_plugin import ops; ops.require_kernels('test'); "
            f"print(torch.ops.vmp.machete_heuristic({m}, {shape[0]}, {shape[1]}, {H100_SMS}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def _heuristic_with_subst(subst: str, m: int, shape: tuple[int, int]) -> subprocess.CompletedProcess:
    return _heuristic_with_env({"VMP_MACHETE_SUBST": subst}, m, shape)


def test_subst_replaces_the_pick_for_ab_runs():
    """VMP_MACHETE_SUBST=a=b runs tile b wherever the heuristic picks a and b can run the
    call; a CUTLASS pick's decomposition suffix is dropped when b is one of our own kernels."""
    subst = "256x64w=128x64w,128x128c2=128x128w,64x16=256x32w,128x64=256x64w"
    for m, shape, pick in [(64, GATE_UP, "128x64w"),
                           (128, (8192, 8192), "128x128w"),   # was 128x128c2_sk
                           (16, GATE_UP, "256x32w"),          # the small-M pick, any tile that runs it
                           (1, GATE_UP, "64x8"),              # other picks stay
                           (64, (8064, 8192), "128x64_sk")]:  # N % 256 != 0: 256x64w cannot run it
        out = _heuristic_with_subst(subst, m, shape)
        assert out.returncode == 0 and out.stdout.split()[-1] == pick, (m, shape, out.stderr[-2000:])


@pytest.mark.parametrize("subst,message", [
    ("256x64w=nope", "unknown tile 'nope'"),
    ("nope=256x64w", "unknown tile 'nope'"),
    ("256x64w", "is not <tile>=<tile>"),
])
def test_subst_refuses_a_malformed_setting(subst, message):
    out = _heuristic_with_subst(subst, 64, GATE_UP)
    assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]


def test_raster_knob_orders_the_cutlass_picks_only():
    """VMP_MACHETE_RASTER=f4 gives the heuristic's CUTLASS picks the raster suffix (+f4: along
    features, swizzle 4), =auto takes the heuristic's own +f4 away (CUTLASS's order); our own
    kernels' picks and a tile substituted by one of them keep none."""
    for m, shape, pick in [(16384, GATE_UP, "128x256+f4"), (4096, QKV, "128x256+f4"),
                           (96, O, "128x128c2_sk+f4"), (64, GATE_UP, "256x64w"), (1, QKV, "64x8")]:
        out = _heuristic_with_env({"VMP_MACHETE_RASTER": "f4"}, m, shape)
        assert out.returncode == 0 and out.stdout.split()[-1] == pick, (m, shape, out.stderr[-2000:])
    for m, shape, pick in [(16384, GATE_UP, "128x256"), (1024, TP_SLICE, "256x128"), (96, O, "128x128c2_sk")]:
        out = _heuristic_with_env({"VMP_MACHETE_RASTER": "auto"}, m, shape)
        assert out.returncode == 0 and out.stdout.split()[-1] == pick, (m, shape, out.stderr[-2000:])
    out = _heuristic_with_env({"VMP_MACHETE_RASTER": "t2"}, 4096, QKV)
    assert out.returncode == 0 and out.stdout.split()[-1] == "128x256+t2", out.stderr[-2000:]
    out = _heuristic_with_env({"VMP_MACHETE_RASTER": "t2", "VMP_MACHETE_SUBST": "128x256=256x128w"}, 512, DOWN)
    assert out.returncode == 0 and out.stdout.split()[-1] == "256x128w", out.stderr[-2000:]
    for bad in ("f3", "features,4", "x4"):
        out = _heuristic_with_env({"VMP_MACHETE_RASTER": bad}, 16384, GATE_UP)
        assert out.returncode != 0 and f"VMP_MACHETE_RASTER={bad}: cannot parse" in out.stderr, out.stderr[-2000:]
