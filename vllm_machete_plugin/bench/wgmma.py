"""wgmma issue-rate probe: the dense fp16 FLOP/s that the tensor cores of this GPU give to
wgmma m64nNk16 (N = 64, 128, 256) with A from shared memory (ss) or registers (rs), one or
two consumer warpgroups per SM, one or two commit groups in flight, against torch's own
fp16 GEMM (cuBLAS, 8192^3) in the same run as the ceiling. Hopper only.

  python -m vllm_machete_plugin.bench wgmma [--iters 20000] [--json FILE]

It answers a design question of a mid-M mainloop (issue 16) before one is written: at 64
tokens per tile with the tokens on wgmma's N side (N = 64), can the tensor pipe reach its
peak, or must the weight go on N (up to 256, through shared memory)? The kernel is
kernels/machete/wgmma_probe.cu; its operands are constant, only the rate is measured.

A second table asks whether the consumers' ALU work overlaps the wgmmas in flight: two
warpgroups, and before each k-block's wgmmas the upconversion of its A register set with the
mid-M kernel's own instructions (1 or 2 rounds), timed alone (no wgmma), with the wgmmas, and
the wgmmas alone. "both / sum" near 1 means the two add up (no overlap), near "max / sum" that
they overlap fully. Three variants: A from registers with 2 groups in flight (the mid-M
kernel's order), the same work with the wgmmas reading A from shared memory (does the register
operand block the overlap?), and A from registers with 3 groups in flight (a conversion gets
two groups' time instead of one). Two more move the upconversion into 2 separate "transform"
warpgroups beside the 2 wgmma warpgroups (A from shared memory): storing each k-block to shared
memory as a kernel with transform warps would, or only folding it into a register. Is the
overlap limit per warp (then separate warps hide the work) or per SM (then they do not)?
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
from pathlib import Path
from typing import Optional

import torch

CONFIGS = list(itertools.product((64, 128, 256), (True, False), (1, 2), (1, 2)))  # n, rs, warpgroups, in_flight
# n, upconversion rounds, (A from registers?, groups in flight, split); 2 wgmma warpgroups, and with
# split 2 transform warpgroups that store to shared memory (1) or fold into a register (2)
DQ_CONFIGS = list(itertools.product((64, 128), (1, 2), ((True, 2, 0), (False, 2, 0), (True, 3, 0), (False, 2, 1),
                                                       (False, 2, 2))))
SPLIT_LABEL = {0: "", 1: " + transform WGs, stores", 2: " + transform WGs, no stores"}


def flop(n: int, warpgroups: int, iters: int, sms: int) -> float:
    """FLOP of one probe launch: per k-block and warpgroup 4 wgmma m64nNk16."""
    return 2.0 * 64 * n * 64 * iters * warpgroups * sms


def cublas_tflops(size: int = 8192, reps: int = 20) -> float:
    a = torch.randn(size, size, device="cuda", dtype=torch.half)
    b = torch.randn(size, size, device="cuda", dtype=torch.half)
    for _ in range(3):
        a @ b
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(reps):
        a @ b
    e1.record()
    torch.cuda.synchronize()
    return 2.0 * size**3 * reps / (e0.elapsed_time(e1) * 1e-3) / 1e12


def measure(iters: int, sms: int, probe) -> list[dict]:
    """One row per configuration, the best of 3 launches. probe(n, rs, warpgroups, in_flight, iters) -> ms."""
    rows = []
    for n, rs, wgs, depth in CONFIGS:
        ms = min(probe(n, rs, wgs, depth, iters) for _ in range(3))
        rows.append({"n": n, "a": "rs" if rs else "ss", "warpgroups": wgs, "in_flight": depth, "ms": ms,
                     "tflops": flop(n, wgs, iters, sms) / (ms * 1e-3) / 1e12})
    return rows


def measure_dq(iters: int, probe) -> list[dict]:
    """Per DQ_CONFIGS row: ns per k-block (all SMs in parallel, best of 3) of the upconversion
    alone, the wgmmas alone (2 warpgroups, the row's A source and depth) and both.
    probe(n, rs, warpgroups, in_flight, iters, dq, mma, split) -> ms."""
    @functools.cache  # the wgmmas alone serve the rows of both round counts and every split
    def ns(n, rs, depth, dq, mma, split=0):
        wgs = 4 if split else 2
        return min(probe(n, rs, wgs, depth, iters, dq, mma, split) for _ in range(3)) * 1e6 / iters
    rows = []
    for n, dq, (rs, depth, split) in DQ_CONFIGS:
        alu, mma = ns(n, rs, depth, dq, False, split), ns(n, rs, depth, 0, True)
        both = ns(n, rs, depth, dq, True, split)
        rows.append({"n": n, "rounds": dq, "a": ("rs" if rs else "ss") + SPLIT_LABEL[split], "split": split,
                     "in_flight": depth, "alu_ns": alu, "mma_ns": mma, "both_ns": both,
                     "both_over_sum": both / (alu + mma), "max_over_sum": max(alu, mma) / (alu + mma)})
    return rows


def markdown(result: dict) -> str:
    peak = result["cublas_fp16_tflops"]
    lines = [f"wgmma m64nNk16 on {result['gpu']} ({result['sms']} SMs, {result['iters']} k-blocks of 4 per warpgroup); "
             f"cuBLAS fp16 8192^3 in the same run: {peak:.0f} TFLOP/s", "",
             "| N | A from | warpgroups per SM | groups in flight | TFLOP/s | / cuBLAS |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['n']} | {r['a']} | {r['warpgroups']} | {r['in_flight']} | {r['tflops']:.0f} | "
                     f"{r['tflops'] / peak:.2f} |")
    if result.get("dq_rows"):
        lines += ["", "Upconversion (the mid-M kernel's per-register LOP3, HADD2, HMUL2, per k-block of 4 wgmma) "
                  "against the wgmmas in flight; 2 wgmma warpgroups (and 2 transform warpgroups where named); "
                  "ns per k-block:",
                  "", "| N | rounds | A from | groups in flight | upconversion alone | wgmma alone | both | both / sum "
                  "| max / sum |", "|---|---|---|---|---|---|---|---|---|"]
        for r in result["dq_rows"]:
            lines.append(f"| {r['n']} | {r['rounds']} | {r['a']} | {r['in_flight']} | {r['alu_ns']:.1f} | "
                         f"{r['mma_ns']:.1f} | {r['both_ns']:.1f} | {r['both_over_sum']:.2f} | {r['max_over_sum']:.2f} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vllm_machete_plugin.bench wgmma", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=20000, help="k-blocks per warpgroup and launch (even)")
    ap.add_argument("--json", help="results file")
    args = ap.parse_args(argv)
    from .. import ops
    if not torch.cuda.is_available() or torch.cuda.get_device_capability(0) != (9, 0):
        raise SystemExit("the wgmma probe needs a Hopper (sm_90) GPU")
    ops.require_kernels("bench wgmma")
    if not ops.has_op("wgmma_probe"):
        raise SystemExit("this build of _machete_C has no wgmma_probe (rebuild with VMP_CUDA_ARCHS containing 90)")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    result = {"gpu": torch.cuda.get_device_name(0), "sms": sms, "iters": args.iters,
              "rows": measure(args.iters, sms, torch.ops.vmp.wgmma_probe),
              "dq_rows": measure_dq(args.iters, torch.ops.vmp.wgmma_probe), "cublas_fp16_tflops": cublas_tflops()}
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0
