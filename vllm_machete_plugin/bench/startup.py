"""Engine start split into phases, for `bench e2e` (engine in-process) and `bench soak`
(a `vllm serve` process).

`install(sink)` wraps the vLLM 0.26.0 methods that bound each phase with timers (the GPU
synchronised at both ends); each timed call hands (key, seconds) to the sink:
  * in-process: `record_sink(record)` adds them up in record["startup"], and
    `finish(record, engine_start_s, compile_s, cudagraph_sizes)` derives the rest once
    `LLM(...)` has returned, the whole model load from record["load_s"] (e2e's own hook);
  * in a server: `register()` installs `log_sink()` when VMP_STARTUP_PHASES=1 (set by the
    benchmark, for every side: the plugin is loaded in every vLLM process), which logs one
    "vmp-startup <key> <seconds>" line per call; `parse_log(text)` reads them back with
    vLLM's own lines (model load, torch.compile, Dynamo) and derives the same phases.
Seconds, in `record["startup"]`:

  construct_s          model construction (`initialize_model`: modules, our parameters)
  weights_s            weight load (the loader's `load_weights`, checkpoint -> parameters)
  process_weights_s    `process_weights_after_loading` (our repack into kernel layouts)
  profile_s            the memory-profiling run (`determine_available_memory`), which
                       holds the first torch.compile
  compile_s            torch.compile in all (vLLM's own count: Dynamo + Inductor, or the
                       load of compiled graphs from vLLM's cache on a warm restart)
  dynamo_s             its Dynamo trace (vLLM's log record; inductor_s = the rest)
  inductor_s
  cudagraph_s          CUDA-graph capture (`capture_model`), cudagraph_sizes graphs
  warmup_s             the rest of `compile_or_warm_up_model` (warm-up runs)
  other_s              engine start minus everything above (tokenizer, KV-cache set-up,
                       for a server also its API process)
"""
from __future__ import annotations

import functools
import logging
import re
import time
from pathlib import Path
from typing import Callable


def cache_env(root: Path) -> dict[str, str]:
    """The compile caches of one side (vLLM's, Inductor's, Triton's), all under root: empty,
    a start is cold; filled by an earlier start of the same side, a warm restart."""
    return {"VLLM_CACHE_ROOT": str(root / "vllm"), "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor"),
            "TRITON_CACHE_DIR": str(root / "triton")}

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
ENV = "VMP_STARTUP_PHASES"  # "1": register() installs log_sink() in every vLLM process
LOG_TAG = "vmp-startup"

Sink = Callable[[str, float], None]


def record_sink(record: dict) -> Sink:
    """Seconds add up per key in record["startup"]; counts (keys not ending in _s) are set."""
    def sink(key: str, value: float) -> None:
        phases = record.setdefault("startup", {})
        phases[key] = phases.get(key, 0.0) + value if key.endswith("_s") else value
    return sink


def log_sink() -> Sink:
    logger = logging.getLogger("vllm.vllm_machete_plugin.startup")  # under vLLM's log handler
    return lambda key, value: logger.info("%s %s %.3f", LOG_TAG, key, value)


def _timed(owner, name: str, key: str, sink: Sink) -> None:
    """Replace owner.name by a wrapper that hands its synchronised wall time to sink(key, s);
    a wrapped `capture_model` also hands over the number of graph sizes it captured."""
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
            sink(key, time.perf_counter() - t0)
            if key == "cudagraph_s" and a:
                sizes = getattr(getattr(a[0], "compilation_config", None), "cudagraph_capture_sizes", None)
                if sizes is not None:
                    sink("cudagraph_sizes", len(sizes))

    setattr(owner, name, wrapper)


class _DynamoTime(logging.Handler):
    """Takes the Dynamo trace time from vLLM's "Dynamo bytecode transform time" record."""

    def __init__(self, sink: Sink):
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, rec: logging.LogRecord) -> None:
        if isinstance(rec.msg, str) and rec.msg.startswith("Dynamo bytecode transform time") and rec.args:
            self.sink("dynamo_s", float(rec.args[0]))


def install(sink: Sink, dynamo_from_log: bool = True) -> None:
    """Wrap the phase boundaries of vLLM 0.26.0 in this process. A boundary that another
    vLLM version lacks is reported and left out; the benchmark still runs."""
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
            print(f"[startup] phase {key}: {module}.{cls or ''}.{name} not found ({e}); left out", flush=True)
            continue
        _timed(owner, name, key, sink)
    if dynamo_from_log:
        logging.getLogger("vllm.compilation.backends").addHandler(_DynamoTime(sink))


def finish(record: dict, engine_start_s: float, compile_s: float | None, cudagraph_sizes: int | None) -> None:
    """Derive weights_s (the model load, record["load_s"], minus construction and repack),
    inductor_s, warmup_s and other_s; compile_s and cudagraph_sizes come from the engine's
    compilation config (in-process) or its log (a server)."""
    p = record.setdefault("startup", {})
    p["weights_s"] = max(0.0, record.get("load_s", 0.0) - p.get("construct_s", 0.0) - p.get("process_weights_s", 0.0))
    if compile_s is not None:
        p["compile_s"] = compile_s
    if "dynamo_s" in p and "compile_s" in p:
        p["inductor_s"] = max(0.0, p["compile_s"] - p["dynamo_s"])
    p["warmup_s"] = max(0.0, p.pop("compile_or_warm_up_s", 0.0) - p.get("cudagraph_s", 0.0))
    p["other_s"] = max(0.0, engine_start_s - sum(v for k, v in p.items() if k in PHASES and k not in _NESTED))
    if cudagraph_sizes is not None:
        p["cudagraph_sizes"] = cudagraph_sizes


_OURS = re.compile(LOG_TAG + r" (\w+) ([0-9.]+)")
_VLLM = {  # vLLM 0.26.0's own log lines -> (key, regex of its number)
    # the V1 runner says "... GiB memory and N seconds", the V2 runner (0.26's default) "... GiB and N seconds"
    "load_s": re.compile(r"Model loading took [0-9.]+ GiB (?:memory )?and ([0-9.]+) seconds"),
    "compile_s": re.compile(r"torch\.compile took ([0-9.]+) s in total"),
    "dynamo_s": re.compile(r"Dynamo bytecode transform time: ([0-9.]+) s"),
}


def parse_log(text: str, engine_start_s: float) -> dict:
    """A server's startup phases from its log (VMP_STARTUP_PHASES=1 lines and vLLM's own),
    as `finish` derives them; engine_start_s is the time from launch to a healthy server."""
    record: dict = {"engine_start_s": engine_start_s}
    sink = record_sink(record)
    for key, value in _OURS.findall(text):
        sink(key, float(value))
    phases = record.setdefault("startup", {})
    found = {key: sum(float(v) for v in rx.findall(text)) for key, rx in _VLLM.items() if rx.search(text)}
    if "dynamo_s" in found:
        phases["dynamo_s"] = found["dynamo_s"]
    record["load_s"] = found.get("load_s", 0.0)
    finish(record, engine_start_s, found.get("compile_s"), phases.pop("cudagraph_sizes", None))
    return record


def report_rows() -> list[tuple[str, tuple[str, ...], str]]:
    """Rows for the e2e markdown table: (label, key path in a side's record, format)."""
    return [(f"start: {label}", ("startup", key), "{:.1f}") for key, label in PHASES.items()] + \
        [("start: CUDA graphs captured", ("startup", "cudagraph_sizes"), "{:d}")]
