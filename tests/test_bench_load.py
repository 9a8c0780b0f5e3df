"""bench load (vllm_machete_plugin/bench/load.py) without a GPU: the driver's bookkeeping
against fake worker processes, and the summary's means and ratios."""
from __future__ import annotations

import json
import subprocess

import pytest

from vllm_machete_plugin.bench import load


def test_summary_means_and_ratios():
    runs = [{"side": "machete", "vllm_load_s": 5.0, "load_s": 3.0, "process_weights_s": 1.2},
            {"side": "builtin", "vllm_load_s": 4.0, "load_s": 2.0, "process_weights_s": 0.4},
            {"side": "machete", "vllm_load_s": 3.0, "load_s": 2.0, "process_weights_s": 1.0},
            {"side": "builtin", "vllm_load_s": 2.0, "load_s": 2.0, "process_weights_s": 0.4}]
    s = load.summary(runs)
    assert s["mean"]["machete"] == {"vllm_load_s": 4.0, "load_s": 2.5, "process_weights_s": 1.1}
    assert s["ratios"]["machete/builtin"]["vllm_load_s"] == pytest.approx(4.0 / 3.0)
    assert s["ratios"]["machete/builtin"]["process_weights_s"] == pytest.approx(1.1 / 0.4)


def test_driver_reads_each_workers_record_and_vllms_load_line(tmp_path, monkeypatch):
    monkeypatch.setattr(load.e2e, "write_model", lambda path: path)
    calls = []

    def fake_run(cmd, capture_output, text):
        side, out = cmd[-3], cmd[-1]
        calls.append(side)
        secs = {"machete": 4.5, "builtin": 3.0}[side]
        with open(out, "w") as f:
            json.dump({"side": side, "startup": {"process_weights_s": secs / 5}, "load_s": secs - 1,
                       "engine_start_s": 20.0}, f)
        return subprocess.CompletedProcess(cmd, 0, stdout=f"INFO Model loading took 36.8 GiB and {secs} seconds\n",
                                           stderr="")

    monkeypatch.setattr(load.subprocess, "run", fake_run)
    out = tmp_path / "load.json"
    assert load.main(["--reps", "2", "--json", str(out)]) == 0
    assert calls == ["machete", "builtin", "machete", "builtin"]  # alternating, one process each
    result = json.loads(out.read_text())
    assert [r["vllm_load_s"] for r in result["runs"]] == [4.5, 3.0, 4.5, 3.0]
    assert result["ratios"]["machete/builtin"]["vllm_load_s"] == pytest.approx(1.5)


def test_a_failed_worker_stops_the_run(monkeypatch, tmp_path):
    monkeypatch.setattr(load.e2e, "write_model", lambda path: path)
    monkeypatch.setattr(load.subprocess, "run",
                        lambda cmd, capture_output, text: subprocess.CompletedProcess(cmd, 1, "", "CUDA OOM"))
    with pytest.raises(SystemExit, match="machete rep 0 failed"):
        load.main(["--reps", "1"])
