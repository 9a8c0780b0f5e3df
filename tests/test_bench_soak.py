"""bench soak without a GPU: the request mix, the load client against a fake server that
speaks vLLM's streamed completions and /metrics (good and broken), the per-interval
accounting, the targets in the report, the plot, and the start/restart orchestration."""
import asyncio
import json
import random
import threading

import pytest

from vllm_machete_plugin.bench import soak

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

MAX_LEN = 8192


def test_request_mix():
    deck = soak.RequestDeck(0)
    picks = [deck.next(1000, MAX_LEN, "m") for _ in range(4 * soak.KIND_CYCLE)]
    for cycle in range(4):  # every 100 requests hold each kind at its share exactly
        kinds = [p[0] for p in picks[cycle * soak.KIND_CYCLE:(cycle + 1) * soak.KIND_CYCLE]]
        assert {k: kinds.count(k) for k in ("abort", "overlength", "multi")} == {"abort": 5, "overlength": 2, "multi": 5}
    for kind, payload, abort_after in picks:
        n = len(payload["prompt"])
        assert (n > MAX_LEN) if kind == "overlength" else (64 <= n <= 4096)
        assert 16 <= payload["max_tokens"] <= 1024 and payload["stream"] and payload["ignore_eos"]
        assert (2 <= payload["n"] <= 4) if kind == "multi" else payload["n"] == 1
        assert all(3 <= t < 1000 for t in payload["prompt"]) and 1 <= abort_after <= 32
    again = soak.RequestDeck(0)
    assert [again.next(1000, MAX_LEN, "m") for _ in range(50)] == picks[:50]  # one seed, one sequence
    assert [soak.RequestDeck(1).next(1000, MAX_LEN, "m") for _ in range(3)] != picks[:3]


def test_lengths_are_stratified_per_block():
    """Each block of LENGTH_BLOCK requests takes one output length from each slice of the range,
    so windows of ~70 requests (about a minute's) vary far less in token volume than
    independent draws would (~7% sd)."""
    import statistics
    deck, b = soak.RequestDeck(3), soak.LENGTH_BLOCK
    outs = [deck.next(1000, MAX_LEN, "m")[1]["max_tokens"] for _ in range(200 * b)]
    lo, hi = soak.OUTPUT_LEN
    size = hi - lo + 1
    for i in range(0, len(outs), b):  # the k-th smallest of a block lies in slice k
        assert all(lo + k * size // b <= o < lo + (k + 1) * size // b for k, o in enumerate(sorted(outs[i:i + b])))
    sums = [sum(outs[s:s + 70]) for s in range(0, len(outs) - 70, 7)]
    assert statistics.pstdev(sums) / statistics.mean(sums) < 0.03
    assert sorted(soak.stratified(random.Random(0), 1, 4, 4)) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="into 4 slices"):
        soak.stratified(random.Random(0), 5, 7, 4)


def test_metrics_are_summed_over_label_sets():
    text = ('# HELP vllm:generation_tokens_total x\n'
            'vllm:generation_tokens_total{engine="0",model_name="m"} 1200.0\n'
            'vllm:generation_tokens_total{engine="1",model_name="m"} 34.0\n'
            'vllm:generation_tokens_created{engine="0"} 1.7e9\n'
            'vllm:kv_cache_usage_perc{engine="0"} 0.25\n'
            'vllm:num_requests_running 3\n')
    m = soak.parse_metrics(text)
    assert m == {"gen_tokens": 1234.0, "kv_usage": 0.25, "running": 3.0}


