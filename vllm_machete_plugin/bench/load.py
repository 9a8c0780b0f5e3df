"""`python -m vllm_machete_plugin.bench load`: the model load of each side alone, for issue 18's
weight-load target. Each start is its own process (`--worker SIDE`), engine in-process,
`enforce_eager=True` (no compile, no CUDA graphs: only the load is compared), sides
alternating rep by rep on the 70B dummy GPTQ model. Per start it records vLLM's own
"Model loading took N seconds" (`startup.parse_log`), our hook around the loader
(`load_s`: construction + weights + process_weights_after_loading) and its phases.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from . import e2e, serving, startup


def run_worker(side: str, model: str, out: str) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process: load hooks apply
    record: dict = {"side": side}
    e2e._patch_load_model(record)
    startup.install(startup.record_sink(record))
    from vllm import LLM
    t0 = time.perf_counter()
    LLM(model=model, **serving.SIDES[side], dtype="float16", max_model_len=2048, gpu_memory_utilization=0.9,
        load_format="dummy", enforce_eager=True, seed=0)
    record["engine_start_s"] = time.perf_counter() - t0
    Path(out).write_text(json.dumps(record))


def summary(runs: list[dict]) -> dict:
    """Per side: the mean of each measure over its reps; ratios of the first side to the others."""
    sides = list(dict.fromkeys(r["side"] for r in runs))
    keys = ("vllm_load_s", "load_s", "process_weights_s")
    mean = {s: {k: sum(r[k] for r in runs if r["side"] == s) / sum(1 for r in runs if r["side"] == s)
                for k in keys} for s in sides}
    ratios = {f"{sides[0]}/{s}": {k: mean[sides[0]][k] / mean[s][k] for k in keys} for s in sides[1:]}
    return {"mean": mean, "ratios": ratios}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vllm_machete_plugin.bench load", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sides", default="machete,builtin", help=f"comma-separated subset of {list(serving.SIDES)}")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json", help="write the runs and the summary here")
    ap.add_argument("--worker", nargs=3, metavar=("SIDE", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        run_worker(*args.worker)
        return 0
    sides = serving.check_sides([s for s in args.sides.split(",") if s])
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        model = str(e2e.write_model(Path(tmp) / "llama70b-gptq"))
        for rep in range(args.reps):
            for side in sides:
                out = Path(tmp) / f"{side}-{rep}.json"
                proc = subprocess.run([sys.executable, "-m", "vllm_machete_plugin.bench", "load", "--worker", side,
                                       model, str(out)], capture_output=True, text=True)
                if proc.returncode != 0:
                    print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"[load] {side} rep {rep} failed (rc {proc.returncode})")
                record = json.loads(out.read_text())
                vllm = startup.parse_log(proc.stdout + proc.stderr, record["engine_start_s"])
                record["vllm_load_s"] = vllm["load_s"]
                record["process_weights_s"] = record["startup"]["process_weights_s"]
                record["rep"] = rep
                runs.append(record)
                print(f"[load] {side} rep {rep}: vLLM 'Model loading' {record['vllm_load_s']:.2f} s, load_model "
                      f"{record['load_s']:.2f} s, process_weights {record['process_weights_s']:.2f} s", flush=True)
    result = {"runs": runs, **summary(runs)}
    print(json.dumps(result["ratios"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0
