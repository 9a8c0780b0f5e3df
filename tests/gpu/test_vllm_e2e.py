"""End to end on the GPU: a tiny checkpoint of each format generates through
`--quantization machete` and through vLLM's built-in method; greedy tokens agree.
Each engine runs in its own process (vLLM spawns workers)."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")
from vllm_machete_plugin.testing import build_tiny_checkpoint  # noqa: E402

pytestmark = pytest.mark.gpu

# Both paths compute fp32-accumulated products of the same dequantized weights, in a
# different order; a near-tie between the top two logits can flip one greedy token and
# everything after it, so a small fraction of prompts may diverge late.
MIN_MATCHING_PROMPTS = 0.9
LOGPROB_ATOL = 0.1  # per-token logprob difference while the sequences agree


def _generate(model, quantization, dtype):
    env = {**os.environ, "VLLM_USE_FLASHINFER_SAMPLER": "0"}
    r = subprocess.run([sys.executable, "-m", "vllm_machete_plugin.testing.generate", str(model),
                        "--quantization", quantization, "--dtype", dtype, "--enforce-eager"],
                       capture_output=True, text=True, env=env, timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-8000:]
    # vLLM's engine process logs to the same stdout, also after our result line.
    lines = [l for l in r.stdout.splitlines() if l.startswith('{"outputs"')]
    assert len(lines) == 1, log[-8000:]
    return json.loads(lines[0])["outputs"], log


@pytest.mark.parametrize("fmt", ["gptq", "awq", "compressed-tensors"])
@pytest.mark.parametrize("dtype", ["float16"])
def test_matches_vllm_builtin(tmp_path, fmt, dtype):
    model = build_tiny_checkpoint(tmp_path / fmt, fmt, dtype=dtype)
    ours, log = _generate(model, "machete", dtype)
    assert "vllm-machete-plugin: quantized linear layers run on the" in log
    assert "run on the reference backend" not in log
    theirs, _ = _generate(model, "builtin", dtype)
    same = 0
    for a, b in zip(ours, theirs):
        n = next((i for i, (x, y) in enumerate(zip(a["token_ids"], b["token_ids"])) if x != y), 32)
        same += n == 32
        for la, lb in zip(a["logprobs"][:n], b["logprobs"][:n]):
            assert abs(la - lb) <= LOGPROB_ATOL
    assert same >= MIN_MATCHING_PROMPTS * len(ours), f"{same}/{len(ours)} prompts identical over 32 tokens"
