"""benchmarks/l2_model.py, the LRU model of the L2 behind docs/profile_h200.md's DRAM tables:
its tile orders visit every tile once, and it reproduces the numbers the docs quote."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("l2_model", Path(__file__).parents[1] / "benchmarks" / "l2_model.py")
l2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(l2)


@pytest.mark.parametrize("raster,log_swizzle", [("N", 0), ("M", 0), ("M", 2), ("N", 3)])
def test_cutlass_orders_visit_every_tile_once(raster, log_swizzle):
    tiles = list(l2.cutlass_tiles(16, 12, raster, log_swizzle))
    assert sorted(tiles) == [(m, n) for m in range(16) for n in range(12)]
    # the first cluster pair shares its token tile; along the features the next CTAs keep it
    assert tiles[0][1] == tiles[1][1] and (raster == "N" or log_swizzle or tiles[2][1] == tiles[0][1])


def test_lru_counts_only_misses_and_evicts_the_oldest():
    lru = l2.Lru(cap=3)
    for key in ("a", "b", "a", "c", "d", "a", "b"):
        lru.touch(key, 1)
    assert lru.missed == 5  # a, b, c, d, then b again (evicted when d came); a stayed recent


def test_the_docs_numbers():
    """docs/profile_h200.md, "DRAM traffic by tile order": the one case checked against ncu
    (Marlin down at 128 tokens: 125 / 231 MB modelled) and gate_up at 256 tokens."""
    assert l2.marlin_dram(8192, 28672, 128, "n-major") == pytest.approx(125, abs=1)
    assert l2.marlin_dram(8192, 28672, 128, "vllm") == pytest.approx(231, abs=1)
    assert l2.marlin_dram(57344, 8192, 256, "n-major") == pytest.approx(900, abs=1)
    assert l2.marlin_dram(57344, 8192, 256, "chunk-major") == pytest.approx(228, abs=1)
