"""GPU tests of the kernel benchmark (`python -m vllm_machete_plugin.bench kernels`): the
interleaved graph timer measures what it replays, and a short run writes the JSON rows
the issue names, with every kernel checked against fp16 before it is timed."""
from __future__ import annotations

import json

import pytest
import torch

from vllm_machete_plugin import ops
from vllm_machete_plugin.bench import kernels as bench


def _skip_reason() -> str:
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if not ops.kernels_available():
        return f"kernels not built: {ops._load()}"
    return ""


_why_skip = _skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(_why_skip), reason=_why_skip or "-")]


def test_interleaved_timer_scales_with_work():
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    b = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    graphs = {"one": bench.capture_graph([lambda: a @ b]),
              "three": bench.capture_graph([lambda: (a @ b, a @ b, a @ b)])}
    assert graphs["one"][1] == graphs["three"][1] == 20  # calls per replay
    t = bench.interleaved_times_us(graphs)
    assert 2.4 < t["three"] / t["one"] < 3.6, t


def test_short_run_writes_the_rows(tmp_path):
    out = tmp_path / "k.json"
    assert bench.main(["--m", "1,33", "--layers", "o", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["gpu"] == torch.cuda.get_device_name() and result["copy_bandwidth_GBps"] > 100
    assert [(r["layer"], r["N"], r["K"], r["M"]) for r in result["rows"]] == [("o", 8192, 8192, 1),
                                                                            ("o", 8192, 8192, 33)]
    ours = [c for c in result["rows"][0] if c.endswith("_us") and c not in
            ("floor_us", "fp16_us", "vllm_marlin_us", "vllm_machete_us")]
    assert ours, "no backend of ours was timed"
    for r in result["rows"]:
        for col in ["floor_us", "fp16_us"] + ours:
            assert r[col] > 0, (r["M"], col)
        if result["vllm"] is None:  # vLLM not importable: its columns are null
            assert r["vllm_marlin_us"] is None and r["vllm_machete_us"] is None
        else:
            assert r["vllm_marlin_us"] > 0, r["M"]


def test_sustained_reads_a_longer_run_as_its_own():
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    graphs = {"one": bench.capture_graph([lambda: a @ a]), "three": bench.capture_graph([lambda: (a @ a, a @ a, a @ a)])}
    out = bench.sustained(graphs, 1.0)
    assert 2.4 < out["three"]["us"] / out["one"]["us"] < 3.6, out
    for v in out.values():  # NVML may be missing in a container: then no power, never a wrong one
        assert v["power_w"] is None or (v["power_w"] > 0 and v["uJ"] == pytest.approx(v["power_w"] * v["us"]))
