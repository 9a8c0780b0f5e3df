"""GPU tests of the Machete backend (vmp::machete_* ops, sm_90a) against the reference.

Tolerance (`assert_close`): the kernel dequantizes every weight in the activation
dtype as q*s (+ z' with z' = -s*z pre-rounded to that dtype), so each weight carries
an independent rounding error of at most u*(|q*s| + |z'| + |w|) (u = 2^-11 fp16,
2^-8 bf16); products are exact and K of them accumulate in fp32, then the output is
rounded once (u*|y|). Independent errors add in quadrature, so the accumulated error
has standard deviation ~ u/sqrt(3) * sqrt(K) * rms(x) * rms(e), e = |q*s| + |z'| + |w|:
the bound grows with sqrt(K). We allow 4*u*sqrt(K)*rms(x)*rms(e) (about 7 standard
deviations) plus 2u*|y_ref| for the output rounding; fp32 accumulation error is far
smaller. The reference is fp32 math on the same (act-dtype) scales.
"""
from __future__ import annotations

import math

import pytest
import torch

from vllm_machete_plugin import backends, ops
from vllm_machete_plugin.act_order import sort_by_group
from vllm_machete_plugin.backends.base import LayerSpec
from vllm_machete_plugin.backends import machete
from vllm_machete_plugin.backends.machete import (MacheteBackend, kernels_built, prepacked_dtype,
                                                  schedules)
from vllm_machete_plugin.canonical import SYMMETRIC_ZERO, CanonicalW4, dequantize
from vllm_machete_plugin.machete_layout_ref import prepack_ref
from gpu_common import (DEV, capture_graph, in_host_memory, make_weight, prepare_layers,  # noqa: E402
                        spec_for)


def _skip_reason() -> str:
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if not ops.kernels_available():
        return f"kernels not built: {ops._load()}"
    if torch.cuda.get_device_capability()[0] != 9:
        return "Machete needs a Hopper (sm_90) GPU"
    if not kernels_built():
        return "vllm_machete_plugin._machete_C not built (VMP_CUDA_ARCHS without 90?)"
    return ""


_why_skip = _skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(_why_skip), reason=_why_skip or "-")]

DTYPES = [torch.float16, torch.bfloat16]
UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
M_SIZES = [1, 7, 16, 24, 33, 64, 128, 257, 1024]
WGMMA_TILES = ["128x16", "128x32", "128x64", "128x128", "256x128", "256x32", "128x256", "128x128c2"]
# N alignment: tile N x CTAs per cluster along N (128x256 and 128x128c2 are 2-CTA clusters)
ALIGN_N = {"256x128": 256, "256x32": 256, "128x256": 256, "128x128c2": 256, "256x64w": 256, "256x128w": 256,
           "256x32w": 256}
SMALL_M_TILES = {"64x8": 8, "64x16": 16}  # mma.sync kernel on the same weight: tile -> max tokens
# our own wgmma mainloop, same weight, any M; 256x32w: 32 tokens per tile
MID_M_TILES = ["128x64w", "256x64w", "128x128w", "256x128w", "256x32w"]
SCHEDULES = (WGMMA_TILES + list(SMALL_M_TILES) + MID_M_TILES if not _why_skip else [])


def tile_of(schedule: str) -> str:
    """The tile of a schedule name: TILE[_DECOMP][+RASTER] (machete_heuristic.md)."""
    return schedule.split("+")[0].split("_")[0]


def fits(schedule, m: int) -> bool:
    """Whether a schedule (None: the heuristic) takes an M-token call."""
    return schedule is None or m <= SMALL_M_TILES.get(tile_of(schedule), m)


def error_scale(w: CanonicalW4) -> float:
    """rms over weights of |q*s| + |z'| + |w| (see the module docstring)."""
    g = w.group_of_rows()
    s = w.scales.float()[g]
    q = w.codes.float()
    if w.zeros is None:
        e = 2 * ((q - SYMMETRIC_ZERO) * s).abs()
    else:
        z = w.zeros.float()[g]
        e = (q * s).abs() + (z * s).abs() + ((q - z) * s).abs()
    return float(e.pow(2).mean().sqrt())


