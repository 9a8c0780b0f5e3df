"""The SM clock and board power of the first visible GPU (NVML, through torch.cuda; index 0
given, so a process without a CUDA context does not make one), read once or averaged over a
timed region. Under a power cap (H200: 700 W) the clock a kernel gets follows the power drawn
before and during it, so timings are read beside these."""
from __future__ import annotations

import threading
from typing import Callable, Optional


def sm_clock_mhz() -> Optional[float]:
    """The GPU's current SM clock (NVML), or None where NVML is unavailable."""
    try:
        import torch
        return float(torch.cuda.clock_rate(0))
    except Exception:
        return None


def gpu_power_w() -> Optional[float]:
    """The GPU's power draw in W, or None. NVML's reading is an average over about the last
    second: it tells one kernel's draw only after that kernel ran alone that long."""
    try:
        import torch
        return torch.cuda.power_draw(0) / 1000.0
    except Exception:
        return None


class ClockSampler:
    """`with ClockSampler() as s: <region>`: a thread reads the SM clock and the power every
    `interval` s while the region runs (and once at its end; by default one wake-up per 50 ms
    that takes the GIL, in the engine's process); s.means() is then
    {"sm_mhz", "power_w", "samples"}, a mean None where no reading came. Power being NVML's
    ~1 s average, a region shorter than that reads partly what ran before it."""

    def __init__(self, interval: float = 0.05, clock: Callable[[], Optional[float]] = None,
                 power: Callable[[], Optional[float]] = None):
        self.interval = interval
        self.clock, self.power = clock or sm_clock_mhz, power or gpu_power_w
        self.readings: list[tuple[Optional[float], Optional[float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.readings.append((self.clock(), self.power()))
            if self._stop.wait(self.interval):
                break

    def __enter__(self) -> "ClockSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def means(self) -> dict:
        def mean(i: int) -> Optional[float]:
            vals = [r[i] for r in self.readings if r[i] is not None]
            return sum(vals) / len(vals) if vals else None
        return {"sm_mhz": mean(0), "power_w": mean(1), "samples": len(self.readings)}
