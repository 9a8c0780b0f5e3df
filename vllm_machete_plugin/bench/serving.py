"""`vllm serve` on loopback for the benchmarks: one side's server, started with the
engine flags both sides share, timed from launch to a healthy /health, its startup
phases read from its log (bench/startup.py), and stopped with its GPU memory released.

    with Server(side, model, flags, port, log_path, env) as srv:   # started and healthy
        srv.start_s, srv.phases(), srv.pids()
"""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from . import startup

# side -> the engine arguments that make it: ours; vLLM's own choice (Machete on Hopper);
# vLLM with its Humming kernels forced (`--linear-backend humming`).
SIDES = {"machete": {"quantization": "machete"}, "builtin": {}, "humming": {"linear_backend": "humming"}}


def plugin_entry_point_listed() -> bool:
    """Whether this Python lists the plugin under vLLM's `vllm.general_plugins` entry points: the
    only way it reaches the processes vLLM starts."""
    return any(ep.value.split(":")[0] == "vllm_machete_plugin"
               for ep in importlib.metadata.entry_points(group="vllm.general_plugins"))


def check_sides(sides: list[str]) -> list[str]:
    """The sides, checked before anything starts: known names, and for ours the plugin's entry
    point in this Python (else `vllm serve --quantization machete` fails a minute into its start
    with vLLM's "does not match the quantization method" error). Without the entry point the other
    sides run, but their startup phases are only the lines vLLM logs itself."""
    unknown = sorted(set(sides) - set(SIDES))
    if unknown:
        raise SystemExit(f"unknown side(s) {unknown}; choose from {list(SIDES)}")
    if not plugin_entry_point_listed():
        fix = f"`{sys.executable} -m pip install --no-build-isolation --no-deps -e .` from the repo root"
        if "machete" in sides:
            raise SystemExit(f"side 'machete' needs the plugin's vllm.general_plugins entry point, which {sys.executable} "
                             f"does not list (installed by another Python's pip, or not at all). Fix: {fix}")
        print(f"[bench] the plugin's entry point is not installed for {sys.executable}: the startup phases of "
              f"{sides} will be only vLLM's own lines ({fix} adds ours)", file=sys.stderr)
    return sides


def engine_flags(kw: dict) -> list[str]:
    """`vllm serve` flags for engine kwargs (those of e2e.engine_kwargs)."""
    return ["--dtype", kw["dtype"], "--max-model-len", str(kw["max_model_len"]),
            "--gpu-memory-utilization", str(kw["gpu_memory_utilization"]), "--no-enable-prefix-caching",
            "--max-num-seqs", str(kw["max_num_seqs"]), "--seed", str(kw["seed"]), "--load-format", kw["load_format"],
            "--tensor-parallel-size", str(kw["tensor_parallel_size"])]


def side_flags(side: str) -> list[str]:
    out: list[str] = []
    for key, value in SIDES[side].items():
        out += ["--" + key.replace("_", "-"), value]
    return out


def wait_healthy(server: subprocess.Popen, port: int, log: Path, timeout: float = 1800) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"vllm serve exited during startup:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"vllm serve not healthy after {timeout:.0f} s (log: {log})")


class Server:
    """One side's `vllm serve` (startup phases logged: VMP_STARTUP_PHASES=1)."""

    def __init__(self, side: str, model: str, flags: list[str], port: int, log_path: Path,
                 env: dict | None = None):
        self.side, self.model, self.port, self.log_path = side, model, port, Path(log_path)
        self.cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", model, "--host", "127.0.0.1",
                    "--port", str(port)] + flags + side_flags(side)
        self.env = {**os.environ, "VLLM_USE_FLASHINFER_SAMPLER": "0", startup.ENV: "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.start_s = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        t0 = time.perf_counter()
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        try:
            wait_healthy(self.proc, self.port, self.log_path)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.perf_counter() - t0
        return self

    def phases(self) -> dict:
        """{"engine_start_s", "load_s", "startup": {...}} from this start's log."""
        return startup.parse_log(self.log_path.read_text(errors="replace"), self.start_s)

    def pids(self) -> list[int]:
        """The server and every process under it (its engine core, workers)."""
        import psutil
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid] + [c.pid for c in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 90) -> None:
        """SIGTERM, then SIGKILL of the whole tree after `timeout` s; returns once all are gone."""
        import psutil
        if self.proc is None:
            return
        procs = []
        for pid in self.pids():
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        _, alive = psutil.wait_procs(procs, timeout=30)
        for p in alive:
            p.kill()
        psutil.wait_procs(alive, timeout=30)
        self.proc = None

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