def assert_close(y: torch.Tensor, x: torch.Tensor, w: CanonicalW4) -> None:
    assert y.dtype == x.dtype and y.shape == (x.shape[0], w.n)
    assert not torch.isnan(y).any(), "NaN in output (unwritten or poisoned element)"
    ref = x.float() @ dequantize(w, torch.float32)
    u = UNIT_ROUNDOFF[x.dtype]
    rms_x = float(x.float().pow(2).mean().sqrt())
    bound = 4 * u * math.sqrt(w.k) * rms_x * error_scale(w) + 2 * u * ref.abs()
    err = (y.float() - ref).abs()
    bad = err > bound
    assert not bad.any(), (f"{int(bad.sum())} of {bad.numel()} outputs off; worst err "
                           f"{float(err.max()):.4g}, bound there {float(bound.flatten()[err.argmax()]):.4g}")


def poison_cache(m: int, n: int, dtype: torch.dtype) -> None:
    """Leave a NaN block of the output's size in the caching allocator, so an output
    element the kernel fails to write shows up as NaN."""
    t = torch.full((m, n), float("nan"), dtype=dtype, device=DEV)
    del t


def run_mm(x, prepared, group, schedule=None):
    return torch.ops.vmp.machete_mm(x, prepared["w"], prepared["scales"], prepared.get("zeros"), group, schedule,
                                    prepared.get("locks"))


@pytest.mark.parametrize("schedule,m", [("64x16", 9), ("256x64w", 64), ("128x256", 300), (None, 1)])
def test_weights_in_host_memory_give_the_same_bits(schedule, m):
    """vLLM's CPU offloading (--cpu-offload-gb) leaves the prepacked weight, scales and zero points
    in host memory behind UVA views: the small-M kernel's cp.async, the mid-M kernel's bulk copies
    and the CUTLASS tiles' TMA read them across the bus; the locks stay on the device."""
    [(w, _, p)] = prepare_layers(MacheteBackend, torch.float16, [(2048, 1024, 128, True)])
    x = torch.randn(m, w.k, device=DEV).half()
    want = run_mm(x, p, 128, schedule)
    assert torch.equal(run_mm(x, in_host_memory(p, MacheteBackend), 128, schedule), want)


# ---- every schedule returns (first: a hang is named, not a stuck session) ------------

_PROBE = """
import sys, torch
from vllm_machete_plugin.backends.machete import MacheteBackend
from vllm_machete_plugin.backends.base import LayerSpec
from vllm_machete_plugin.bench.kernels import forced_mm, random_weight
k, n = 1024, 1024
w = random_weight(n, k)
p = MacheteBackend.prepare(LayerSpec(k=k, n=n, group_size=128, has_zeros=False, act_dtype=torch.float16), w)
for arg in sys.argv[1:]:  # <schedule>:<tokens>
    name, m = arg.split(":")
    print(name, flush=True)
    forced_mm(torch.randn(int(m), k, device="cuda", dtype=torch.float16), p, name)
    torch.cuda.synchronize()
print("done", flush=True)
"""


