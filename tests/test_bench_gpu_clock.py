"""bench/gpu_clock.py without a GPU: the sampler's thread, its means, and readings that fail."""
import itertools
import time

from vllm_machete_plugin.bench import gpu_clock


def test_sampler_averages_what_it_read_while_the_region_ran():
    clocks = itertools.cycle([1500.0, 1700.0])
    with gpu_clock.ClockSampler(interval=0.005, clock=lambda: next(clocks), power=lambda: 690.0) as s:
        time.sleep(0.1)
    n = s.means()["samples"]
    assert n >= 4 and not s._thread.is_alive()
    assert s.means() == {"sm_mhz": (1500.0 * ((n + 1) // 2) + 1700.0 * (n // 2)) / n, "power_w": 690.0, "samples": n}
    assert len(s.readings) == n  # nothing read after the region


def test_a_reading_nvml_cannot_give_is_left_out_of_the_mean():
    with gpu_clock.ClockSampler(interval=0.001, clock=lambda: None, power=lambda: None) as s:
        pass
    assert s.means() == {"sm_mhz": None, "power_w": None, "samples": len(s.readings)} and len(s.readings) >= 1


def test_the_readers_give_none_without_nvml(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "clock_rate", lambda *a, **k: 1 / 0)
    monkeypatch.setattr(torch.cuda, "power_draw", lambda *a, **k: 1 / 0)
    assert gpu_clock.sm_clock_mhz() is None and gpu_clock.gpu_power_w() is None


def test_the_readers_ask_for_the_first_visible_gpu_by_index(monkeypatch):
    """Index 0, not the current device: asking for that would create a CUDA context in a
    process that has none (bench e2e's front end under tensor parallelism)."""
    import torch
    asked = []
    monkeypatch.setattr(torch.cuda, "clock_rate", lambda *a, **k: asked.append(a) or 1755)
    monkeypatch.setattr(torch.cuda, "power_draw", lambda *a, **k: asked.append(a) or 690500)
    assert gpu_clock.sm_clock_mhz() == 1755.0 and gpu_clock.gpu_power_w() == 690.5 and asked == [(0,), (0,)]
