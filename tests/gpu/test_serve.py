"""`vllm serve --quantization machete` on loopback (examples/serve.sh): one
/v1/completions request answered, then 200 requests at concurrency 32 through
`vllm bench serve` with zero failures."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")
pytestmark = [pytest.mark.gpu, pytest.mark.engine,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
              pytest.mark.skipif(shutil.which("vllm") is None or shutil.which("curl") is None,
                                 reason="needs the vllm CLI and curl on PATH")]

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "serve.sh"


def test_serve_answers_and_survives_200_requests(tmp_path):
    result = tmp_path / "bench-serve.json"
    env = {**os.environ, "BENCH_PROMPTS": "200", "BENCH_CONCURRENCY": "32", "BENCH_RESULT": str(result),
           "PORT": "8031"}
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=900)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-8000:]
    assert "vllm-machete-plugin: quantized linear layers run on the" in log
    reply = json.loads(next(line for line in r.stdout.splitlines() if line.startswith('{"id"')))
    assert reply["object"] == "text_completion" and reply["usage"]["completion_tokens"] == 16
    bench = json.loads(result.read_text())
    assert bench["completed"] == 200 and bench["failed"] == 0, [e for e in bench["errors"] if e][:3]
    assert bench["total_output_tokens"] == 200 * 64