def test_every_schedule_returns():
    """One call of every schedule in a child process under a time limit, so a kernel that
    never finishes (the first four-warpgroup build's setmaxnreg did) fails here with its
    name instead of stalling the whole test session."""
    import subprocess
    import sys
    args = [f"{s}:{SMALL_M_TILES.get(s, 64)}" for s in SCHEDULES]  # the small-M tiles at their token limit
    proc = subprocess.Popen([sys.executable, "-c", _PROBE, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"schedule {out.split()[-1] if out.split() else '?'} did not return within 180 s")
    assert proc.returncode == 0 and out.split()[-1] == "done", out[-3000:]


# ---- layout -----------------------------------------------------------------------

@pytest.mark.parametrize("has_zeros", [False, True])
@pytest.mark.parametrize("k,n", [(64, 128), (256, 384), (1024, 2048)])
def test_prepack_matches_python_reference(k, n, has_zeros):
    codes = torch.randint(0, 16, (k, n), dtype=torch.uint8, device=DEV)
    got = torch.ops.vmp.machete_prepack(codes, has_zeros)
    assert got.dtype == prepacked_dtype(has_zeros) and got.shape == (k // 8, n)
    assert torch.equal(got.view(torch.int32), prepack_ref(codes, has_zeros))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zero_points", [False, True])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_identity_probe_bit_exact(dtype, zero_points, schedule):
    """X = I, power-of-two scales: every dequantized weight and the single nonzero product
    per output are exact, so Y must equal dequant(W) bit for bit. Any layout, nibble
    order or scale/zero indexing error shows up here."""
    k, n = 256, 512
    w = make_weight(k, n, 128, zero_points, dtype, pow2_scales=True, pow2_exponents=(-8, -3))
    prepared = MacheteBackend.prepare(spec_for(w, dtype), w)
    eye = torch.eye(k, dtype=dtype, device=DEV)
    rows = SMALL_M_TILES.get(schedule, k)  # the small-M tiles see X = I one row band at a time
    y = torch.cat([run_mm(eye[r:r + rows], prepared, 128, schedule) for r in range(0, k, rows)])
    assert torch.equal(y, dequantize(w, dtype))


# ---- GEMM vs reference --------------------------------------------------------------

@pytest.mark.parametrize("m", M_SIZES)
@pytest.mark.parametrize("group", [-1, 64, 128])
@pytest.mark.parametrize("zero_points", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mm_every_schedule(dtype, zero_points, group, m):
    k, n = 512, 256
    w = make_weight(k, n, group, zero_points, dtype)
    prepared = MacheteBackend.prepare(spec_for(w, dtype), w)
    x = torch.randn(m, k, dtype=dtype, device=DEV)
    for schedule in SCHEDULES + [None]:
        if not fits(schedule, m) or (schedule is not None and n % ALIGN_N.get(schedule, 128)):
            continue
        poison_cache(m, n, dtype)
        assert_close(run_mm(x, prepared, group, schedule), x, w)


@pytest.mark.parametrize("n,k", [(1280, 8192), (8192, 3584)])
@pytest.mark.parametrize("zero_points", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mm_tp_sliced_shapes(dtype, zero_points, n, k):
    w = make_weight(k, n, 128, zero_points, dtype)
    prepared = MacheteBackend.prepare(spec_for(w, dtype), w)
    for m in (1, 33, 257):
        x = torch.randn(m, k, dtype=dtype, device=DEV)
        for schedule in SCHEDULES + [None]:
            if not fits(schedule, m) or (schedule is not None and n % ALIGN_N.get(schedule, 128)):
                continue
            poison_cache(m, n, dtype)
            assert_close(run_mm(x, prepared, 128, schedule), x, w)


@pytest.mark.parametrize("decomposition", ["_dp", "_sk", "_split2", "_split5", "_split16"])
@pytest.mark.parametrize("zero_points", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mm_decompositions(dtype, zero_points, decomposition):
    """Runtime K decompositions of every tile: data-parallel, Stream-K, split-K (with a
    split count that does not divide the 64 k-tiles), reduced through the workspace."""
    k, n = 4096, 512
    w = make_weight(k, n, 128, zero_points, dtype)
    prepared = MacheteBackend.prepare(spec_for(w, dtype), w)
    for m in (1, 33, 200):
        x = torch.randn(m, k, dtype=dtype, device=DEV)
        for tile in WGMMA_TILES:
            poison_cache(m, n, dtype)
            assert_close(run_mm(x, prepared, 128, tile + decomposition), x, w)


def test_raster_orders_keep_results():
    """A raster suffix (+f<S> / +t<S>) reorders a CUTLASS tile's output tiles over the CTAs:
    along features or tokens, swizzled, data-parallel or Stream-K, with the 2x1 clusters, the
    result is the reference's; own kernels take no raster suffix."""
    w = make_weight(1024, 2048, 128, True, torch.bfloat16)
    p = MacheteBackend.prepare(spec_for(w, torch.bfloat16), w)
    for m in (200, 1024):
        x = torch.randn(m, 1024, dtype=torch.bfloat16, device=DEV)
        for tile in WGMMA_TILES:
            for suffix in ("_dp+f4", "_sk+t2", "+f1", "+f8"):
                poison_cache(m, 2048, torch.bfloat16)
                assert_close(run_mm(x, p, 128, tile + suffix), x, w)
    for bad in ("128x256+f3", "128x256+x4", "256x64w+f4", "64x8+t1"):
        with pytest.raises(RuntimeError, match="unknown schedule"):
            run_mm(torch.randn(8, 1024, dtype=torch.bfloat16, device=DEV), p, 128, bad)


@pytest.mark.parametrize("zero_points", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_act_order(dtype, zero_points):
    k, n, m = 1024, 256, 33
    w = make_weight(k, n, 128, zero_points, dtype, act_order=True)
    sorted_w, perm = sort_by_group(w)
    prepared = MacheteBackend.prepare(spec_for(sorted_w, dtype, act_order=True), sorted_w)
    x = torch.randn(m, k, dtype=dtype, device=DEV)
    y = MacheteBackend.apply(spec_for(sorted_w, dtype, True), prepared, x[:, perm].contiguous())
    assert_close(y, x, w)  # reference: the unsorted weight with its g_idx, unpermuted x


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_input_view(dtype):
    k, n, m = 512, 256, 40
    w = make_weight(k, n, 128, False, dtype)
    prepared = MacheteBackend.prepare(spec_for(w, dtype), w)
    big = torch.randn(m, k + 64, dtype=dtype, device=DEV)
    x = big[:, 32:32 + k]  # row stride K+64, 64-byte offset: still TMA-legal
    assert not x.is_contiguous()
    y = run_mm(x, prepared, 128)
    assert_close(y, x, w)
    assert torch.equal(y, run_mm(x.contiguous(), prepared, 128))


def test_bad_inputs_have_clear_errors():
    dtype = torch.float16
    k, n = 256, 256
    w = make_weight(k, n, 128, False, dtype)
    p = MacheteBackend.prepare(spec_for(w, dtype), w)
    x = torch.randn(4, k, dtype=dtype, device=DEV)
    with pytest.raises(RuntimeError, match="unit column stride"):
        run_mm(torch.randn(k, 4, dtype=dtype, device=DEV).t(), p, 128)
    with pytest.raises(RuntimeError, match="scales must be contiguous"):
        torch.ops.vmp.machete_mm(x, p["w"], p["scales"][:1], None, 128, None)
    for bad in ("64x4", "64x8_sk", "128x64w_dp", "128x16_split1", "128x16_split17", "128x16_xx"):
        with pytest.raises(RuntimeError, match="unknown schedule"):
            run_mm(x, p, 128, bad)
    with pytest.raises(RuntimeError, match="at most 8 tokens, got M=9"):
        run_mm(torch.randn(9, k, dtype=dtype, device=DEV), p, 128, "64x8")
    with pytest.raises(RuntimeError, match="locks must be a contiguous int32"):
        torch.ops.vmp.machete_mm(x, p["w"], p["scales"], None, 128, "64x8", p["locks"].float())
    with pytest.raises(RuntimeError, match="group_size=32"):
        run_mm(x, p, 32)
    w384 = make_weight(k, 384, 128, False, dtype)
    p384 = MacheteBackend.prepare(spec_for(w384, dtype), w384)
    for tile in ("128x256", "256x32", "128x128c2", "256x64w", "256x32w"):
        with pytest.raises(RuntimeError, match=f"schedule {tile} needs N % 256 == 0, got N=384"):
            run_mm(x, p384, 128, tile)
    with pytest.raises(RuntimeError, match="multiple of 128"):
        torch.ops.vmp.machete_prepack(torch.zeros(64, 96, dtype=torch.uint8, device=DEV), False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_of_the_other_kind_is_refused(dtype):
    """A weight prepacked for u4b8 (int32, codes q-8) called with zero points, or for u4
    (uint32, codes q) called without, would be 8 codes off everywhere: the op refuses it from
    the weight's dtype, eagerly and (through the fake) when torch.compile traces it."""
    k, n = 256, 256
    sym, asym = make_weight(k, n, 128, False, dtype), make_weight(k, n, 128, True, dtype)
    ps, pa = MacheteBackend.prepare(spec_for(sym, dtype), sym), MacheteBackend.prepare(spec_for(asym, dtype), asym)
    assert ps["w"].dtype == torch.int32 and pa["w"].dtype == torch.uint32
    x = torch.randn(4, k, dtype=dtype, device=DEV)
    for schedule in (None, "64x8", "128x16"):
        with pytest.raises(RuntimeError, match=r"w \(Int\) was prepacked for u4b8.*but the call passes zeros"):
            torch.ops.vmp.machete_mm(x, ps["w"], pa["scales"], pa["zeros"], 128, schedule, ps["locks"])
        with pytest.raises(RuntimeError, match=r"w \(UInt32\) was prepacked for u4 with zero points.*passes no zeros"):
            torch.ops.vmp.machete_mm(x, pa["w"], ps["scales"], None, 128, schedule, pa["locks"])
    compiled = torch.compile(lambda x, w, s, z: torch.ops.vmp.machete_mm(x, w, s, z, 128, None), fullgraph=True)
    with pytest.raises(Exception, match=r"prepacked for u4b8.*but the call passes zeros"):
        compiled(x, ps["w"], pa["scales"], pa["zeros"])
    assert_close(compiled(x, pa["w"], pa["scales"], pa["zeros"]), x, asym)


# ---- serving contract ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_graph_capture_replay(dtype):
    k, n, m = 1024, 512, 64
    w = make_weight(k, n, 128, True, dtype)
    spec = spec_for(w, dtype)
    prepared = MacheteBackend.prepare(spec, w)
    x = torch.randn(m, k, dtype=dtype, device=DEV)
    graph, y = capture_graph(lambda: MacheteBackend.apply(spec, prepared, x))
    for _ in range(3):
        x.copy_(torch.randn(m, k, dtype=dtype, device=DEV))
        y.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_close(y, x, w)
        assert torch.equal(y, MacheteBackend.apply(spec, prepared, x))


def test_forced_schedule(monkeypatch):
    dtype = torch.bfloat16
    w = make_weight(512, 512, 64, True, dtype)  # N = 512: every schedule's alignment
    spec = spec_for(w, dtype)
    p = MacheteBackend.prepare(spec, w)
    x = torch.randn(5, 512, dtype=dtype, device=DEV)
    for name in schedules():
        monkeypatch.setattr(machete, "FORCED_SCHEDULE", name)  # (every schedule takes M=5)
        assert torch.equal(MacheteBackend.apply(spec, p, x), run_mm(x, p, 64, name))
    monkeypatch.setattr(machete, "FORCED_SCHEDULE", "nope")
    with pytest.raises(RuntimeError, match="unknown schedule"):
        MacheteBackend.apply(spec, p, x)


def test_schedules_and_heuristic():
    names = schedules()
    assert names == SCHEDULES
    for m in M_SIZES:
        for n, k in [(10240, 8192), (8192, 8192), (57344, 8192), (8192, 28672), (1280, 8192)]:
            pick = torch.ops.vmp.machete_heuristic(m, n, k)
            assert tile_of(pick) in names and n % ALIGN_N.get(tile_of(pick), 128) == 0, pick
            assert fits(pick, m), (m, pick)
            if m <= 16:  # docs/machete_heuristic.md: the small-M kernel up to 16 tokens
                assert pick == ("64x8" if m <= 8 else "64x16"), (m, n, k, pick)
    # Without sm_count the op uses this GPU's; the table itself: tests/test_machete_heuristic.py
    sms = torch.cuda.get_device_properties(DEV).multi_processor_count
    for m, n, k in [(32, 8192, 8192), (64, 8192, 8192), (96, 1152, 8192), (128, 17024, 8192)]:
        assert torch.ops.vmp.machete_heuristic(m, n, k) == torch.ops.vmp.machete_heuristic(m, n, k, sms)


def test_backend_selected_first_on_hopper():
    spec = LayerSpec(k=4096, n=4096, group_size=128, has_zeros=False, act_dtype=torch.float16)
    assert backends.select(spec, "layer") is MacheteBackend
    ok, why = MacheteBackend.can_implement(LayerSpec(k=4096, n=4000, group_size=128, has_zeros=False,
                                                     act_dtype=torch.float16), 90)
    assert not ok and "multiple of 128" in why
    ok, why = MacheteBackend.can_implement(spec, 80)
    assert not ok and "Hopper" in why


@pytest.mark.parametrize("zero_points", [False, True])
def test_opcheck(zero_points):
    dtype = torch.float16
    k, n = 256, 512  # N = 512: every schedule's alignment
    codes = torch.randint(0, 16, (k, n), dtype=torch.uint8, device=DEV)
    torch.library.opcheck(torch.ops.vmp.machete_prepack.default, (codes, zero_points))
    w = make_weight(k, n, 64, zero_points, dtype)
    p = MacheteBackend.prepare(spec_for(w, dtype), w)
    x = torch.randn(17, k, dtype=dtype, device=DEV)
    torch.library.opcheck(torch.ops.vmp.machete_mm.default, (x, p["w"], p["scales"], p.get("zeros"), 64, None))
    torch.library.opcheck(torch.ops.vmp.machete_mm.default, (x, p["w"], p["scales"], p.get("zeros"), 64, "128x32"))
    x8 = x[:8].contiguous()
    for sched in ("64x8", "64x16"):
        torch.library.opcheck(torch.ops.vmp.machete_mm.default,
                              (x8, p["w"], p["scales"], p.get("zeros"), 64, sched, p["locks"]))
    for sched in MID_M_TILES:
        torch.library.opcheck(torch.ops.vmp.machete_mm.default,
                              (x, p["w"], p["scales"], p.get("zeros"), 64, sched, p["locks"]))


# ---- small-M kernel -----------------------------------------------------------------

@pytest.mark.parametrize("schedule", list(SMALL_M_TILES))
@pytest.mark.parametrize("group", [-1, 64, 128])
@pytest.mark.parametrize("zero_points", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_small_m_shapes(dtype, zero_points, group, schedule):
    """Shapes that stress the small-M split: K % 128 == 64 (a half-empty last unit), row
    groups spread over many blocks (N=128, K=8192), one block holding many row groups
    (N=8192, K=256); every M up to the tile's width; the caller's locks end at zero."""
    for k, n in [(576, 256), (8192, 128), (256, 8192), (1600, 384)]:
        if group != -1 and k % group:
            continue
        w = make_weight(k, n, group, zero_points, dtype)
        p = MacheteBackend.prepare(spec_for(w, dtype), w)
        for m in range(1, SMALL_M_TILES[schedule] + 1, 3):
            x = torch.randn(m, k, dtype=dtype, device=DEV)
            poison_cache(m, n, dtype)
            assert_close(run_mm(x, p, group, schedule), x, w)
            assert not p["locks"].any(), "small-M kernel left a lock set"


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_m_deterministic_and_graph_safe(dtype):
    """Cross-block partials are summed in a fixed order: repeated calls, eager or CUDA-graph
    replays with the layer's persistent locks, are bit-identical."""
    k, n = 8192, 256
    w = make_weight(k, n, 128, False, dtype)
    spec = spec_for(w, dtype)
    p = MacheteBackend.prepare(spec, w)
    for m, sched in ((1, None), (12, None), (12, "64x16"), (16, "64x16")):
        x = torch.randn(m, k, dtype=dtype, device=DEV)
        call = (lambda: MacheteBackend.apply(spec, p, x)) if sched is None else (lambda: run_mm(x, p, 128, sched))
        first = call()
        assert_close(first, x, w)
        graph, y = capture_graph(call)
        for _ in range(3):
            assert torch.equal(call(), first)
            y.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(y, first)
        assert not p["locks"].any()


@pytest.mark.parametrize("zero_points", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_small_m_is_at_least_as_exact_as_wgmma(dtype, zero_points):
    """The small-M kernel multiplies exact integer codes and applies the scale in fp32, so
    its only rounding is the output's (u4b8): its error against the float64 product equals
    that of rounding the exact product to the act dtype. The wgmma tiles, like vLLM's
    kernels, round each dequantized weight first and must not be more exact. With zero
    points both carry Machete's pre-rounded z' = -s*z. Measured on an H200 (relative error,
    K=4096, N=2048, M=4): bf16 u4b8 1.672e-3 = output rounding 1.672e-3 vs wgmma 2.219e-3;
    bf16 zeros 2.81e-3 vs 3.18e-3; fp16 u4b8 2.08e-4 (rounding 2.06e-4) vs 2.75e-4."""
    torch.manual_seed(0)
    w = make_weight(4096, 2048, 128, zero_points, dtype)
    p = MacheteBackend.prepare(spec_for(w, dtype), w)
    x = torch.randn(4, 4096, dtype=dtype, device=DEV)
    exact = x.double() @ dequantize(w, torch.float64)

    def rel(y):
        return float((y.double() - exact).norm() / exact.norm())

    small, wgmma = rel(run_mm(x, p, 128, "64x8")), rel(run_mm(x, p, 128, "128x16"))
    assert small <= wgmma, (small, wgmma)
    if not zero_points:
        assert small <= 1.05 * rel(exact.to(dtype)), (small, rel(exact.to(dtype)))  # wgmma: ~1.33x


# ---- mid-M kernel -------------------------------------------------------------------

@pytest.mark.parametrize("schedule", MID_M_TILES)
@pytest.mark.parametrize("group", [-1, 64, 128])
@pytest.mark.parametrize("zero_points", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mid_m_shapes(dtype, zero_points, group, schedule):
    """Shapes that stress the mid-M split: one tile's K spread over every CTA (N=128,
    K=8192; a single cluster tile for the 512-row clusters at N=512), many tiles per CTA
    (N=8192, K=256), stripes that cut tiles at odd K tiles (K=1600, N=384, 1536); M below,
    at and across the token tile (rows past M arrive as TMA zeros and are not stored; under
    a cluster each CTA multicasts half the token rows); the caller's locks end at zero."""
    for k, n in [(576, 256), (8192, 128), (8192, 256), (8192, 512), (256, 8192), (1600, 384), (1600, 768),
                 (1600, 1536)]:
        if (group != -1 and k % group) or n % ALIGN_N.get(schedule, 128):
            continue
        w = make_weight(k, n, group, zero_points, dtype)
        p = MacheteBackend.prepare(spec_for(w, dtype), w)
        for m in (1, 17, 64, 65, 128, 200):
            x = torch.randn(m, k, dtype=dtype, device=DEV)
            poison_cache(m, n, dtype)
            assert_close(run_mm(x, p, group, schedule), x, w)
            assert not p["locks"].any(), "mid-M kernel left a lock set"


@pytest.mark.parametrize("schedule", MID_M_TILES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mid_m_deterministic_and_graph_safe(dtype, schedule):
    """Split tiles are summed in CTA order: repeated calls and CUDA-graph replays with the
    layer's persistent locks are bit-identical; the TMA descriptor of X is baked into the
    graph, so a replay reads the captured buffer's new contents."""
    k, n = 8192, 1024
    w = make_weight(k, n, 128, True, dtype)
    p = MacheteBackend.prepare(spec_for(w, dtype), w)
    for m in (64, 100, 128):
        x = torch.randn(m, k, dtype=dtype, device=DEV)
        first = run_mm(x, p, 128, schedule)
        assert_close(first, x, w)
        graph, y = capture_graph(lambda: run_mm(x, p, 128, schedule))
        for _ in range(3):
            assert torch.equal(run_mm(x, p, 128, schedule), first)
            y.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(y, first)
        x.copy_(torch.randn(m, k, dtype=dtype, device=DEV))
        graph.replay()
        torch.cuda.synchronize()
        assert_close(y, x, w)
        assert not p["locks"].any()


def test_mid_m_refuses_misaligned_activations():
    """TMA reads X: a row stride that is not a multiple of 8 elements is refused by the op
    before the kernel, with the fix named."""
    dtype = torch.float16
    w = make_weight(256, 256, 128, False, dtype)
    p = MacheteBackend.prepare(spec_for(w, dtype), w)
    x = torch.randn(70, 260, dtype=dtype, device=DEV)[:, :256]
    with pytest.raises(RuntimeError, match="row stride that is a multiple of 8"):
        run_mm(x, p, 128, "128x64w")
