"""The README's main command works on a machine without a GPU (reference path)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU path is covered by tests/gpu")
def test_offline_generate_demo_runs_without_gpu():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "offline_generate.py"), "--max-tokens", "8"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    assert "CPU reference path" in out
    lines = [l for l in out.splitlines() if " -> " in l]
    assert len(lines) == 3 and all(l.split(" -> ")[1] not in ("''", '""') for l in lines)
