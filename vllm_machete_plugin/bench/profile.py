"""Kernel profiling driver for Nsight Compute: runs each chosen kernel once per
(layer, M) on the Llama-3.1-70B shapes, between cudaProfilerStart/Stop, each call in an
NVTX range named "<column>/<layer>/M<m>", after an untimed warm-up of everything
(JIT compiles, workspace allocations and prepacks stay outside the profiled region).

  ncu --clock-control none --profile-from-start off --nvtx --set full -o rep \
      python -m vllm_machete_plugin.bench profile --columns machete,vllm_machete --m 64,128

The columns are those of `bench kernels` (ours: marlin, machete, and machete@<schedule> for
one forced Machete schedule; vLLM's: vllm_marlin, vllm_machete, vllm_humming), on the same data: u4b8 g128 fp16, one weight copy per
layer (the L2 is flushed between calls by ncu's default cache control).
"""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from .kernels import LAYERS, implementations, load_vllm, random_weight


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vllm_machete_plugin.bench profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--columns", default="marlin,machete,vllm_marlin,vllm_machete,vllm_humming",
                    help="comma-separated kernels (columns of bench kernels, without _us)")
    ap.add_argument("--m", default="1,64,128,256,1024", help="comma-separated M values")
    ap.add_argument("--layers", default=",".join(LAYERS), help=f"comma-separated subset of {list(LAYERS)}")
    args = ap.parse_args(argv)
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
