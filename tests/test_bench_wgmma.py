"""bench wgmma's arithmetic and table, with a fake probe (no GPU)."""
import pytest

from vllm_machete_plugin.bench import wgmma


def test_rate_is_flop_over_time_and_table_compares_to_cublas():
    sms, iters = 132, 1000

    def probe(n, rs, warpgroups, in_flight, it):  # a fake GPU: 500 TFLOP/s for N=64 rs, 1000 elsewhere
        rate = 500e12 if (n == 64 and rs) else 1000e12
        return wgmma.flop(n, warpgroups, it, sms) / rate * 1e3

    rows = wgmma.measure(iters, sms, probe)
    assert len(rows) == len(wgmma.CONFIGS) == 24
    assert wgmma.flop(64, 2, 10, 132) == 2 * 64 * 64 * 64 * 10 * 2 * 132
    by = {(r["n"], r["a"], r["warpgroups"], r["in_flight"]): r["tflops"] for r in rows}
    assert by[(64, "rs", 1, 1)] == pytest.approx(500) and by[(256, "ss", 2, 2)] == pytest.approx(1000)
    md = wgmma.markdown({"gpu": "FakeGPU", "sms": sms, "iters": iters, "cublas_fp16_tflops": 800.0, "rows": rows})
    assert "| 64 | rs | 1 | 1 | 500 | 0.62 |" in md and "| 256 | ss | 2 | 2 | 1000 | 1.25 |" in md


def test_overlap_table_from_alu_mma_and_both_times():
    """measure_dq asks the probe for the upconversion alone, the wgmmas alone and both, per
    (N, rounds, A source, groups in flight), each with that row's A source and depth; both / sum
    is 1 when a fake GPU adds them and max / sum when it overlaps them."""
    iters = 1000
    calls = []

    def probe(n, rs, warpgroups, in_flight, it, dq=0, mma=True, split=0):  # ns per k-block: ALU 100 per round,
        calls.append((n, rs, warpgroups, in_flight, dq, mma, split))         # wgmma 300
        alu, tensor = 100.0 * dq, (300.0 + (10.0 if not rs else 0.0) + 5.0 * (in_flight - 2)) if mma else 0.0
        alu += 20.0 * dq if split == 1 else 0.0  # the stores of the transform warpgroups
        adds = n == 64 and (rs or split == 1) and in_flight == 2  # the fake GPU overlaps everywhere else
        return (alu + tensor if adds else max(alu, tensor)) * it * 1e-6

    rows = wgmma.measure_dq(iters, probe)
    assert len(rows) == len(wgmma.DQ_CONFIGS) == 20
    assert {c[1:4] for c in calls} == {(True, 2, 2), (False, 2, 2), (True, 2, 3), (False, 4, 2)}
    # split rows: 4 warpgroups with the transform work, the wgmmas alone from the plain 2-warpgroup SS kernel
    assert {c for c in calls if c[2] == 4} == {(n, False, 4, 2, dq, mma, split) for n in (64, 128) for dq in (1, 2)
                                               for mma in (False, True) for split in (1, 2)}
    assert all(c[6] == 0 for c in calls if c[2] == 2)
    assert (64, True, 2, 2, 2, False, 0) in calls and (64, False, 2, 2, 0, True, 0) in calls
    assert (128, True, 2, 3, 1, True, 0) in calls
    by = {(r["n"], r["rounds"], r["a"], r["in_flight"]): r for r in rows}
    assert by[64, 2, "rs", 2]["alu_ns"] == pytest.approx(200) and by[64, 2, "rs", 2]["mma_ns"] == pytest.approx(300)
    assert by[64, 2, "rs", 2]["both_over_sum"] == pytest.approx(1.0)
    assert by[64, 1, "ss", 2]["mma_ns"] == pytest.approx(310)  # the wgmma-alone time of that row's variant
    assert by[64, 1, "rs", 3]["mma_ns"] == pytest.approx(305)
    assert by[128, 1, "rs", 2]["both_over_sum"] == pytest.approx(by[128, 1, "rs", 2]["max_over_sum"]) == pytest.approx(0.75)
    md = wgmma.markdown({"gpu": "FakeGPU", "sms": 132, "iters": iters, "cublas_fp16_tflops": 800.0, "rows": [],
                         "dq_rows": rows})
    assert "| 64 | 2 | rs | 2 | 200.0 | 300.0 | 500.0 | 1.00 | 0.60 |" in md
    assert "| 64 | 1 | ss | 2 | 100.0 | 310.0 | 310.0 | 0.76 | 0.76 |" in md
    assert by[64, 1, "ss + transform WGs, stores", 2]["split"] == 1
    assert "| 64 | 1 | ss + transform WGs, stores | 2 | 120.0 | 310.0 | 430.0 | 1.00 | 0.72 |" in md
    assert "| 64 | 2 | ss + transform WGs, no stores | 2 | 200.0 | 310.0 | 310.0 | 0.61 | 0.61 |" in md
