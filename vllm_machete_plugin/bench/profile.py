"""Kernel profiling driver for Nsight Compute: runs each chosen kernel once per
(layer, M) on the Llama-3.1-70B shapes, between cudaProfilerStart/Stop, each call in an
NVTX range named "<column>/<layer>/M<m>", after an untimed warm-up of everything
(JIT compiles, workspace allocations and prepacks stay outside the profiled region).

  ncu --clock-control none --profile-from-start off --nvtx --set full -o rep \
      python -m vllm_machete_plugin.bench profile --columns machete,vllm_machete --m 64,128

The columns are those of `bench kernels` (ours: marlin, machete, and machete@<schedule> for
one forced Machete schedule; vLLM's: vllm_marlin, vllm_machete, vllm_humming), on the same data: u4b8 g128 fp16, one weight copy per
layer (the L2 is flushed between calls by ncu's default cache control).

The source page of such a report is tens of MB of CSV; on the machine that holds it,

  ncu -i rep.ncu-rep --page source --csv > source.csv
  python -m vllm_machete_plugin.bench profile --hotspots source.csv [--top 25]

prints, per kernel, the SASS lines with the most warp-stall samples and their largest
other counters, as markdown.
"""
from __future__ import annotations

import argparse
import csv
from typing import Iterable, Optional

import torch

from .kernels import LAYERS, implementations, load_vllm, random_weight


def _number(cell: str) -> Optional[float]:
    try:
        return float(cell.replace(",", ""))
    except ValueError:
        return None


def source_hotspots(lines: Iterable[str], top: int = 25) -> list[dict]:
    """Blocks of `ncu --page source --csv` output, one per kernel: each starts at a header
    row whose first cell is "Address" (a non-CSV line before it, if any, names the block).
    Per block: the samples column (the first header with "All Samples", else with
    "Sampling"), its total, and the `top` rows with the most samples, each with its address,
    source text and its 4 largest other numeric columns."""
    blocks: list[dict] = []
    label, header, rows = "", None, []

    def close():
        if header is not None:
            blocks.append(_summarize(label or f"kernel {len(blocks) + 1}", header, rows, top))

    for line in lines:
        cells = next(csv.reader([line]), [])
        if cells and cells[0] == "Address":
            close()
            header, rows = cells, []
        elif header is not None and len(cells) == len(header):
            rows.append(cells)
        elif line.strip():
            close()
            label, header, rows = line.strip()[:160], None, []
    close()
    return blocks


def _summarize(label: str, header: list[str], rows: list[list[str]], top: int) -> dict:
    samples = next((i for i, h in enumerate(header) if "All Samples" in h), None)
    if samples is None:
        samples = next((i for i, h in enumerate(header) if "Sampling" in h), None)
    if samples is None:
        raise SystemExit(f"{label}: no warp-stall sampling column among {header}")
    src = header.index("Source") if "Source" in header else 1
    total = sum(_number(r[samples]) or 0.0 for r in rows)
    hot = sorted(rows, key=lambda r: -(_number(r[samples]) or 0.0))[:top]
    out = []
    for r in hot:
        others = [(header[i], _number(c)) for i, c in enumerate(r) if i not in (0, src, samples)]
        others = sorted([(h, v) for h, v in others if v], key=lambda hv: -hv[1])[:4]
        out.append({"address": r[0], "source": r[src], "samples": _number(r[samples]) or 0.0, "others": others})
    return {"kernel": label, "column": header[samples], "total": total, "rows": out}


def hotspots_markdown(blocks: list[dict]) -> str:
    lines = []
    for b in blocks:
        lines += [f"### {b['kernel']}", "", f"{b['column']}: {b['total']:.0f} in all", "",
                  "| address | SASS | samples | share | largest other counters |", "|---|---|---|---|---|"]
        for r in b["rows"]:
            share = r["samples"] / b["total"] if b["total"] else 0.0
            others = ", ".join(f"{h} {v:g}" for h, v in r["others"])
            lines.append(f"| {r['address']} | `{r['source'].strip()}` | {r['samples']:.0f} | {share:.1%} | {others} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vllm_machete_plugin.bench profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--columns", default="marlin,machete,vllm_marlin,vllm_machete,vllm_humming",
                    help="comma-separated kernels (columns of bench kernels, without _us)")
    ap.add_argument("--m", default="1,64,128,256,1024", help="comma-separated M values")
    ap.add_argument("--layers", default=",".join(LAYERS), help=f"comma-separated subset of {list(LAYERS)}")
    ap.add_argument("--hotspots", metavar="CSV", help="only summarize this `ncu --page source --csv` output")
    ap.add_argument("--top", type=int, default=25, help="SASS lines per kernel with --hotspots")
    args = ap.parse_args(argv)
    if args.hotspots:
        with open(args.hotspots, encoding="utf-8", errors="replace") as f:
            print(hotspots_markdown(source_hotspots(f, args.top)))
        return 0
    if not torch.cuda.is_available():
        raise SystemExit("profiling needs a CUDA GPU")
    wanted = [c for c in args.columns.split(",") if c]
    m_values = [int(s) for s in args.m.split(",") if s]
    vk, _ = load_vllm()
    calls = []  # (range name, fn, x)
    for layer in [s for s in args.layers.split(",") if s]:
        n, k = LAYERS[layer]
        w = random_weight(n, k)
        impls = implementations(n, k, [w], vk, [f"{c}_us" for c in wanted])
        missing = [c for c in wanted if f"{c}_us" not in impls]
        if missing:
            raise SystemExit(f"kernels not available here: {missing}")
        for m in m_values:
            x = torch.randn(m, k, device="cuda").half()
            for col in wanted:
                calls.append((f"{col}/{layer}/M{m}", impls[f"{col}_us"][0], x))
    for _, fn, x in calls:  # warm-up: JIT, workspaces, lazy init
        fn(x)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for name, fn, x in calls:
        torch.cuda.nvtx.range_push(name)
        fn(x)
        torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print(f"[profile] {len(calls)} calls: " + ", ".join(name for name, _, _ in calls))
    return 0
