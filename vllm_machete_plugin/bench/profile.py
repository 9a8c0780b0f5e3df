"""Kernel profiling driver for Nsight Compute: runs each chosen kernel once per
(layer, M) on the Llama-3.1-70B shapes, between cudaProfilerStart/Stop, each call in an
NVTX range named "<column>/<layer>/M<m>", after an untimed warm-up of everything
(JIT compiles, workspace allocations and prepacks stay outside the profiled region).

  ncu --clock-control none --profile-from-start off --nvtx --set full -o rep \
      python -m vllm_machete_plugin.bench profile --columns machete,vllm_machete --m 64,128

With the vllm_humming column, run the same command once without ncu first (Humming JIT-compiles
into ~/.humming/cache; under ncu that compile ran past 4 minutes on an H200) and add
`--target-processes application-only` (ncu otherwise attaches to Humming's nvrtc compile
processes; on 2026-12-04 that ended in a segmentation fault of ncu).

The columns are those of `bench kernels` (ours: marlin, machete, and machete@<schedule> for
one forced Machete schedule; vLLM's: vllm_marlin, vllm_machete, vllm_humming), on the same data: u4b8 g128 fp16, one weight copy per
layer (the L2 is flushed between calls by ncu's default cache control).

The source page of such a report is tens of MB of CSV; on the machine that holds it,

  ncu -i rep.ncu-rep --page source --csv > source.csv
  python -m vllm_machete_plugin.bench profile --hotspots source.csv [--top 25]

prints, per kernel, the SASS lines with the most warp-stall samples and their largest
other counters, as markdown; and

  ncu -i rep.ncu-rep --page raw --csv > raw.csv
  python -m vllm_machete_plugin.bench profile --summary raw.csv

prints one row per profiled call (named by its NVTX range): time, clock, grid, elapsed and
SM-active cycles (mean and slowest SM: where they part, SMs idle or wait on the slowest
block), instructions, pipe use, L2 / DRAM traffic and the main stall reasons.
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


# (column, metric names tried in order, unit -> the column's unit). A metric absent from the
# report (another ncu section set, another architecture) leaves its cell "-".
_TIME = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
_CLOCK = {"hz": 1e-9, "khz": 1e-6, "mhz": 1e-3, "ghz": 1.0}
_BYTES = {"byte": 1e-6, "kbyte": 1e-3, "mbyte": 1.0, "gbyte": 1e3}
_STALL = "smsp__average_warps_issue_stalled_{}_per_issue_active.ratio"
SUMMARY_COLUMNS: list[tuple[str, tuple[str, ...], object]] = [
    ("µs", ("gpu__time_duration.sum",), _TIME),
    ("SM GHz", ("sm__cycles_elapsed.avg.per_second",), _CLOCK),
    ("grid", ("launch__grid_size",), None),
    ("elapsed cycles", ("sm__cycles_elapsed.max",), None),
    ("SM-active mean", ("sm__cycles_active.avg",), None),
    ("SM-active max", ("sm__cycles_active.max",), None),
    ("inst (M)", ("smsp__inst_executed.sum",), 1e-6),
    ("tensor % of active", ("sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
                            "sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active"), None),
    ("issue %", ("smsp__issue_active.avg.pct_of_peak_sustained_active",), None),
    ("L2 sectors (M)", ("lts__t_sectors.sum",), 1e-6),
    ("shared wavefronts (M)", ("l1tex__data_pipe_lsu_wavefronts_mem_shared.sum",), 1e-6),  # LSU only, not wgmma/TMA
    ("DRAM read MB", ("dram__bytes_read.sum",), _BYTES),
    ("long sb", (_STALL.format("long_scoreboard"),), None),
    ("wait", (_STALL.format("wait"),), None),
    ("math", (_STALL.format("math_pipe_throttle"),), None),
    ("barrier", (_STALL.format("barrier"),), None),
    ("membar", (_STALL.format("membar"),), None),
    ("short sb", (_STALL.format("short_scoreboard"),), None),
]


def _call_name(row: dict) -> str:
    """The NVTX range of the call (`"<domain>:marlin/qkv/M64:none:..."` -> marlin/qkv/M64),
    else the kernel's name up to its template arguments."""
    for key, cell in row.items():
        if "Push/Pop_Range" in key and cell:
            parts = cell.split('"')[1].split(":") if '"' in cell else cell.split(":")
            named = [p for p in parts[1:] if p and p != "none"]
            if named:
                return named[0]
    return row.get("Kernel Name", "?").split("<")[0].replace("void ", "").strip()


def raw_summary(lines: Iterable[str]) -> list[dict]:
    """Rows of `ncu --page raw --csv` (a header row, a units row, one row per kernel call)
    -> per call: its name and the SUMMARY_COLUMNS values (None where absent), plus
    `active/elapsed` (mean SM-active over elapsed cycles: the share of SM time that held
    a block) and `max/mean active` (the slowest SM against the mean)."""
    rows = list(csv.reader(lines))
    if len(rows) < 2 or "ID" not in rows[0]:
        raise SystemExit("not an `ncu --page raw --csv` export: no header row with an ID column")
    header = rows[0]
    unit_of = dict(zip(header, rows[1]))
    out = []
    for cells in rows[2:]:
        if len(cells) != len(header):
            continue
        row = dict(zip(header, cells))
        rec: dict = {"call": _call_name(row)}
        for col, names, scale in SUMMARY_COLUMNS:
            rec[col] = None
            for name in names:
                v = _number(row.get(name, ""))
                if v is None:
                    continue
                if isinstance(scale, dict):
                    unit = unit_of[name].strip().lower()
                    if unit not in scale:
                        raise SystemExit(f"{name}: unit {unit!r} not among {sorted(scale)}")
                    v *= scale[unit]
                elif scale is not None:
                    v *= scale
                rec[col] = v
                break
        el, mean, mx = rec["elapsed cycles"], rec["SM-active mean"], rec["SM-active max"]
        rec["active/elapsed"] = mean / el if el and mean is not None else None
        rec["max/mean active"] = mx / mean if mean and mx is not None else None
        out.append(rec)
    return out


def summary_markdown(recs: list[dict]) -> str:
    cols = [c for c, _, _ in SUMMARY_COLUMNS]
    after = cols.index("SM-active max") + 1  # the derived ratios sit beside the cycles they divide
    cols[after:after] = ["active/elapsed", "max/mean active"]

    def cell(v) -> str:
        if v is None:
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if v == int(v) and abs(v) >= 10:
            return f"{v:.0f}"
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"

    lines = ["| call | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += ["| " + r["call"] + " | " + " | ".join(cell(r[c]) for c in cols) + " |" for r in recs]
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
    ap.add_argument("--summary", metavar="CSV", help="only tabulate this `ncu --page raw --csv` output, a row per call")
    args = ap.parse_args(argv)
    if args.summary:
        with open(args.summary, encoding="utf-8", errors="replace", newline="") as f:
            print(summary_markdown(raw_summary(f)))
        return 0
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
