"""The `engine` marker splits the GPU tests into the quick kernel tests and the ones that start
vLLM engines (about a minute each on an H200), so each fits a device call (README, GPU job)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE_FILES = {"test_vllm_e2e.py", "test_serve.py", "test_examples_gpu.py"}


def _collected(expr: str) -> set[str]:
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        "-m", expr, "tests/gpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {line.split("::")[0].rsplit("/", 1)[-1] for line in r.stdout.splitlines() if "::" in line}


def test_engine_marker_selects_exactly_the_engine_starting_files():
    engine, rest = _collected("engine"), _collected("not engine")
    assert engine == ENGINE_FILES
    assert rest and not rest & ENGINE_FILES
    assert {"test_machete.py", "test_marlin.py", "test_wgmma_probe.py"} <= rest
