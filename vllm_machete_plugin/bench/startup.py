"""Engine start split into phases, for `bench e2e`'s offline worker (engine in-process).

`install(record)` wraps the vLLM 0.26.0 methods that bound each phase with timers (the
GPU synchronised at both ends); `finish(record, engine_start_s, compile_s, cudagraph_sizes)`
derives the rest once `LLM(...)` has returned, the whole model load from record["load_s"]
(timed by e2e's own load hook). Seconds, in `record["startup"]`:

  construct_s          model construction (`initialize_model`: modules, our parameters)
  weights_s            weight load (the loader's `load_weights`, checkpoint -> parameters)
  process_weights_s    `process_weights_after_loading` (our repack into kernel layouts)
  profile_s            the memory-profiling run (`determine_available_memory`), which
                       holds the first torch.compile
  compile_s            torch.compile in all (vLLM's own count: Dynamo + Inductor)
  dynamo_s             its Dynamo trace (vLLM's log record; inductor_s = the rest)
  inductor_s
  cudagraph_s          CUDA-graph capture (`capture_model`), cudagraph_sizes graphs
  warmup_s             the rest of `compile_or_warm_up_model` (warm-up runs)
  other_s              engine start minus everything above (tokenizer, KV-cache set-up...)
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Callable

PHASES = {  # key -> row label of the report, in start order
    "construct_s": "model construction",
    "weights_s": "weight load",
    "process_weights_s": "process_weights_after_loading",
    "profile_s": "memory profiling run (holds the first compile)",
    "compile_s": "torch.compile in all",
    "dynamo_s": "  of which Dynamo",
    "inductor_s": "  of which Inductor",
    "cudagraph_s": "CUDA-graph capture",
    "warmup_s": "warm-up",
    "other_s": "other",
}
# Phases that nest inside another (not added again when "other" is derived).
_NESTED = {"compile_s", "dynamo_s", "inductor_s"}


def _timed(owner, name: str, key: str, record: dict) -> None:
    """Replace owner.name by a wrapper that adds its synchronised wall time to
    record["startup"][key]."""
    import torch
    original: Callable = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*a, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            phases = record.setdefault("startup", {})
            phases[key] = phases.get(key, 0.0) + time.perf_counter() - t0

    setattr(owner, name, wrapper)


class _DynamoTime(logging.Handler):
    """Takes the Dynamo trace time from vLLM's "Dynamo bytecode transform time" record."""

    def __init__(self, record: dict):
        super().__init__(logging.INFO)
        self.record = record

    def emit(self, rec: logging.LogRecord) -> None:
        if isinstance(rec.msg, str) and rec.msg.startswith("Dynamo bytecode transform time") and rec.args:
            phases = self.record.setdefault("startup", {})
            phases["dynamo_s"] = phases.get("dynamo_s", 0.0) + float(rec.args[0])


def install(record: dict) -> None:
    """Wrap the phase boundaries of vLLM 0.26.0 (engine in this process). A boundary that
    another vLLM version lacks is reported and left out; the benchmark still runs."""
    import importlib
    targets = [("vllm.model_executor.model_loader.base_loader", None, "initialize_model", "construct_s"),
               ("vllm.model_executor.model_loader.base_loader", None, "process_weights_after_loading",
                "process_weights_s"),
               ("vllm.v1.worker.gpu_worker", "Worker", "determine_available_memory", "profile_s"),
               ("vllm.v1.worker.gpu_worker", "Worker", "compile_or_warm_up_model", "compile_or_warm_up_s"),
               ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "capture_model", "cudagraph_s"),
               ("vllm.v1.worker.gpu.model_runner", "GPUModelRunner", "capture_model", "cudagraph_s")]
    for module, cls, name, key in targets:
        try:
            owner = importlib.import_module(module)
            owner = getattr(owner, cls) if cls else owner
            getattr(owner, name)
        except (ImportError, AttributeError) as e:
            print(f"[e2e] startup phase {key}: {module}.{cls or ''}.{name} not found ({e}); left out", flush=True)
            continue
        _timed(owner, name, key, record)
    logging.getLogger("vllm.compilation.backends").addHandler(_DynamoTime(record))


def finish(record: dict, engine_start_s: float, compile_s: float, cudagraph_sizes: int) -> None:
    """Derive weights_s (the model load, record["load_s"], minus construction and repack),
    inductor_s, warmup_s and other_s; compile_s and cudagraph_sizes come from the engine's
    compilation config."""
    p = record.setdefault("startup", {})
    p["weights_s"] = max(0.0, record.get("load_s", 0.0) - p.get("construct_s", 0.0) - p.get("process_weights_s", 0.0))
    p["compile_s"] = compile_s
    if "dynamo_s" in p:
        p["inductor_s"] = max(0.0, compile_s - p["dynamo_s"])
    p["warmup_s"] = max(0.0, p.pop("compile_or_warm_up_s", 0.0) - p.get("cudagraph_s", 0.0))
    p["other_s"] = max(0.0, engine_start_s - sum(v for k, v in p.items() if k in PHASES and k not in _NESTED))
    p["cudagraph_sizes"] = cudagraph_sizes


def report_rows() -> list[tuple[str, tuple[str, ...], str]]:
    """Rows for the e2e markdown table: (label, key path in a side's record, format)."""
    return [(f"start: {label}", ("startup", key), "{:.1f}") for key, label in PHASES.items()] + \
        [("start: CUDA graphs captured", ("startup", "cudagraph_sizes"), "{:d}")]
