"""CPU tests of the kernel benchmark's bookkeeping (the timed part: tests/gpu/test_bench_kernels.py)."""
from __future__ import annotations

from vllm_machete_plugin.bench import kernels as bench


def test_round_orders_put_every_column_in_every_position():
    cols = ["machete_us", "marlin_us", "vllm_marlin_us", "vllm_machete_us", "fp16_us"]
    orders = bench.round_orders(cols, 2 * len(cols))
    assert len(orders) == 10 and all(sorted(o) == sorted(cols) for o in orders)
    for pos in range(len(cols)):
        assert sorted(o[pos] for o in orders) == sorted(2 * cols), pos
    assert orders[0] == cols and orders[1][0] == "marlin_us" and orders[5] == cols


def test_markdown_sums_the_layers_per_m():
    rows = [{"layer": "qkv", "M": 1, "floor_us": 1.0, "machete_us": 2.0},
            {"layer": "o", "M": 1, "floor_us": 0.5, "machete_us": 1.5},
            {"layer": "qkv", "M": 16, "floor_us": 1.0, "machete_us": None}]
    table = bench.markdown(rows, ["floor_us", "machete_us"]).splitlines()
    assert table[0] == "| layer | M | floor_us | machete_us |"
    assert "| qkv | 16 | 1.0 | - |" in table
    assert "| sum | 1 | 1.5 | 3.5 |" in table
    assert "| sum | 16 | 1.0 | - |" in table