class FakeVllm:
    """vLLM's /v1/completions (SSE, one chunk per token and choice, finish_reason on the
    last, [DONE]), 400 for over-length prompts and /metrics; `broken` ends n>1 streams
    after their first token without a finish_reason."""

    def __init__(self, broken=False):
        self.broken, self.tokens, self.requests, self.bodies = broken, 0, 0, []
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/metrics", self.metrics)
        self.app = app

    async def completions(self, request):
        body = await request.json()
        self.requests += 1
        self.bodies.append(body)
        if len(body["prompt"]) > MAX_LEN:
            return web.json_response({"error": {"message": f"This model's maximum context length is {MAX_LEN} "
                                                           f"tokens. However, you requested {len(body['prompt'])}"}},
                                     status=400)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            await self.stream(resp, body)
        except ConnectionResetError:  # the client aborted (aiohttp's error derives from it)
            pass
        return resp

    async def stream(self, resp, body):
        steps = 1 if self.broken and body["n"] > 1 else body["max_tokens"]
        for step in range(steps):
            for i in range(body["n"]):
                last = step == body["max_tokens"] - 1
                chunk = {"choices": [{"index": i, "text": " w", "finish_reason": "length" if last else None}]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.tokens += 1
            if step % 64 == 0:
                await asyncio.sleep(0)
        if not (self.broken and body["n"] > 1):
            await resp.write(b"data: [DONE]\n\n")

    async def metrics(self, request):
        return web.Response(text=f'vllm:generation_tokens_total{{engine="0"}} {float(self.tokens)}\n'
                                 f'vllm:kv_cache_usage_perc{{engine="0"}} 0.5\n')


@pytest.fixture
def servers():
    """Two fake servers (good, broken) on loopback, in a thread of their own."""
    loop = asyncio.new_event_loop()
    fakes, runners, ports = [FakeVllm(), FakeVllm(broken=True)], [], []

    async def start():
        for f in fakes:
            runner = web.AppRunner(f.app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            ports.append(runner.addresses[0][1])

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    yield fakes, ports
    for r in runners:
        asyncio.run_coroutine_threadsafe(r.cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)


def test_load_counts_every_outcome_per_interval(servers, monkeypatch):
    fakes, ports = servers
    monkeypatch.setattr(soak, "KINDS", (("abort", 0.2), ("overlength", 0.2), ("multi", 0.2)))
    monkeypatch.setattr(soak, "OUTPUT_LEN", (16, 64))
    monkeypatch.setattr(soak, "gpu_memory_mib", lambda pids: (1000.0 + len(pids) if pids else None, 5000.0))
    good = soak.Side("good", f"http://127.0.0.1:{ports[0]}", "m", pids=lambda: [1, 2])
    bad = soak.Side("bad", f"http://127.0.0.1:{ports[1]}", "m")
    seen = []
    asyncio.run(soak.run_load([good, bad], seconds=2.0, concurrency=4, vocab=1000, max_model_len=MAX_LEN,
                              sample_s=1.0, on_sample=lambda side: seen.append((side.name, len(side.samples)))))
    assert sorted(seen) == [("bad", 2), ("bad", 3), ("good", 2), ("good", 3)]  # kept after every sample
    for side in (good, bad):
        assert len(side.samples) == 3 and len(side.counts) == 2  # t=0 and the end of each interval
        assert [s["t"] for s in side.samples][0] == 0.0 and side.samples[-1]["t"] == pytest.approx(2.0, abs=0.5)
    totals = {o: sum(c[o] for c in good.counts) for o in soak.OUTCOMES}
    assert totals["failed"] == 0 and min(totals["ok"], totals["aborted"], totals["rejected"]) > 0
    assert "maximum context length" in good.examples["rejected"][0]
    assert sum(c["failed"] for c in bad.counts) > 0 and "multi" in bad.examples["failed"][0]
    rows = soak.intervals({"samples": good.samples, "counts": good.counts})
    assert all(r["memory_mib"] == 1002.0 and r["output_tok_s"] > 0 for r in rows)
    assert soak.intervals({"samples": bad.samples, "counts": bad.counts})[0]["memory_mib"] == 5000.0
    assert sum(r["output_tok_s"] * 1.0 for r in rows) == pytest.approx(fakes[0].tokens, rel=0.35)


def test_every_side_gets_the_same_requests(servers):
    """One client per side: both servers see the same prompts, lengths and n, in the same order."""
    fakes, ports = servers
    sides = [soak.Side(name, f"http://127.0.0.1:{p}", "m") for name, p in zip(("machete", "builtin"), ports)]
    asyncio.run(soak.run_load(sides, seconds=1.0, concurrency=1, vocab=1000, max_model_len=MAX_LEN, sample_s=1.0))
    seq = [[(tuple(b["prompt"]), b["max_tokens"], b["n"]) for b in f.bodies] for f in fakes]
    n = min(len(s) for s in seq)
    assert n >= 2 and seq[0][:n] == seq[1][:n]


def _side(mem, tok, failed=0):
    samples = [{"t": 60.0 * i, "gen_tokens": sum(tok[:i]) * 60.0, "server_mib": m, "gpu_mib": 2 * m, "alive": True}
               for i, m in enumerate([mem[0]] + list(mem))]
    counts = [{"ok": 10, "aborted": 1, "rejected": 1, "failed": failed if i == 0 else 0, "cut": 0}
              for i in range(len(mem))]
    return {"samples": samples, "counts": counts, "examples": {"rejected": ["HTTP 400 too long"], "failed": []},
            "starts": [{"kind": "cold", "engine_start_s": 100.0, "load_s": 5.0, "startup": {"construct_s": 1.0}},
                       {"kind": "warm", "engine_start_s": 60.0, "load_s": 4.0, "startup": {"construct_s": 1.0}}]}


def test_report_checks_the_targets_and_plots(tmp_path):
    result = {"model": "m", "gpu": "G", "settings": {"minutes": 3, "concurrency": 64},
              "sides": {"machete": _side([40000, 40100, 40300], [1000, 1010, 960]),
                        "builtin": _side([40000, 40000, 40000], [1000, 1000, 1000], failed=2)}}
    ours, theirs = soak.verdict(result["sides"]["machete"]), soak.verdict(result["sides"]["builtin"])
    assert ours["memory_drift"] == pytest.approx(300 / 40000) and ours["memory_flat"]
    assert ours["throughput_drift"] == pytest.approx(-0.04) and ours["throughput_flat"] and ours["no_failures"]
    assert not theirs["no_failures"] and theirs["totals"]["failed"] == 2
    result["sides"]["machete"]["samples"][-1]["server_mib"] = 41000
    assert not soak.verdict(result["sides"]["machete"])["memory_flat"]
    mixed = {**result["sides"]["builtin"], "samples": [dict(x) for x in result["sides"]["builtin"]["samples"]]}
    mixed["samples"][-1]["server_mib"] = None  # last sample from the whole GPU: not comparable with the first
    v = soak.verdict(mixed)
    assert v["memory_drift"] is None and not v["memory_flat"] and v["memory_source"] == "whole GPU"
    md = soak.markdown(result)
    assert "| engine start (launch to healthy) | 100.0 | 60.0 | 100.0 | 60.0 |" in md
    assert "machete / builtin, cold: engine start 1.00x, model load 1.00x" in md
    assert "MISSED (2 failed of 38)" in md and "MISSED (+2.5%, server processes)" in md
    assert "HTTP 400 too long" in md
    assert ours["throughput_drift_after_ramp"] == pytest.approx(960 / 1010 - 1)
    assert "output tok/s per interval: 2000, 2010, 1960" in md
    path = soak.plot(result, tmp_path)
    assert path.exists() and path.stat().st_size > 10_000


def test_the_ramp_is_shown_and_not_judged(tmp_path):
    # Both sides' H200 soaks: ~400 output tok/s in the first minute (every client's prefill), ~600 after.
    side = _side([40000] * 4, [400, 600, 630, 615])
    assert not soak.verdict(side)["throughput_flat"]  # as before --ramp-minutes: the ramp is judged
    v = soak.verdict(side, ramp=1)
    assert v["throughput_drift"] == pytest.approx(615 / 600 - 1) and v["throughput_flat"]
    assert v["throughput_drift_after_ramp"] is None and v["totals"]["ok"] == 40  # counts keep the ramp
    assert not soak.verdict(_side([40000] * 4, [400, 600, 630, 500]), ramp=1)["throughput_flat"]
    result = {"model": "m", "gpu": "G", "sides": {"machete": side},
              "settings": {"minutes": 3, "ramp_minutes": 1.0, "sample_s": 60.0, "concurrency": 64}}
    md = soak.markdown(result)
    assert "3 min after a ramp of 1.0 min" in md and "| 60 (ramp) |" in md and "| 120 |" in md
    assert "output tok/s, last interval vs first after the ramp, within 5% | met (+2.5%) |" in md
    assert "the first holds the ramp-up" not in md
    assert soak.ramp_intervals({"sample_s": 30.0, "ramp_minutes": 1.0}) == 2
    assert soak.ramp_intervals({"minutes": 10}) == 0  # results from before the ramp
    assert soak.plot(result, tmp_path).exists()


def test_a_ramp_off_the_sample_grid_is_refused(capsys):
    with pytest.raises(SystemExit):
        soak.main(["--ramp-minutes", "0.5", "--sample-s", "60", "--minutes", "0"])
    assert "must be a non-negative multiple of --sample-s" in capsys.readouterr().err


def _fake_server(events, flags_seen):
    class FakeServer:
        def __init__(self, side, model, flags, port, log_path, env=None):
            self.side, self.flags, self.port, self.env, self.proc = side, flags, port, env, None
            self.url = f"http://127.0.0.1:{port}"
            flags_seen.append(flags)
            self.model = model

        def start(self):
            live = [e for e in events if e[0] == "up"]
            events.append(("up", self.side, self.port, self.kind, len(live), self.model))
            graph = soak.Path(self.env["VLLM_CACHE_ROOT"]) / "torch_compile_cache" / "abc" / "graph"
            graph.parent.mkdir(parents=True, exist_ok=True)
            graph.write_text("compiled")
            return self

        def phases(self):
            return {"engine_start_s": 1.0, "load_s": 0.5, "startup": {}}

        def pids(self):
            return []

        def stop(self):
            events.append(("down", self.side))

        def __enter__(self):
            return self.start()

        def __exit__(self, *exc):
            self.stop()

    return FakeServer


def test_starts_are_cold_then_warm_one_side_at_a_time(tmp_path, monkeypatch):
    events, flags = [], []
    monkeypatch.setattr(soak.serving, "Server", _fake_server(events, flags))
    monkeypatch.setattr(soak.e2e, "_environment", lambda: {"gpu": "FakeGPU"})
    out = tmp_path / "r.json"
    soak.main(["--minutes", "0", "--layers", "2", "--json", str(out), "--cache-dir", str(tmp_path / "c")])
    result = json.loads(out.read_text())
    ups = [e for e in events if e[0] == "up"]
    assert [(e[1], e[3]) for e in ups] == [("machete", "cold"), ("builtin", "cold"),
                                           ("machete", "warm"), ("builtin", "warm")]
    assert events[:4] == [ups[0], ("down", "machete"), ups[1], ("down", "builtin")]  # one at a time
    assert events[-2:] == [("down", "machete"), ("down", "builtin")]  # kept servers stopped at the end
    assert ups[0][2] != ups[1][2]
    assert flags[0] == flags[1] and flags[0][flags[0].index("--gpu-memory-utilization") + 1] == "0.45"
    assert result["settings"]["gpu_memory_utilization"] == 0.45
    assert [s["kind"] for s in result["sides"]["builtin"]["starts"]] == ["cold", "warm"]


def test_a_cache_without_compiled_graphs_is_cold(tmp_path):
    env = soak.startup.cache_env(tmp_path)
    assert not soak._filled(env)
    info = tmp_path / "vllm" / "modelinfos" / "x.json"  # left by a launch that failed its config check
    info.parent.mkdir(parents=True)
    info.write_text("{}")
    (tmp_path / "vllm" / "torch_compile_cache").mkdir()
    assert not soak._filled(env)
    (tmp_path / "vllm" / "torch_compile_cache" / "h" ).mkdir()
    (tmp_path / "vllm" / "torch_compile_cache" / "h" / "graph.py").write_text("compiled")
    assert soak._filled(env)


def test_a_later_run_in_the_same_workdir_starts_warm(tmp_path, monkeypatch):
    # vLLM's compile-cache key holds the model path: a warm restart in a second run needs the same
    # dummy model path and cache dirs, which --workdir keeps.
    events, flags = [], []
    monkeypatch.setattr(soak.serving, "Server", _fake_server(events, flags))
    monkeypatch.setattr(soak.e2e, "_environment", lambda: {"gpu": "FakeGPU"})
    args = ["--minutes", "0", "--restarts", "0", "--solo", "--layers", "2", "--sides", "machete",
            "--workdir", str(tmp_path / "w")]
    soak.main(args + ["--json", str(tmp_path / "a.json")])
    soak.main(args + ["--json", str(tmp_path / "b.json")])
    kinds = [json.loads((tmp_path / f).read_text())["sides"]["machete"]["starts"][0]["kind"] for f in ("a.json", "b.json")]
    assert kinds == ["cold", "warm"]
    assert [e[0] for e in events] == ["up", "down", "up", "down"]
    models = {e[5] for e in events if e[0] == "up"}
    assert len(models) == 1 and models.pop().startswith(str(tmp_path / "w"))


def test_solo_loads_each_side_alone_after_its_restarts(tmp_path, monkeypatch):
    events, flags = [], []
    monkeypatch.setattr(soak.serving, "Server", _fake_server(events, flags))
    monkeypatch.setattr(soak.e2e, "_environment", lambda: {"gpu": "FakeGPU"})

    async def fake_load(sides, seconds, concurrency, vocab, max_model_len, sample_s=60.0, seed=0, on_sample=None):
        live = sum(1 for e in events if e[0] == "up") - sum(1 for e in events if e[0] == "down")
        events.append(("load", [s.name for s in sides], live, seconds))
        for side in sides:
            side.samples = [{"t": 0.0, "gen_tokens": 0.0}, {"t": 60.0, "gen_tokens": 600.0}]
            side.counts = [dict.fromkeys(soak.OUTCOMES, 0)]

    monkeypatch.setattr(soak, "run_load", fake_load)
    out = tmp_path / "r.json"
    soak.main(["--minutes", "1", "--solo", "--layers", "2", "--json", str(out), "--cache-dir", str(tmp_path / "c")])
    result = json.loads(out.read_text())
    steps = [(e[0], e[1]) if e[0] != "up" else ("up", e[1], e[3]) for e in events]
    assert steps == [("up", "machete", "cold"), ("down", "machete"), ("up", "builtin", "cold"), ("down", "builtin"),
                     ("up", "machete", "warm"), ("load", ["machete"]), ("down", "machete"),
                     ("up", "builtin", "warm"), ("load", ["builtin"]), ("down", "builtin")]
    assert all(e[2] == 1 and e[3] == 120.0 for e in events if e[0] == "load")  # alone, a ramp minute + 1
    assert result["settings"]["ramp_minutes"] == 1.0
    assert flags[0][flags[0].index("--gpu-memory-utilization") + 1] == "0.9"
    assert result["settings"]["solo"] is True
    assert all(len(result["sides"][s]["samples"]) == 2 for s in ("machete", "builtin"))
    md = soak.markdown(result)
    assert "one side at a time, alone on the GPU" in md and "All sides together" not in md


def test_our_side_is_refused_before_any_start_without_the_entry_point(tmp_path, monkeypatch, capsys):
    # A bare `pip` of another Python installs the plugin where vLLM's processes never look: vLLM then fails
    # a minute into `vllm serve --quantization machete`. The bench says so before starting anything.
    events, flags = [], []
    monkeypatch.setattr(soak.serving, "Server", _fake_server(events, flags))
    monkeypatch.setattr(soak.e2e, "_environment", lambda: {"gpu": "FakeGPU"})
    monkeypatch.setattr(soak.serving.importlib.metadata, "entry_points", lambda group: [])
    with pytest.raises(SystemExit, match=r"side 'machete' needs the plugin's vllm.general_plugins entry point.*-m pip install"):
        soak.main(["--minutes", "0", "--layers", "2", "--workdir", str(tmp_path / "w")])
    assert events == []
    soak.main(["--minutes", "0", "--restarts", "0", "--layers", "2", "--sides", "builtin", "--workdir", str(tmp_path / "w")])
    assert [e[:2] for e in events] == [("up", "builtin"), ("down", "builtin")]
    assert "startup phases of ['builtin'] will be only vLLM's own lines" in capsys.readouterr().err


def test_sides_are_checked_by_name():
    with pytest.raises(SystemExit, match=r"unknown side\(s\) \['marlin'\]"):
        soak.serving.check_sides(["machete", "marlin"])
    assert soak.serving.plugin_entry_point_listed()  # this checkout is installed (README: pip install -e .)
    assert soak.serving.check_sides(["machete", "humming"]) == ["machete", "humming"]


def test_the_trend_separates_a_drift_from_the_spread_of_the_load():
    flat = soak.trend([746, 713, 631, 703, 719, 751, 656, 609, 748, 624])  # our H200 soak, 2026-12-04
    assert flat["mean"] == pytest.approx(690.0) and 0.07 < flat["sd"] < 0.08
    assert abs(flat["slope"]) < 1.5 * flat["slope_se"]  # no drift told apart from the spread
    falling = soak.trend([700 * (1 - 0.02 * t) for t in range(10)])  # -2% of the start per interval
    assert falling["slope"] == pytest.approx(-0.02 * 700 / falling["mean"]) and falling["slope_se"] < 1e-9
    assert soak.trend([1.0, 2.0]) is None and soak.trend([1.0, None, 2.0, 3.0]) is None


def test_prompt_tokens_per_interval_are_reported_where_sampled():
    side = _side([40000] * 3, [600, 610, 620])
    for i, s in enumerate(side["samples"]):
        s["prompt_tokens"] = 3000.0 * 60 * i
    rows = soak.intervals(side)
    assert [r["prompt_tok_s"] for r in rows] == pytest.approx([3000.0] * 3)
    assert soak.intervals(_side([40000] * 3, [600] * 3))[0]["prompt_tok_s"] is None  # runs before 2026-12-04
    md = soak.markdown({"model": "m", "gpu": "G", "sides": {"machete": side},
                        "settings": {"minutes": 3, "concurrency": 64}})
    assert "| 60 | 40000 | 600 | 3000 | - |" in md
    assert "mean, sd, least-squares trend per interval) | 610, sd 1.6%, trend +1.6% ± 0.0% |" in md
