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
