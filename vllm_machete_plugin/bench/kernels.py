"""Kernel benchmark: our backends vs vLLM 0.26.0's Marlin and Machete vs fp16 vs the floor.

Llama-3.1-70B layer shapes, g=128, symmetric u4b8 weights, fp16 activations. Every
kernel runs on identical data; each measurement is the CUDA-graph replay time of a
graph that calls the kernel over several weight copies, enough bytes to exceed 2x L2,
so weights come from device memory as in serving; the graphs of one shape are replayed
in interleaved rounds ordered by a Williams design (every column in every position and
after every other column alike), each timed replay right after an untimed one
of the same graph (median per column), so neither drift nor the kernel run just before
favours one column. With --in-model every call is preceded, as in the model, by a small
kernel that writes its X (a copy: the RMSNorm / attention / SiLU before each decoder GEMM),
so no GEMM follows a GEMM (a PDL prologue of ours cannot overlap the previous call's tail, as
it cannot in the model) and X is fresh in L2; the copies' own time (a graph of copies only,
"prelude_us") is subtracted. floor = (int4 weight + fp16 scale
+ fp16 activation bytes) / measured device copy bandwidth (read + write counted).
vLLM columns are null when vLLM (or its compiled ops) cannot be imported.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import statistics
import time
from typing import Callable, Optional

import torch

from .. import ops
from ..backends import SERVING_BACKENDS, device_capability
from ..backends.base import LayerSpec
from ..canonical import CanonicalW4, dequantize, pack_int4
from ..marlin_layout_ref import padded_kn
from .gpu_clock import gpu_power_w, sm_clock_mhz

LAYERS = {  # name: (N, K), Llama-3.1-70B, TP=1
    "qkv": (10240, 8192),
    "o": (8192, 8192),
    "gate_up": (57344, 8192),
    "down": (8192, 28672),
}
M_VALUES = (1, 16, 32, 64, 128, 256, 512, 1024, 4096)
GROUP = 128
VLLM_COLS = ["vllm_marlin_us", "vllm_machete_us", "vllm_humming_us"]
PDL_ENV = "VMP_PDL"  # "0": our kernels launch without programmatic dependent launch


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, read + write counted."""
    src = torch.empty(nbytes // 2, dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    return 2 * src.numel() * src.element_size() / statistics.median(times)


def copies_for(bytes_per_copy: int) -> int:
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    return max(1, math.ceil(2 * l2 / bytes_per_copy))


def capture_graph(calls: list[Callable[[], object]], min_calls: int = 20) -> tuple[torch.cuda.CUDAGraph, int]:
    """A CUDA graph that runs `calls` in turn, repeated to at least `min_calls` calls,
    warmed up and replayed once; returns it with its number of calls."""
    reps = max(1, math.ceil(min_calls / len(calls)))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in calls:  # warm-up outside capture (lazy init, workspace allocation)
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            for fn in calls:
                fn()
    graph.replay()
    torch.cuda.synchronize()
    return graph, reps * len(calls)


def round_orders(cols: list[str], rounds: int) -> list[list[str]]:
    """Replay order of each round: the rows of a Williams design, taken in turn. Its n rows
    (n = len(cols); 2n when n is odd: the n rows and their mirrors) put every column once in
    every position and after every other column once (twice, n odd), so no column is always
    timed after the same one. (The plain rotation used before kept each column's predecessor
    fixed, so under the power cap a column could carry that one kernel's clock: two columns
    of the same launch read up to 4% apart in kernels-h200-2026-12-04-marlin-v4; whether this
    was the cause is not measured.)"""
    n = len(cols)
    base = [0] + [(j + 1) // 2 if j % 2 else n - j // 2 for j in range(1, n)]  # 0, 1, n-1, 2, n-2, ...
    rows = [[(b + r) % n for b in base] for r in range(n)]
    if n % 2:
        rows += [row[::-1] for row in rows]
    return [[cols[i] for i in rows[r % len(rows)]] for r in range(rounds)]


def sustained(graphs: dict[str, tuple[torch.cuda.CUDAGraph, int]], seconds: float) -> dict[str, dict[str, float]]:
    """Each graph alone for `seconds` (>= 1: NVML's power window), replayed back to back, then
    its per-call µs over that run, the SM clock and power read at its end, and the energy per
    call (W x µs = µJ). At the power cap µJ is the cap times µs; what tells kernels apart there
    is the clock at which each meets the cap, i.e. its power per MHz (activity per cycle)."""
    out = {}
    for col, (graph, calls) in graphs.items():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        replays, t0 = 0, time.monotonic()
        start.record()
        while time.monotonic() - t0 < seconds:
            graph.replay()
            replays += 1
            if replays % 4 == 0:
                torch.cuda.synchronize()  # keep the host within a few replays of the GPU
        end.record()
        end.synchronize()
        us = start.elapsed_time(end) * 1e3 / (replays * calls)
        watts = gpu_power_w()
        out[col] = {"us": us, "sm_mhz": sm_clock_mhz(), "power_w": watts,
                    "uJ": None if watts is None else watts * us}
    return out


def interleaved_times_us(graphs: dict[str, tuple[torch.cuda.CUDAGraph, int]], rounds: int = 0,
                         clocks: Optional[dict[str, float]] = None) -> dict[str, float]:
    """Median per-call time of each graph over `rounds` rounds (default: one per column).
    Each round replays every graph in turn (round_orders), once untimed and then once
    timed: drift during a shape's timing falls on all columns alike, and the kernel run
    just before a timed replay is the same graph (clocks under a power cap follow the
    power the previous kernel drew). `clocks`, if given, receives each column's median SM
    clock (MHz) read right after its timed replays; NVML updates it coarsely, so columns of one
    row often read the same. No power here: a timed replay lasts milliseconds, NVML's power
    reading a second (every column of a row read the same watts on an H200, 2026-12-04);
    sustained() measures it."""
    cols = list(graphs)
    times: dict[str, list[float]] = {col: [] for col in cols}
    mhz: dict[str, list[float]] = {col: [] for col in cols}
    for order in round_orders(cols, rounds or len(cols)):
        for col in order:
            graph, calls = graphs[col]
            graph.replay()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times[col].append(start.elapsed_time(end) * 1e3 / calls)
            if clocks is not None and (f := sm_clock_mhz()) is not None:
                mhz[col].append(f)
    if clocks is not None:
        clocks.update({col: statistics.median(f) for col, f in mhz.items() if f})
    return {col: statistics.median(t) for col, t in times.items()}


def with_prelude(fns: list[Callable], x: torch.Tensor, x_src: torch.Tensor) -> list[Callable[[], object]]:
    """--in-model: each call x -> y preceded by the kernel that writes x (x.copy_(x_src))."""
    return [lambda fn=fn: (x.copy_(x_src), fn(x)) for fn in fns]


def minus_prelude(times: dict[str, float], prelude: float) -> dict[str, float]:
    """Per-call times of the --in-model graphs less the copy's own per-call time."""
    return {col: t - prelude for col, t in times.items()}


def random_weight(n: int, k: int) -> CanonicalW4:
    codes = torch.randint(0, 16, (k, n), dtype=torch.uint8, device="cuda")
    scales = (torch.rand(k // GROUP, n, device="cuda") * 0.02 + 0.002).half()
    return CanonicalW4(codes, scales, None, GROUP)


class VllmKernels:
    """vLLM 0.26.0's own Marlin and Machete on a CanonicalW4, as vLLM prepares them."""

    def __init__(self) -> None:
        from vllm import _custom_ops as vops  # noqa: F401 (loads vLLM's compiled ops)
        from vllm.model_executor.layers.quantization.utils import marlin_utils
        from vllm.scalar_type import scalar_types
        self.ops, self.mu, self.u4b8 = vops, marlin_utils, scalar_types.uint4b8
        self.has_machete = hasattr(torch.ops._C, "machete_mm") and device_capability() == 90
        try:
            from vllm.model_executor.kernels.linear.mixed_precision.humming import HummingLinearKernel
            from vllm.model_executor.kernels.linear.mixed_precision.MPLinearKernel import MPLinearLayerConfig
            self.humming_kernel, self.mp_config = HummingLinearKernel, MPLinearLayerConfig
            self.has_humming = True
        except ImportError as e:  # humming-kernels absent
            print(f"[bench] vLLM's Humming path unavailable ({e}); its column is null")
            self.has_humming = False

    def marlin(self, w: CanonicalW4) -> Callable[[torch.Tensor], torch.Tensor]:
        k, n = w.k, w.n
        packed = pack_int4(w.codes, dim=0)  # GPTQ layout: int32 [K/8, N]
        empty = torch.empty(0, dtype=torch.int, device="cuda")
        qw = self.ops.gptq_marlin_repack(packed, empty, k, n, 4)
        s = self.mu.marlin_permute_scales(w.scales, k, n, GROUP)
        ws = self.mu.marlin_make_workspace_new(torch.device("cuda"))
        return lambda x: self.ops.marlin_gemm(x, None, qw, None, s, None, None, empty, empty, empty, ws,
                                              self.u4b8, x.shape[0], n, k, is_k_full=True,
                                              use_atomic_add=False, use_fp32_reduce=True)

    def machete(self, w: CanonicalW4) -> Callable[[torch.Tensor], torch.Tensor]:
        packed = pack_int4(w.codes, dim=0).t().contiguous().t()  # column-major, as vLLM passes it
        qw = self.ops.machete_prepack_B(packed, torch.float16, self.u4b8, torch.float16)
        s = w.scales.contiguous()
        return lambda x: self.ops.machete_mm(a=x, b_q=qw, b_type=self.u4b8, b_group_scales=s,
                                             b_group_size=GROUP)


    def humming(self, w: CanonicalW4) -> Callable[[torch.Tensor], torch.Tensor]:
        """vLLM's HummingLinearKernel (linear_backend="humming") on a layer holding the
        parameters vLLM's GPTQ method creates: qweight int32 [K/8, N] packed along K,
        scales [K/g, N]; its own process_weights_after_loading repacks them."""
        k, n = w.k, w.n
        layer = torch.nn.Module()
        layer.input_size_per_partition, layer.input_size = k, k
        layer.output_partition_sizes, layer.params_dtype, layer.has_bias = [n], torch.float16, False
        qweight = torch.nn.Parameter(pack_int4(w.codes, dim=0), requires_grad=False)
        qweight.input_dim, qweight.output_dim, qweight.packed_dim, qweight.packed_factor = 0, 1, 0, 8
        scales = torch.nn.Parameter(w.scales.contiguous(), requires_grad=False)
        scales.input_dim, scales.output_dim = 0, 1
        layer.register_parameter("qweight", qweight)
        layer.register_parameter("scales", scales)
        config = self.mp_config(full_weight_shape=(k, n), partition_weight_shape=(k, n), weight_type=self.u4b8,
                                act_type=torch.float16, group_size=GROUP, zero_points=False, has_g_idx=False)
        kernel = self.humming_kernel(config, w_q_param_name="qweight", w_s_param_name="scales")
        kernel.process_weights_after_loading(layer)
        return lambda x: kernel.apply_weights(layer, x)


def load_vllm() -> tuple[Optional[VllmKernels], str]:
    try:
        import vllm
        return VllmKernels(), vllm.__version__
    except Exception as e:  # vLLM absent or its compiled ops unusable on this host
        print(f"[bench] vLLM kernels unavailable ({type(e).__name__}: {e}); their columns are null")
        return None, None


def without_pdl(fn: Callable) -> Callable:
    """fn with VMP_PDL=0 while it launches (kernels/launch.h reads it at every launch; a
    CUDA graph captured from it keeps plain launches)."""
    def run(x):
        old = os.environ.get(PDL_ENV)
        os.environ[PDL_ENV] = "0"
        try:
            return fn(x)
        finally:
            if old is None:
                del os.environ[PDL_ENV]
            else:
                os.environ[PDL_ENV] = old
    return run


def schedule_col(schedule: str) -> str:
    """Column of our Machete forced to one schedule (--schedules)."""
    return f"machete@{schedule}_us"


def plan_col(plan: str) -> str:
    """Column of our Marlin under one launch plan (--marlin-plans, VMP_MARLIN_PLAN's form)."""
    return f"marlin@{plan}_us"


def smem_limits() -> tuple[int, int, int, int]:
    """This GPU's (SMs, shared memory per SM, per-block opt-in, reserved per block), the limits
    the Marlin planner reads."""
    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    per_sm, optin = p.shared_memory_per_multiprocessor, p.shared_memory_per_block_optin
    return p.multi_processor_count, per_sm, optin, per_sm - optin


def marlin_tile(m: int, n: int, k: int, plan: Optional[str], limits: tuple[int, int, int, int]) -> Optional[str]:
    """The tile vmp::marlin_gemm runs at M = m on an (N, K) layer under `plan` (VMP_MARLIN_PLAN's
    form; None: no caps) on a GPU with `limits` (smem_limits()), as "<rows>x<chunks> s<stages>",
    plus " drained" where the reduction tile overlays the stages; None without the op."""
    if not ops.has_op("marlin_tile_plan"):
        return None
    k_pad, n_pad = padded_kn(k, n)
    t = torch.ops.vmp.marlin_tile_plan(m, n_pad, k_pad, *limits, plan)
    if not t:
        return None
    mb, chunks, stages, _, drain, _ = t
    return f"{16 * mb}x{chunks} s{stages}" + (" drained" if drain else "")


def forced_mm(x: torch.Tensor, prepared: dict, schedule: str) -> torch.Tensor:
    """vmp::machete_mm on a MacheteBackend-prepared u4b8 g128 weight, forced to one schedule."""
    return torch.ops.vmp.machete_mm(x, prepared["w"], prepared["scales"], None, GROUP, schedule, prepared["locks"])


def implementations(n: int, k: int, weights: list[CanonicalW4], vk: Optional[VllmKernels],
                    cols: list[str]) -> dict[str, list[Callable]]:
    """Column name -> one callable x -> y per weight copy, for the wanted columns this
    host can run: ours ("<backend>_us", "machete@<schedule>_us": vmp::machete_mm forced to
    that schedule, "marlin@<plan>_us": vmp::marlin_gemm under that plan) and vLLM's
    ("vllm_marlin_us", "vllm_machete_us", "vllm_humming_us"), all on the same u4b8 g128 fp16
    weights."""
    spec = LayerSpec(k=k, n=n, group_size=GROUP, has_zeros=False, act_dtype=torch.float16)
    impls: dict[str, list[Callable]] = {}
    forced = [c.removeprefix("machete@").removesuffix("_us") for c in cols if c.startswith("machete@")]
    plans = [c.removeprefix("marlin@").removesuffix("_us") for c in cols if c.startswith("marlin@")]
    for b in SERVING_BACKENDS:
        extra = (forced and b.name == "machete") or (plans and b.name == "marlin")
        if (f"{b.name}_us" in cols or extra) and b.can_implement(spec, device_capability())[0]:
            prepared = [b.prepare(spec, w) for w in weights]
            if f"{b.name}_us" in cols:
                impls[f"{b.name}_us"] = [lambda x, b=b, p=p: b.apply(spec, p, x) for p in prepared]
            if f"{b.name}_nopdl_us" in cols:  # the same kernels launched without PDL
                impls[f"{b.name}_nopdl_us"] = [without_pdl(fn) for fn in impls[f"{b.name}_us"]]
            for s in forced if b.name == "machete" else []:
                impls[schedule_col(s)] = [lambda x, p=p, s=s: forced_mm(x, p, s) for p in prepared]
            for pl in plans if b.name == "marlin" else []:
                impls[plan_col(pl)] = [lambda x, b=b, p=p, pl=pl: b.apply(spec, p, x, pl) for p in prepared]
    if vk is not None:
        for col, make, ok in (("vllm_marlin_us", vk.marlin, True), ("vllm_machete_us", vk.machete, vk.has_machete),
                              ("vllm_humming_us", vk.humming, vk.has_humming)):
            if col in cols and ok:
                try:
                    impls[col] = [make(w) for w in weights]
                except Exception as e:  # a peer that fails to prepare is reported, not fatal
                    print(f"[bench] {col} unavailable on N={n} K={k}: {type(e).__name__}: {e}", flush=True)
    return impls


def our_cols(ours: list, pdl_ab: bool = False) -> list[str]:
    """Columns of our backends; with pdl_ab also "<backend>_nopdl_us" (plain launches)."""
    return [f"{b.name}{v}_us" for b in ours for v in ([""] + (["_nopdl"] if pdl_ab else []))]


def runnable_at(impls: dict[str, list[Callable]], x: torch.Tensor, where: str) -> dict[str, list[Callable]]:
    """The columns that can run x. A forced schedule whose tile cannot take this M (the small-M
    tiles above their token limit), or a Marlin plan the op refuses, is left empty for this row,
    with the op's message printed, instead of ending the run."""
    active = dict(impls)
    for col in [c for c in impls if "@" in c]:
        try:
            impls[col][0](x)
        except RuntimeError as e:
            print(f"[bench] {col} left out at {where}: {e}", flush=True)
            del active[col]
    return active


def bench_layer(name: str, n: int, k: int, m_values, bandwidth: float, vk: Optional[VllmKernels],
                ours: list, check: bool, peers: Optional[list[str]] = None, pdl_ab: bool = False,
                forced: tuple[str, ...] = (), in_model: bool = False, sustain: float = 0.0) -> list[dict]:
    """One layer shape at every M. `forced`: extra columns of ours (schedule_col, plan_col)."""
    w4_bytes = n * k // 2 + (k // GROUP) * n * 2
    weights = [random_weight(n, k) for _ in range(copies_for(w4_bytes))]
    impls = implementations(n, k, weights, vk, our_cols(ours, pdl_ab) + list(forced)
                            + (VLLM_COLS if peers is None else peers))
    if "vllm_humming_us" in impls:  # JIT-compile Humming's kernels for every M before any timing
        for m in m_values:
            impls["vllm_humming_us"][0](torch.zeros(m, k, device="cuda", dtype=torch.float16))
    fp16 = [dequantize(w, torch.float16) for w in weights[:copies_for(n * k * 2)]]
    impls["fp16_us"] = [lambda x, wf=wf: torch.matmul(x, wf) for wf in fp16]

    # Which tile each Marlin column runs, read from the planner with this GPU's limits.
    marlin_cols = [c.removesuffix("_us") for c in impls if c == "marlin_us" or c.startswith("marlin@")]
    limits = smem_limits() if marlin_cols else None
    rows = []
    for m in m_values:
        x = torch.randn(m, k, device="cuda").half()
        row = {"layer": name, "N": n, "K": k, "M": m,
               "floor_us": (w4_bytes + m * k * 2) / bandwidth * 1e6,
               "fp16_us": None, **{c: None for c in VLLM_COLS}}
        active = runnable_at(impls, x, f"{name} M={m}")
        if check:  # every kernel must compute the same product before it is timed
            ref = torch.matmul(x, fp16[0])
            for col, fns in list(active.items()):
                err = ((fns[0](x).float() - ref.float()).norm() / ref.float().norm()).item()
                if not err < 1e-2:
                    if not col.startswith("vllm_"):
                        raise RuntimeError(f"{col} wrong on {name} M={m}: relative error {err:.3g}")
                    print(f"[bench] {col} dropped on {name}: relative error {err:.3g} at M={m}", flush=True)
                    del impls[col], active[col]
        if in_model:
            x_src = x.clone()
            graphs = {col: capture_graph(with_prelude(fns, x, x_src)) for col, fns in active.items()}
            graphs["prelude_us"] = capture_graph([lambda: x.copy_(x_src)])
        else:
            graphs = {col: capture_graph([lambda fn=fn: fn(x) for fn in fns]) for col, fns in active.items()}
        clocks: dict[str, float] = {}
        times = interleaved_times_us(graphs, clocks=clocks)
        if in_model:
            row["prelude_us"] = times.pop("prelude_us")
            times = minus_prelude(times, row["prelude_us"])
        row.update(times)
        row["sm_mhz"] = {col.removesuffix("_us"): f for col, f in clocks.items() if col != "prelude_us"}
        ran = [c for c in marlin_cols if f"{c}_us" in active]
        if ran:
            row["marlin_tiles"] = {c: marlin_tile(m, n, k, c.partition("@")[2] or os.environ.get("VMP_MARLIN_PLAN"),
                                                  limits) for c in ran}
        if sustain > 0:  # with --in-model a sustained call includes its prelude copy
            row["sustained"] = {col.removesuffix("_us"): v for col, v in
                                sustained({c: g for c, g in graphs.items() if c != "prelude_us"}, sustain).items()}
        del graphs
        rows.append(row)
        print(f"[bench] {name} M={m}: " + ", ".join(
            f"{c}={v:.1f}" for c, v in row.items() if c.endswith("_us") and v is not None)
            + " | SM MHz " + ", ".join(f"{c}={f:.0f}" for c, f in row["sm_mhz"].items())
            + "".join(f" | {c}: {t}" for c, t in row.get("marlin_tiles", {}).items())
            + "".join(f" | sustained {c}: {v['us']:.1f} us, {_num(v['sm_mhz'])} MHz, {_num(v['power_w'])} W, "
                      f"{_num(v['uJ'])} uJ" for c, v in row.get("sustained", {}).items()), flush=True)
    return rows


def _num(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.0f}"


def _kcycles(v: dict) -> Optional[float]:
    """SM cycles per call, in thousands (µs x MHz / 1000): the time at a fixed clock."""
    return None if v.get("sm_mhz") is None else v["us"] * v["sm_mhz"] / 1e3


def sustained_markdown(rows: list[dict]) -> str:
    """The --sustain readings: per (layer, M) and column, µs per call, SM MHz, W, µJ and
    thousands of SM cycles per call; per M the sums of µs, µJ and cycles over the layers."""
    sel = [r for r in rows if r.get("sustained")]
    if not sel:
        return ""
    cols = list(dict.fromkeys(c for r in sel for c in r["sustained"]))
    lines = ["| layer | M | " + " | ".join(f"{c}: µs / MHz / W / µJ / k cycles" for c in cols) + " |",
             "|" + "---|" * (2 + len(cols))]
    for r in sel:
        cells = []
        for c in cols:
            v = r["sustained"].get(c)
            cells.append("-" if v is None else f"{v['us']:.1f} / {_num(v['sm_mhz'])} / {_num(v['power_w'])} / "
                         f"{_num(v['uJ'])} / {_num(_kcycles(v))}")
        lines.append(f"| {r['layer']} | {r['M']} | " + " | ".join(cells) + " |")

    def total(vs: list[dict], value) -> str:
        parts = [value(v) for v in vs]
        return _num(None if None in parts else sum(parts))

    for m in sorted({r["M"] for r in sel}):
        at = [r for r in sel if r["M"] == m]
        cells = []
        for c in cols:
            vs = [r["sustained"].get(c) for r in at]
            cells.append("-" if None in vs else f"{sum(v['us'] for v in vs):.1f} / - / - / "
                         f"{total(vs, lambda v: v['uJ'])} / {total(vs, _kcycles)}")
        lines.append(f"| sum | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sustained_as_rows(rows: list[dict]) -> list[dict]:
    """The --sustain µs in the shape of the CUDA-graph rows ({layer, M, <col>_us}), for
    ratio_to_best_vllm; rows without a sustained reading are left out."""
    return [{"layer": r["layer"], "M": r["M"], **{f"{c}_us": v["us"] for c, v in r["sustained"].items()}}
            for r in rows if r.get("sustained")]


def markdown(rows: list[dict], cols: list[str]) -> str:
    head = ["layer", "M"] + cols
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [r["layer"], str(r["M"])] + ["-" if r.get(c) is None else f"{r[c]:.1f}" for c in cols]
        lines.append("| " + " | ".join(vals) + " |")
    # per-M sums over layers: the number the targets are stated in
    for m in sorted({r["M"] for r in rows}):
        sel = [r for r in rows if r["M"] == m]
        vals = ["sum", str(m)] + ["-" if any(r.get(c) is None for r in sel) else f"{sum(r[c] for r in sel):.1f}"
                                 for c in cols]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], cols: list[str], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        sel = [r for r in rows if r["layer"] == layer]
        for c in cols:
            pts = [(r["M"], r[c]) for r in sel if r.get(c) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=c.removesuffix("_us"))
        ax.set(xscale="log", yscale="log", xlabel="M", ylabel="µs", title=f"{layer} N={sel[0]['N']} K={sel[0]['K']}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def ratio_to_best_vllm(rows: list[dict], ours: str = "machete_us") -> list[tuple[int, float, str]]:
    """Per M: (M, sum over layers of `ours` / sum of the fastest vLLM kernel, its column),
    the fastest chosen by the layer sums; M values where `ours` or every peer is missing
    are left out."""
    out = []
    for m in sorted({r["M"] for r in rows}):
        sel = [r for r in rows if r["M"] == m]
        if any(r.get(ours) is None for r in sel):
            continue
        peers = {c: sum(r[c] for r in sel) for c in VLLM_COLS if all(r.get(c) is not None for r in sel)}
        if peers:
            best = min(peers, key=peers.get)
            out.append((m, sum(r[ours] for r in sel) / peers[best], best))
    return out


def plot_ratio(rows: list[dict], path: str, ours: list[str]) -> None:
    """One line per backend of ours: layer-summed time / best of vLLM's kernels, per M."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for col in ours:
        pts = ratio_to_best_vllm(rows, col)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"our {col.removesuffix('_us')}")
    ax.axhline(1.0, color="k", lw=1, ls="--", label="best of vLLM (Marlin, Machete, Humming)")
    ax.set(xscale="log", xlabel="M (tokens)", ylabel="time / best of vLLM (lower is better)",
           title="Llama-3.1-70B, 4 GEMMs summed")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vllm_machete_plugin.bench kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--plot", help="write a PNG plot here (needs matplotlib)")
    ap.add_argument("--m", default=",".join(map(str, M_VALUES)), help="comma-separated M values")
    ap.add_argument("--layers", default=",".join(LAYERS), help=f"comma-separated subset of {list(LAYERS)}")
    ap.add_argument("--backends", default="", help="comma-separated subset of our backends (default: all usable)")
    ap.add_argument("--peers", default=",".join(c.removesuffix("_us") for c in VLLM_COLS),
                    help="comma-separated subset of vLLM's kernels to time, or 'none' (fp16 always runs: it is the check)")
    ap.add_argument("--no-check", action="store_true", help="skip the correctness check before timing")
    ap.add_argument("--pdl-ab", action="store_true",
                    help="also time our kernels launched without programmatic dependent launch (<backend>_nopdl)")
    ap.add_argument("--schedules", default="",
                    help="comma-separated Machete schedules to time as extra columns machete@<schedule> "
                         "(vmp::machete_schedules(), with the suffixes of machete.h; e.g. 128x64w,128x256+t4; "
                         "a tile without a raster suffix runs in CUTLASS's own order)")
    ap.add_argument("--marlin-plans", action="append", default=[], metavar="PLAN",
                    help="time our Marlin under this launch plan too, as column marlin@PLAN (VMP_MARLIN_PLAN's "
                         "form, e.g. order=1, or smem=102400 for the plan of a 100 KB GPU); repeatable")
    ap.add_argument("--in-model", action="store_true",
                    help="precede every call with a kernel that writes its X, as in the model (see above)")
    ap.add_argument("--sustain", type=float, default=0.0, metavar="SECONDS",
                    help="after each shape's timing, run every column alone for SECONDS (>= 1) and record its "
                         "µs, SM clock, power and energy per call (NVML's power is a ~1 s average)")
    args = ap.parse_args(argv)
    if 0 < args.sustain < 1:
        raise SystemExit("--sustain must be 0 (off) or at least 1 s: NVML's power reading averages about a second")
    if not torch.cuda.is_available():
        raise SystemExit("the kernel benchmark needs a CUDA GPU")
    from ..ops import require_kernels
    require_kernels("the kernel benchmark")

    cap = device_capability()
    wanted = {s for s in args.backends.split(",") if s}
    probe = LayerSpec(k=8192, n=8192, group_size=GROUP, has_zeros=False, act_dtype=torch.float16)
    ours = [b for b in SERVING_BACKENDS if (not wanted or b.name in wanted) and b.can_implement(probe, cap)[0]]
    vk, vllm_version = load_vllm()
    bandwidth = copy_bandwidth()
    print(f"[bench] {torch.cuda.get_device_name()}: copy bandwidth {bandwidth / 1e9:.0f} GB/s; "
          f"ours: {[b.name for b in ours]}")
    m_values = [int(s) for s in args.m.split(",") if s]
    peers = [f"{c}_us" for c in args.peers.split(",") if c and c != "none"]
    if set(peers) - set(VLLM_COLS):
        raise SystemExit(f"unknown --peers {sorted(set(peers) - set(VLLM_COLS))}; choose from {VLLM_COLS}")
    schedules = tuple(s for s in args.schedules.split(",") if s)
    if schedules and not any(b.name == "machete" for b in ours):
        raise SystemExit("--schedules needs our Machete backend (a Hopper GPU and _machete_C)")
    # the tile part is checked here; decomposition and raster suffixes by the op's own parser
    unknown = {s for s in schedules if re.split(r"[_+]", s)[0] not in torch.ops.vmp.machete_schedules()}
    if unknown:
        raise SystemExit(f"unknown --schedules {sorted(unknown)}; choose from {torch.ops.vmp.machete_schedules()} "
                         "(CUTLASS tiles optionally with _dp, _sk, _split<S>, then +f<S> / +t<S>)")
    if args.marlin_plans and not any(b.name == "marlin" for b in ours):
        raise SystemExit("--marlin-plans needs our Marlin backend (_C built for this GPU)")
    forced = tuple(schedule_col(s) for s in schedules) + tuple(plan_col(p) for p in args.marlin_plans)
    rows = []
    for name in [s for s in args.layers.split(",") if s]:
        n, k = LAYERS[name]
        rows += bench_layer(name, n, k, m_values, bandwidth, vk, ours, not args.no_check, peers, args.pdl_ab,
                            forced, args.in_model, args.sustain)
        torch.cuda.empty_cache()

    cols = ["floor_us", "fp16_us"] + VLLM_COLS + our_cols(ours, args.pdl_ab) + list(forced)
    print(markdown(rows, cols))
    if args.sustain:
        print(sustained_markdown(rows))
    if args.json:
        meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "vllm": vllm_version,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "copy_bandwidth_GBps": bandwidth / 1e9, "group_size": GROUP, "dtype": "float16",
                "weights": "u4b8 (symmetric)", "in_model": args.in_model, "rows": rows}
        with open(args.json, "w") as f:
            json.dump(meta, f, indent=1)
    for col in [f"{b.name}_us" for b in ours] + list(forced):
        for how, table in [("", rows)] + ([(", sustained", sustained_as_rows(rows))] if args.sustain else []):
            print(f"[bench] {col} / best of vLLM per M{how}: " + ", ".join(
                f"{m}: {r:.2f} ({best.removesuffix('_us')})" for m, r, best in ratio_to_best_vllm(table, col)))
    if args.plot:
        plot(rows, cols, args.plot)
        plot_ratio(rows, args.plot.removesuffix(".png") + "-ratio.png", [f"{b.name}_us" for b in ours])
    return 0
