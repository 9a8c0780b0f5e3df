"""examples/offline_generate.py on a GPU: with no argument it builds the tiny demo
checkpoint and generates through vLLM --quantization machete; with a model path it
serves that model (here an AWQ tiny checkpoint in bf16)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")
pytestmark = [pytest.mark.gpu, pytest.mark.engine, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline_generate.py"


def _run(*args):
    r = subprocess.run([sys.executable, str(EXAMPLE), "--max-tokens", "8", "--enforce-eager", *args],
                       capture_output=True, text=True, timeout=400)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-8000:]
    assert f"--- vLLM --quantization machete on {torch.cuda.get_device_name()}" in r.stdout
    lines = [line for line in r.stdout.splitlines() if " -> " in line]
    assert len(lines) == 3 and all(line.split(" -> ")[1] not in ("''", '""') for line in lines)
    assert "vllm-machete-plugin: quantized linear layers run on the" in log
    return r.stdout


def test_demo_without_arguments():
    assert "built the tiny demo checkpoint" in _run()


def test_given_model_path(tmp_path):
    from vllm_machete_plugin.testing import build_tiny_checkpoint
    model = build_tiny_checkpoint(tmp_path / "awq", "awq", dtype="bfloat16")
    assert "built the tiny demo checkpoint" not in _run(str(model), "--dtype", "bfloat16")
