"""CPU tests of the kernel benchmark's bookkeeping (the timed part on a GPU: tests/gpu/test_bench_kernels_gpu.py)."""
from __future__ import annotations

import collections
import os

import pytest

import torch

from vllm_machete_plugin import ops
from vllm_machete_plugin.bench import kernels as bench


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7])
def test_round_orders_balance_positions_and_predecessors(n):
    """A Williams design: over its rows (n, or 2n for odd n) every column takes every position
    equally often and follows every other column equally often within a round."""
    cols = [f"c{i}_us" for i in range(n)]
    rows = n if n % 2 == 0 else 2 * n
    orders = bench.round_orders(cols, rows)
    assert all(sorted(o) == sorted(cols) for o in orders)
    for pos in range(n):
        assert sorted(o[pos] for o in orders) == sorted(rows // n * cols), pos
    pairs = collections.Counter((a, b) for o in orders for a, b in zip(o, o[1:]))
    assert set(pairs) == {(a, b) for a in cols for b in cols if a != b}
    assert set(pairs.values()) <= {rows // n}
    assert bench.round_orders(cols, 2 * rows) == orders + orders  # more rounds repeat the design


def test_round_orders_vary_each_columns_predecessor_at_n_rounds():
    """The default (one round per column) on 5 columns, as in a Marlin A/B: every column is
    timed after at least two different columns (the plain rotation gave each one)."""
    cols = ["fp16_us", "vllm_marlin_us", "marlin_us", "marlin@order=0_us", "marlin@blocks=1_us"]
    before = collections.defaultdict(set)
    for o in bench.round_orders(cols, len(cols)):
        for a, b in zip(o, o[1:]):
            before[b].add(a)
    assert all(len(before[c]) >= 2 for c in cols), dict(before)


def test_markdown_sums_the_layers_per_m():
    rows = [{"layer": "qkv", "M": 1, "floor_us": 1.0, "machete_us": 2.0},
            {"layer": "o", "M": 1, "floor_us": 0.5, "machete_us": 1.5},
            {"layer": "qkv", "M": 16, "floor_us": 1.0, "machete_us": None}]
    table = bench.markdown(rows, ["floor_us", "machete_us"]).splitlines()
    assert table[0] == "| layer | M | floor_us | machete_us |"
    assert "| qkv | 16 | 1.0 | - |" in table
    assert "| sum | 1 | 1.5 | 3.5 |" in table
    assert "| sum | 16 | 1.0 | - |" in table


def test_interleaved_times_replay_each_graph_twice_in_rotated_order(monkeypatch):
    """CUDA graphs and events faked on the CPU: each graph's replay 'takes' its own cost
    (ms); the timer must replay every graph untimed then timed, in the rotated order,
    and report the median per call in µs."""
    log: list[str] = []
    clock = [0.0]

    class FakeGraph:
        def __init__(self, name: str, ms: list[float]):
            self.name, self.ms = name, iter(ms)

        def replay(self):
            log.append(self.name)
            clock[0] += next(self.ms)

    class FakeEvent:
        def __init__(self, enable_timing: bool = False):
            assert enable_timing
            self.t = None

        def record(self):
            self.t = clock[0]

        def synchronize(self):
            pass

        def elapsed_time(self, end: "FakeEvent") -> float:
            return end.t - self.t

    monkeypatch.setattr(bench.torch.cuda, "Event", FakeEvent)
    # untimed/timed replay costs per round; "a" is 20 calls per replay, "b" 10
    graphs = {"a": (FakeGraph("a", [9.0, 2.0, 9.0, 4.0, 9.0, 6.0]), 20),
              "b": (FakeGraph("b", [9.0, 1.0, 9.0, 1.0, 9.0, 3.0]), 10)}
    mhz = iter([1900.0, 1500.0, 1700.0, 1600.0, 1800.0, 1400.0])  # sampled after each timed replay
    monkeypatch.setattr(bench, "sm_clock_mhz", lambda: next(mhz))
    monkeypatch.setattr(bench, "gpu_power_w", lambda: 1 / 0)  # a millisecond replay cannot tell its own power
    clocks: dict = {}
    t = bench.interleaved_times_us(graphs, rounds=3, clocks=clocks)
    assert log == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
    assert t == {"a": 4.0 * 1e3 / 20, "b": 1.0 * 1e3 / 10}
    assert clocks == {"a": 1800.0, "b": 1500.0}  # a: 1900, 1600, 1800; b: 1500, 1700, 1400
    log.clear()  # default: one round per column
    bench.interleaved_times_us({c: (FakeGraph(c, [1.0] * 4), 1) for c in "xy"})
    assert log == ["x", "x", "y", "y", "y", "y", "x", "x"]


def test_ratio_to_best_vllm_takes_the_fastest_peer_by_layer_sum():
    rows = [{"layer": "qkv", "M": 64, "machete_us": 8.0, "vllm_marlin_us": 9.0, "vllm_machete_us": 12.0,
             "vllm_humming_us": 6.0},
            {"layer": "o", "M": 64, "machete_us": 2.0, "vllm_marlin_us": 1.0, "vllm_machete_us": 1.0,
             "vllm_humming_us": 6.0},
            {"layer": "qkv", "M": 128, "machete_us": 3.0, "vllm_marlin_us": None, "vllm_machete_us": 4.0,
             "vllm_humming_us": None},
            {"layer": "qkv", "M": 256, "machete_us": None, "vllm_marlin_us": 1.0}]
    assert bench.ratio_to_best_vllm(rows) == [(64, 1.0, "vllm_marlin_us"), (128, 0.75, "vllm_machete_us")]


def test_without_pdl_sets_the_switch_only_while_it_launches(monkeypatch):
    from vllm_machete_plugin.bench.kernels import PDL_ENV, our_cols, without_pdl
    seen = []
    monkeypatch.setenv(PDL_ENV, "1")
    assert without_pdl(lambda x: seen.append(os.environ.get(PDL_ENV)) or x)(7) == 7
    assert seen == ["0"] and os.environ[PDL_ENV] == "1"
    monkeypatch.delenv(PDL_ENV)
    without_pdl(lambda x: seen.append(os.environ.get(PDL_ENV)))(0)
    assert seen[-1] == "0" and PDL_ENV not in os.environ

    class B:
        name = "marlin"
    assert our_cols([B]) == ["marlin_us"]
    assert our_cols([B], pdl_ab=True) == ["marlin_us", "marlin_nopdl_us"]


def _fake_backend(name: str, prepared: list, apply):
    """A serving backend that implements everything, records what it prepares and applies with `apply`."""
    return type(f"Fake_{name}", (), {
        "name": name,
        "can_implement": staticmethod(lambda spec, cap: (True, "")),
        "prepare": staticmethod(lambda spec, w: prepared.append(w) or {"copy": w}),
        "apply": staticmethod(apply)})


def test_forced_schedule_columns_share_one_prepared_weight_per_copy(monkeypatch):
    """--schedules: each schedule becomes a column machete@<schedule>_us that runs
    vmp::machete_mm forced to it on the Machete backend's prepared copies (prepared once per
    copy, also when the plain machete_us column is not asked for)."""
    prepared, calls = [], []

    def apply(spec, p, x):
        raise AssertionError("the plain column was not asked for")

    monkeypatch.setattr(bench, "SERVING_BACKENDS", [_fake_backend("machete", prepared, apply)])
    monkeypatch.setattr(bench, "device_capability", lambda: 90)
    monkeypatch.setattr(bench, "forced_mm", lambda x, p, s: calls.append((x, p["copy"], s)) or s)
    cols = [bench.schedule_col(s) for s in ("128x64w", "256x64w")]
    impls = bench.implementations(256, 512, ["w0", "w1"], None, cols)
    assert sorted(impls) == ["machete@128x64w_us", "machete@256x64w_us"] and prepared == ["w0", "w1"]
    assert [fn("x") for fn in impls["machete@256x64w_us"]] == ["256x64w", "256x64w"]
    assert calls == [("x", "w0", "256x64w"), ("x", "w1", "256x64w")]


def test_marlin_plan_columns_call_apply_with_their_plan(monkeypatch):
    """--marlin-plans order=1: a column marlin@order=1 whose calls pass the plan to
    MarlinBackend.apply on each weight copy, prepared once, without the plain column."""
    calls, prepared = [], []

    def apply(spec, p, x, plan=None):
        calls.append((x, p["copy"], plan))
        return plan

    monkeypatch.setattr(bench, "SERVING_BACKENDS", [_fake_backend("marlin", prepared, apply)])
    monkeypatch.setattr(bench, "device_capability", lambda: 80)
    impls = bench.implementations(256, 512, ["w0", "w1"], None, [bench.plan_col("order=1")])
    assert list(impls) == ["marlin@order=1_us"] and prepared == ["w0", "w1"]
    assert [fn("x") for fn in impls["marlin@order=1_us"]] == ["order=1", "order=1"]
    assert calls == [("x", "w0", "order=1"), ("x", "w1", "order=1")]
    refused = {"marlin@order=7_us": [lambda x: (_ for _ in ()).throw(RuntimeError("cannot parse 'order=7'"))]}
    assert bench.runnable_at(refused, 16, "o M=16") == {}


def test_a_forced_tile_that_cannot_take_m_is_left_out_of_that_row_only(capsys):
    """--schedules with a small-M tile and an M above its limit: the op's refusal empties
    that column for that M (printed with the op's message); other columns and the impls
    for later M values stay."""
    def small_tile(x):
        if x > 16:
            raise RuntimeError("schedule 64x16 handles at most 16 tokens")
        return x

    impls = {"machete@64x16_us": [small_tile], "machete@256x32w_us": [lambda x: x], "vllm_humming_us": [lambda x: x]}
    assert sorted(bench.runnable_at(impls, 16, "qkv M=16")) == sorted(impls)
    active = bench.runnable_at(impls, 24, "qkv M=24")
    assert sorted(active) == ["machete@256x32w_us", "vllm_humming_us"]
    assert "machete@64x16_us" in impls
    assert "machete@64x16_us left out at qkv M=24: schedule 64x16 handles at most 16" in capsys.readouterr().out


def test_in_model_calls_write_x_before_each_gemm_and_subtract_the_copy():
    """--in-model: every call first rewrites X from its source (the kernel the model runs
    before each GEMM), then runs the GEMM on it; the copy's per-call time is subtracted."""
    x, x_src = torch.zeros(2, 3), torch.arange(6.0).reshape(2, 3)
    seen = []
    calls = bench.with_prelude([lambda t: seen.append(("w0", t.clone())), lambda t: seen.append(("w1", t.clone()))],
                               x, x_src)
    x.fill_(-1.0)
    calls[1]()
    calls[0]()
    assert [name for name, _ in seen] == ["w1", "w0"] and all(torch.equal(t, x_src) for _, t in seen)
    assert bench.minus_prelude({"machete_us": 30.0, "vllm_humming_us": 33.5}, 2.5) == {
        "machete_us": 27.5, "vllm_humming_us": 31.0}


def test_sustained_runs_each_column_alone_then_reads_its_power(monkeypatch):
    """Each column's graph replays back to back for the given seconds (fake clocks: host time
    advances 0.125 s per replay, GPU time by the graph's cost), then NVML is read once: µs per
    call over the whole run, and the energy per call from that column's own power."""
    host, gpu, log = [0.0], [0.0], []

    class FakeGraph:
        def __init__(self, name, ms):
            self.name, self.ms = name, ms

        def replay(self):
            log.append(self.name)
            host[0] += 0.125
            gpu[0] += self.ms

    class FakeEvent:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self):
            self.t = gpu[0]

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return end.t - self.t

    monkeypatch.setattr(bench.torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(bench.torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(bench.time, "monotonic", lambda: host[0])
    reads = {"a": (1500.0, 690.0), "b": (1800.0, 600.0)}  # what NVML says after each column's run
    monkeypatch.setattr(bench, "sm_clock_mhz", lambda: reads[log[-1]][0])
    monkeypatch.setattr(bench, "gpu_power_w", lambda: reads[log[-1]][1])
    out = bench.sustained({"a": (FakeGraph("a", 2.0), 20), "b": (FakeGraph("b", 1.0), 10)}, 1.0)
    assert log == ["a"] * 8 + ["b"] * 8  # one column at a time, 1 s each
    assert out["a"] == {"us": 2.0 * 1e3 / 20, "sm_mhz": 1500.0, "power_w": 690.0, "uJ": 690.0 * 100.0}
    assert out["b"]["us"] == 100.0 and out["b"]["uJ"] == 600.0 * 100.0  # same µs, less energy
    table = bench.sustained_markdown([{"layer": "o", "M": 256, "sustained": out}, {"layer": "o", "M": 1}])
    # 100 µs at 1500 / 1800 MHz: 150k / 180k SM cycles per call
    assert "| o | 256 | 100.0 / 1500 / 690 / 69000 / 150 | 100.0 / 1800 / 600 / 60000 / 180 |" in table
    assert "| o | 1 |" not in table and bench.sustained_markdown([{"layer": "o", "M": 1}]) == ""


def test_sustained_sums_and_ratio_to_the_best_peer():
    def read(us, uj):
        return {"us": us, "sm_mhz": 1800.0, "power_w": 690.0, "uJ": uj}
    rows = [{"layer": "o", "M": 16, "sustained": {"marlin": read(10.0, 7.0), "vllm_marlin": read(12.0, 8.0)}},
            {"layer": "down", "M": 16, "sustained": {"marlin": read(30.0, 20.0), "vllm_marlin": read(28.0, None)}},
            {"layer": "o", "M": 64}]  # no sustained reading: left out
    table = bench.sustained_markdown(rows)
    # cycles: (10 + 30) µs x 1800 MHz = 72k on both; µJ summed only where every layer has it
    assert "| sum | 16 | 40.0 / - / - / 27 / 72 | 40.0 / - / - / - / 72 |" in table and "| sum | 64 |" not in table
    as_rows = bench.sustained_as_rows(rows)
    assert as_rows == [{"layer": "o", "M": 16, "marlin_us": 10.0, "vllm_marlin_us": 12.0},
                       {"layer": "down", "M": 16, "marlin_us": 30.0, "vllm_marlin_us": 28.0}]
    assert bench.ratio_to_best_vllm(as_rows, "marlin_us") == [(16, 1.0, "vllm_marlin_us")]


def test_a_sustain_shorter_than_the_power_window_is_refused():
    with pytest.raises(SystemExit, match="at least 1 s"):
        bench.main(["--sustain", "0.2"])


@pytest.mark.skipif(not (ops.kernels_available() and ops.has_op("marlin_tile_plan")),
                    reason="the Marlin extension was not built (needs nvcc)")
def test_marlin_columns_name_the_tile_they_ran():
    """marlin_tile reads the planner (host code): the H200's own tile, and the plans of a 100 KB
    GPU with and without the drained kernels, for qkv at 64 tokens."""
    h200 = (132, 233472, 232448, 1024)
    assert bench.marlin_tile(64, 10240, 8192, None, h200) == "64x1 s4"
    assert bench.marlin_tile(64, 10240, 8192, "smem=102400,drain=0", h200) == "16x4 s3"
    assert bench.marlin_tile(64, 10240, 8192, "smem=102400", h200) == "32x2 s3 drained"
