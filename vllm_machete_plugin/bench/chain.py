"""Decode-step chain benchmark: the L2 prefetch of the next layer's weight (VMP_L2_PREFETCH_MB: the
small-M Machete kernel, machete_small_m.cu, and Marlin's 16-row tiles, marlin_gemm.cu) measured
where it acts, between GEMMs.

One CUDA graph holds `--layers` decoder layers of Llama-3.1-70B's four W4A16 GEMMs (qkv, o,
gate_up, down; distinct random weights, 428 MB a layer, so every layer comes from DRAM), each
GEMM preceded, as in the model, by a kernel that writes its X and then by a gap kernel that
spins for about `--gaps` µs without touching memory (what the RMSNorm, attention or SiLU-mul
kernels leave: about 24 µs a layer at batch 1 on an H200). Each GEMM is linked to the next as
the linear method links them (the last to none). Columns are prefetch budgets; a column of
the gaps alone is subtracted, so a cell is the four GEMMs' µs per decoder layer. Graphs are
replayed in interleaved rounds (kernels.interleaved_times_us).

  python -m vllm_machete_plugin.bench chain [--backend machete|marlin] [--m 1,16] [--gaps 0,3,10]
      [--budgets 0,8,16,32] [--layers 4]
"""
from __future__ import annotations

import argparse
import datetime
import json
from typing import Callable

import torch

from ..backends.base import LayerSpec
from .kernels import GROUP, LAYERS, capture_graph, copy_bandwidth, interleaved_times_us, random_weight

ORDER = ("qkv", "o", "gate_up", "down")  # the order the linears of a decoder layer run in
SPIN_CYCLES_PER_US = 1980  # torch.cuda._sleep counts SM cycles; the H200's clock at batch 1 decode


def parse_list(text: str, what: str, kind=float) -> list:
    try:
        values = [kind(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values):
        raise SystemExit(f"--{what} must be comma-separated numbers >= 0, got {text!r}")
    return values


def chain_links(n_layers: int) -> list[tuple[int, str, tuple[int, str] | None]]:
    """(decoder layer, GEMM, the GEMM that runs next or None) in model order."""
    seq = [(i, name) for i in range(n_layers) for name in ORDER]
    return [(i, name, seq[j + 1] if j + 1 < len(seq) else None) for j, (i, name) in enumerate(seq)]


def build_calls(backend, m: int, gap_us: float, budget: int, weights: dict, x_srcs: dict, xs: dict,
                n_layers: int) -> list[Callable[[], object]]:
    """The chain's calls: per GEMM, the X write, the gap and the GEMM (budget < 0: gaps only)."""
    calls = []
    for i, name, nxt in chain_links(n_layers):
        spec, w = weights[(i, name)]
        x, x_src = xs[(m, name)], x_srcs[(m, name)]
        next_w = None if nxt is None else weights[nxt][1]
        cycles = int(gap_us * SPIN_CYCLES_PER_US)

        def call(x=x, x_src=x_src, spec=spec, w=w, next_w=next_w, cycles=cycles):
            x.copy_(x_src)
            if cycles:
                torch.cuda._sleep(cycles)
            if budget >= 0:
                backend.apply(spec, w, x, next_weights=next_w, prefetch=budget)
        calls.append(call)
    return calls


def run(backend, m_values: list[int], gaps: list[float], budgets_mb: list[float], n_layers: int) -> list[dict]:
    weights = {}
    for i in range(n_layers):
        for name in ORDER:
            n, k = LAYERS[name]
            spec = LayerSpec(k=k, n=n, group_size=GROUP, has_zeros=False, act_dtype=torch.float16)
            weights[(i, name)] = spec, backend.prepare(spec, random_weight(n, k))
    xs = {(m, name): torch.empty(m, LAYERS[name][1], device="cuda", dtype=torch.float16)
          for m in m_values for name in ORDER}
    x_srcs = {key: torch.randn_like(x) for key, x in xs.items()}
    bandwidth = copy_bandwidth()
    floor = sum(LAYERS[name][0] * LAYERS[name][1] * (0.5 + 2 / GROUP) for name in ORDER) / bandwidth * 1e6
    rows = []
    for m in m_values:
        for gap in gaps:
            graphs = {"gaps_us": capture_graph(build_calls(backend, m, gap, -1, weights, x_srcs, xs, n_layers), 1)}
            for mb in budgets_mb:
                calls = build_calls(backend, m, gap, int(mb * 2**20), weights, x_srcs, xs, n_layers)
                graphs[f"pf{mb:g}_us"] = capture_graph(calls, 1)
            times = interleaved_times_us(graphs, rounds=2 * len(graphs))
            per_layer = {col: t * 4 for col, t in times.items()}  # per-call medians -> per decoder layer
            gaps_us = per_layer.pop("gaps_us")
            row = {"m": m, "gap_us": gap, "gaps_only_us": gaps_us, "floor_us": floor}
            row.update({col: t - gaps_us for col, t in per_layer.items()})
            rows.append(row)
            print("[chain] " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in row.items()), flush=True)
    return rows


def markdown(rows: list[dict], budgets_mb: list[float]) -> str:
    cols = [f"pf{mb:g}_us" for mb in budgets_mb]
    head = "| M | gap (µs asked) | gaps alone, per layer | floor | " + " | ".join(
        f"{mb:g} MB" for mb in budgets_mb) + " | best / 0 MB |"
    lines = [head, "|" + "---|" * (5 + len(cols))]
    for r in rows:
        base = r.get("pf0_us")
        best = min(r[c] for c in cols)
        ratio = f"{best / base:.3f}" if base else "-"
        lines.append(f"| {r['m']} | {r['gap_us']:g} | {r['gaps_only_us']:.1f} | {r['floor_us']:.1f} | "
                     + " | ".join(f"{r[c]:.1f}" for c in cols) + f" | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vllm_machete_plugin.bench chain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="machete", choices=["machete", "marlin"], help="whose kernels")
    ap.add_argument("--m", default="1,16", help="tokens per call (the prefetching kernels: 1..16)")
    ap.add_argument("--gaps", default="0,3,10", help="µs of spinning before each GEMM")
    ap.add_argument("--budgets", default="0,8,16,32", help="prefetch budgets per call, MB (0: off)")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers in the graph (428 MB of weight each)")
    ap.add_argument("--json", help="results file")
    args = ap.parse_args(argv)
    m_values = parse_list(args.m, "m", int)
    if any(not 1 <= m <= 16 for m in m_values):
        raise SystemExit("--m: the prefetching kernels are those of 1..16 tokens")
    gaps, budgets = parse_list(args.gaps, "gaps"), parse_list(args.budgets, "budgets")
    if args.layers < 2:
        raise SystemExit("--layers must be >= 2 (a chain needs a next layer)")
    if not torch.cuda.is_available():
        raise SystemExit("the chain benchmark needs a CUDA GPU")
    from ..backends import device_capability
    from ..backends.machete import MacheteBackend
    from ..backends.marlin import MarlinBackend
    backend = MacheteBackend if args.backend == "machete" else MarlinBackend
    ok, why = backend.can_implement(LayerSpec(k=8192, n=8192, group_size=GROUP, has_zeros=False,
                                              act_dtype=torch.float16), device_capability())
    if not ok:
        raise SystemExit(f"the chain benchmark cannot run the {args.backend} backend here: {why}")
    rows = run(backend, m_values, gaps, budgets, args.layers)
    print(markdown(rows, budgets))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "backend": args.backend,
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "layers": args.layers, "budgets_mb": budgets, "rows": rows}, f, indent=1)
    return 0
