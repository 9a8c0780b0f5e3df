"""Soak: each side's `vllm serve` restarted, then held under a long mixed load on loopback.

  python -m vllm_machete_plugin.bench soak [--sides machete,builtin] [--minutes 10] [--ramp-minutes 1] \
      [--concurrency 64] [--restarts 1] [--solo] [--json FILE] [--plot-dir DIR]
  python -m vllm_machete_plugin.bench soak --report FILE [--plot-dir DIR]

1. Starts. Each side gets cache directories of its own (vLLM's compile cache, Inductor's,
   Triton's; empty unless --cache-dir names filled ones). It is started and stopped
   `--restarts` times, then started once more and kept: with empty caches the first start
   is a cold start and the later ones warm restarts. Each start is timed from launch to a
   healthy /health and split into phases from the server's log (bench/startup.py). Sides
   start one at a time (vLLM's memory profiling assumes no other start on the GPU).
2. Load. The kept servers run side by side on the one GPU (each with
   gpu_memory_utilization / number of sides), under the same load at the same time; with
   --solo each side is kept, loaded and stopped in turn, alone on the GPU (0.9 of its
   memory), so one side's prefill bursts cannot move the other's throughput. The load:
   `--concurrency` clients per server for `--ramp-minutes` + `--minutes`, each sending one
   request after another, taken from one RequestDeck per side (every side the same sequence
   in the order the requests are sent), streamed, random token ids, ignore_eos:
     normal: a prompt of 64..4096 tokens, 16..1024 output tokens;
     abort (5%): the client closes the stream after 1..32 chunks;
     over-length (2%): a prompt longer than max_model_len, which must get HTTP 400;
     n>1 (5%): n = 2..4 completions, each of which must finish with its full length.
   Anything else is a failure: another status, an error in the stream, a stream that ends
   early. Requests still in flight at the end are cut and counted apart.
3. Every `--sample-s` seconds per side: GPU memory of the server's processes (nvidia-smi;
   the whole GPU's where the processes are not visible), output and prompt tokens per second
   (the server's vllm:generation_tokens_total, vllm:prompt_tokens_total), KV-cache use,
   preemptions, and the requests finished in that interval by outcome. The ramp's intervals (all clients start at once, so
   the first minute holds their prefills: 401-404 output tok/s against 585-746 later, on our
   side and the built-in one alike, H200) are reported, marked, and left out of the targets,
   which compare the first and the last interval after the ramp. Beside them the report gives
   the judged intervals' output tok/s spread and least-squares trend (trend()). With lengths
   drawn independently per request, single minutes moved by ~8% (sd, H200, 2026-12-04), more
   than the 5% target: ~70 requests finish per minute, so their token volume alone varies by
   ~7%. The deck stratifies the lengths (RequestDeck), which cuts that to ~2%.
Results: JSON, markdown (starts, then the soak per interval with the targets of issue 18),
a PNG of memory and throughput over time.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

from . import e2e, serving, startup
from .e2e import _fmt

KINDS = (("abort", 0.05), ("overlength", 0.02), ("multi", 0.05))  # the rest: normal
PROMPT_LEN, OUTPUT_LEN, ABORT_AFTER, MULTI_N = (64, 4096), (16, 1024), (1, 32), (2, 4)
OUTCOMES = ("ok", "aborted", "rejected", "failed", "cut")
METRICS = {"gen_tokens": "vllm:generation_tokens_total", "prompt_tokens": "vllm:prompt_tokens_total",
           "preemptions": "vllm:num_preemptions_total",
           "kv_usage": "vllm:kv_cache_usage_perc", "running": "vllm:num_requests_running",
           "waiting": "vllm:num_requests_waiting"}
# Targets of issue 18 (checked in the report).
MEMORY_DRIFT, THROUGHPUT_DRIFT = 0.01, 0.05


def _filled(env: dict[str, str]) -> bool:
    """Whether a start finds compiled graphs (vLLM's torch_compile_cache) to reuse: a warm restart.
    Not any file: a launch that failed in its config check leaves vLLM's model-info cache behind
    (`modelinfos/`), and the next start is still cold (seen on the H200, 2026-12-03)."""
    compiled = Path(env["VLLM_CACHE_ROOT"]) / "torch_compile_cache"
    return compiled.is_dir() and any(p.is_file() for p in compiled.rglob("*"))


# ---- the load ------------------------------------------------------------------------------

KIND_CYCLE, LENGTH_BLOCK = 100, 16  # kinds hold their shares exactly per 100 requests; lengths per 16


def stratified(rng: random.Random, lo: int, hi: int, n: int) -> list[int]:
    """n integers in [lo, hi], one from each of n slices of the range (slice i: lo + i*size//n up to
    lo + (i+1)*size//n, exclusive), in random order."""
    size = hi - lo + 1
    if size < n:
        raise ValueError(f"cannot cut [{lo}, {hi}] into {n} slices")
    vals = [rng.randrange(lo + i * size // n, lo + (i + 1) * size // n) for i in range(n)]
    rng.shuffle(vals)
    return vals


class RequestDeck:
    """The soak's requests, in the order they are sent: (kind, completions payload, abort-after
    chunks). Every LENGTH_BLOCK consecutive requests take one prompt length from each of
    LENGTH_BLOCK equal slices of PROMPT_LEN and one output length from each slice of OUTPUT_LEN
    (paired at random), and every KIND_CYCLE requests hold each kind of KINDS at its share, so
    any minute's ~70 requests carry nearly the same token volume: with lengths drawn
    independently, 70 requests' output tokens vary by ~7% (sd) from window to window, ~2% so.
    Decks of one seed give the same sequence: one per side, so the sides see one load."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(f"deck/{seed}")
        self.kinds: list[str] = []
        self.lengths: list[tuple[int, int]] = []

    def next(self, vocab: int, max_model_len: int, model: str) -> tuple[str, dict, int]:
        rng = self.rng
        if not self.kinds:
            self.kinds = [name for name, share in KINDS for _ in range(round(share * KIND_CYCLE))]
            self.kinds += ["normal"] * (KIND_CYCLE - len(self.kinds))
            rng.shuffle(self.kinds)
        if not self.lengths:
            self.lengths = list(zip(stratified(rng, *PROMPT_LEN, LENGTH_BLOCK), stratified(rng, *OUTPUT_LEN, LENGTH_BLOCK)))
        kind, (plen, out) = self.kinds.pop(), self.lengths.pop()
        if kind == "overlength":
            plen = rng.randint(max_model_len + 1, max_model_len + 512)
        payload = {"model": model, "prompt": [rng.randrange(3, vocab) for _ in range(plen)], "max_tokens": out,
                   "ignore_eos": True, "temperature": 1.0, "stream": True,
                   "n": rng.randint(*MULTI_N) if kind == "multi" else 1}
        return kind, payload, rng.randint(*ABORT_AFTER)


async def one_request(session, url: str, kind: str, payload: dict, abort_after: int) -> tuple[str, str]:
    """(outcome, detail) of one streamed completion request."""
    async with session.post(url + "/v1/completions", json=payload) as resp:
        if kind == "overlength" or resp.status != 200:
            body = (await resp.text())[:400]
            if kind == "overlength" and resp.status == 400:
                return "rejected", body
            return "failed", f"{kind}: HTTP {resp.status}: {body}"
        chunks, finished = 0, {}
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            obj = json.loads(data)
            if "error" in obj:
                return "failed", f"{kind}: error in stream: {str(obj['error'])[:300]}"
            for choice in obj.get("choices", []):
                if choice.get("finish_reason"):
                    finished[choice["index"]] = choice["finish_reason"]
            chunks += 1
            if kind == "abort" and chunks >= abort_after:
                resp.close()
                return "aborted", ""
        else:
            return "failed", f"{kind}: stream ended without [DONE] after {chunks} chunks"
    want = {i: "length" for i in range(payload["n"])}
    if finished != want:
        return "failed", f"{kind}: completions finished {finished}, expected {want} (max_tokens {payload['max_tokens']})"
    return "ok", ""


def parse_metrics(text: str) -> dict[str, float]:
    """Our METRICS from a Prometheus text page, summed over label sets."""
    out: dict[str, float] = {}
    for key, name in METRICS.items():
        values = re.findall(r"^" + re.escape(name) + r"(?:\{[^}]*\})? ([0-9.eE+-]+)$", text, re.M)
        if values:
            out[key] = sum(float(v) for v in values)
    return out


def gpu_memory_mib(pids: list[int]) -> tuple[Optional[float], Optional[float]]:
    """(MiB held by these processes, MiB used on the whole GPU) from nvidia-smi; None where
    not visible (a container may hide other PID namespaces)."""
    def query(*a: str) -> list[str]:
        try:
            r = subprocess.run(["nvidia-smi", *a, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                               timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return []
        return [line.strip() for line in r.stdout.splitlines() if line.strip()]
    mine = [float(used) for pid, used in (line.split(", ") for line in query("--query-compute-apps=pid,used_memory"))
            if int(pid) in pids]
    total = query("--query-gpu=memory.used")
    return (sum(mine) if mine else None), (float(total[0]) if total else None)


class Side:
    """One server under load: its per-interval samples and outcome counts."""

    def __init__(self, name: str, url: str, model: str, pids=lambda: [], alive=lambda: True):
        self.name, self.url, self.model, self.pids, self.alive = name, url, model, pids, alive
        self.samples: list[dict] = []
        self.counts: list[dict[str, int]] = []
        self.examples: dict[str, list[str]] = {"rejected": [], "failed": []}

    def count(self, interval: int, outcome: str, detail: str) -> None:
        while len(self.counts) <= interval:
            self.counts.append(dict.fromkeys(OUTCOMES, 0))
        self.counts[interval][outcome] += 1
        if outcome in self.examples and len(self.examples[outcome]) < 5:
            self.examples[outcome].append(detail)


async def _sample(session, side: Side, t: float) -> dict:
    s: dict = {"t": t}
    try:
        async with session.get(side.url + "/metrics") as resp:
            s.update(parse_metrics(await resp.text()))
    except Exception as e:  # noqa: BLE001  (recorded: a server that stops answering is a finding)
        s["metrics_error"] = repr(e)[:200]
    s["server_mib"], s["gpu_mib"] = await asyncio.to_thread(gpu_memory_mib, side.pids())
    s["alive"] = side.alive()
    return s


async def run_load(sides: list[Side], seconds: float, concurrency: int, vocab: int, max_model_len: int,
                   sample_s: float = 60.0, seed: int = 0, on_sample=lambda side: None) -> None:
    """`concurrency` clients per side for `seconds`; fills each Side's samples and counts
    (interval i covers [i*sample_s, (i+1)*sample_s) from the start); on_sample(side) after
    every sample, so a run cut short keeps what it measured."""
    import aiohttp
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=900)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        t0 = time.monotonic()
        deadline = t0 + seconds
        last = int(max(1, round(seconds / sample_s))) - 1

        async def client(side: Side, deck: RequestDeck) -> None:
            while (left := deadline - time.monotonic()) > 0:
                kind, payload, abort_after = deck.next(vocab, max_model_len, side.model)
                try:
                    outcome, detail = await asyncio.wait_for(
                        one_request(session, side.url, kind, payload, abort_after), left)
                except asyncio.TimeoutError:
                    outcome, detail = "cut", ""
                except Exception as e:  # noqa: BLE001  (every client-side error is a failed request)
                    outcome, detail = "failed", f"{kind}: {e!r}"[:400]
                side.count(min(last, int((time.monotonic() - t0) // sample_s)), outcome, detail)

        async def sampler(side: Side) -> None:
            side.samples.append(await _sample(session, side, 0.0))
            for i in range(1, last + 2):
                await asyncio.sleep(max(0.0, t0 + i * sample_s - time.monotonic()))
                side.samples.append(await _sample(session, side, time.monotonic() - t0))
                print(f"[soak] {side.name} t={side.samples[-1]['t']:.0f}s {side.samples[-1]} "
                      f"{side.counts[i - 1] if i - 1 < len(side.counts) else {}}", flush=True)
                on_sample(side)

        # One deck per side, one seed: every side is sent the same requests in the same order. Runs
        # before 2026-12-04 seeded per side; up to session 25, per client with independent lengths.
        decks = {s.name: RequestDeck(seed) for s in sides}
        tasks = [client(s, decks[s.name]) for s in sides for _ in range(concurrency)]
        await asyncio.gather(*tasks, *(sampler(s) for s in sides))
    for s in sides:  # intervals in which nothing finished
        s.counts += [dict.fromkeys(OUTCOMES, 0) for _ in range(last + 1 - len(s.counts))]


def intervals(side: dict) -> list[dict]:
    """Per interval: memory at its end, output tok/s over it, KV use, outcome counts."""
    samples, counts, out = side["samples"], side["counts"], []
    for i in range(1, len(samples)):
        a, b = samples[i - 1], samples[i]
        dt = b["t"] - a["t"]

        def rate(key):
            return (b[key] - a[key]) / dt if key in a and key in b and dt > 0 else None
        own = b.get("server_mib") is not None
        out.append({"interval": i, "end_s": b["t"], "memory_mib": b.get("server_mib" if own else "gpu_mib"),
                    "memory_source": "server processes" if own else "whole GPU", "output_tok_s": rate("gen_tokens"),
                    "prompt_tok_s": rate("prompt_tokens"),
                    "kv_usage": b.get("kv_usage"), "preemptions": b.get("preemptions"),
                    **(counts[i - 1] if i - 1 < len(counts) else {})})
    return out


def ramp_intervals(settings: dict) -> int:
    """How many leading sample intervals are the ramp (0 for results from before --ramp-minutes)."""
    return round(settings.get("ramp_minutes", 0.0) * 60 / settings.get("sample_s", 60.0))


def verdict(side: dict, ramp: int = 0) -> dict:
    """Issue 18's soak targets for one side, on the intervals after the first `ramp` (counts:
    all intervals)."""
    rows = intervals(side)
    totals = {o: sum(r.get(o, 0) for r in rows) for o in OUTCOMES}
    judged = rows[ramp:] if len(rows) > ramp else rows
    first, last = judged[0], judged[-1]

    def drift(key, a_row=first):
        a, b = a_row.get(key), last.get(key)
        return None if a in (None, 0) or b is None else b / a - 1
    # memory drift only between samples of the same source (a server's processes or the whole GPU)
    mem = drift("memory_mib") if first["memory_source"] == last["memory_source"] else None
    tok = drift("output_tok_s")
    # without a ramp the first interval holds the ramp-up: also against the second
    after_ramp = drift("output_tok_s", rows[1]) if ramp == 0 and len(rows) > 2 else None
    return {"totals": totals, "memory_drift": mem, "throughput_drift": tok, "throughput_drift_after_ramp": after_ramp,
            "throughput_trend": trend([r.get("output_tok_s") for r in judged]),
            "no_failures": totals["failed"] == 0 and all(s.get("alive", True) for s in side["samples"]),
            "memory_flat": mem is not None and abs(mem) <= MEMORY_DRIFT,
            "throughput_flat": tok is not None and abs(tok) <= THROUGHPUT_DRIFT,
            "memory_source": last["memory_source"]}


# ---- report -------------------------------------------------------------------------------

def trend(values: list) -> Optional[dict]:
    """The spread of a per-interval series and its least-squares line, relative to its mean: sd, slope per
    interval and the slope's standard error (None with fewer than 3 values). A diagnostic beside the
    first-vs-last target: a load of random requests moves single intervals by more than a slow drift does."""
    y = [v for v in values if v is not None]
    n = len(y)
    if n < 3 or len(y) != len(values):
        return None
    mean, tm = sum(y) / n, (n - 1) / 2
    sxx = sum((t - tm) ** 2 for t in range(n))
    slope = sum((t - tm) * (v - mean) for t, v in enumerate(y)) / sxx
    resid = sum((v - mean - slope * (t - tm)) ** 2 for t, v in enumerate(y))
    return {"mean": mean, "sd": (sum((v - mean) ** 2 for v in y) / (n - 1)) ** 0.5 / mean,
            "slope": slope / mean, "slope_se": (resid / (n - 2) / sxx) ** 0.5 / mean}


def markdown(result: dict) -> str:
    sides = list(result["sides"])
    lines = [f"Model: {result.get('model')}; GPU: {result.get('gpu')}; settings: {json.dumps(result.get('settings', {}))}",
             "", "### Starts (seconds; cold = empty compile caches, warm = filled by the start before)", ""]
    starts = [(s, i, st) for s in sides for i, st in enumerate(result["sides"][s].get("starts", []))]
    if starts:
        lines.append("| phase | " + " | ".join(f"{s} #{i + 1} ({st['kind']})" for s, i, st in starts) + " |")
        lines.append("|---|" + "---|" * len(starts))
        rows = [("engine start (launch to healthy)", ("engine_start_s",), "{:.1f}"), ("model load", ("load_s",), "{:.1f}"),
                *startup.report_rows()]
        for label, keys, fmt in rows:
            vals = []
            for _, _, st in starts:
                v = st
                for k in keys:
                    v = v.get(k) if isinstance(v, dict) else None
                vals.append("-" if v is None else fmt.format(int(v) if fmt == "{:d}" else v))
            lines.append(f"| {label.removeprefix('start: ')} | " + " | ".join(vals) + " |")
        ref = result["sides"].get("builtin", {}).get("starts", [])
        for side in sides:
            if side == "builtin" or not ref:
                continue
            for kind in ("cold", "warm"):
                ours = [st for st in result["sides"][side].get("starts", []) if st["kind"] == kind]
                theirs = [st for st in ref if st["kind"] == kind]
                if ours and theirs:
                    lines.append("")
                    lines.append(f"{side} / builtin, {kind}: engine start {ours[-1]['engine_start_s'] / theirs[-1]['engine_start_s']:.2f}x, "
                                 f"model load {_ratio(ours[-1].get('load_s'), theirs[-1].get('load_s'))}")
    soaked = [s for s in sides if result["sides"][s].get("samples")]
    if soaked:
        solo, ramp = result["settings"].get("solo", False), ramp_intervals(result["settings"])
        lines += ["", f"### Soak: {result['settings'].get('minutes')} min"
                  f"{' after a ramp of ' + str(result['settings']['ramp_minutes']) + ' min' if ramp else ''}, "
                  f"{result['settings'].get('concurrency')} "
                  f"clients per server, {'one side at a time, alone on the GPU' if solo else 'all sides at once'}", ""]
        head = "| end (s) | " + " | ".join(f"{s} GPU MiB | {s} out tok/s | {s} prompt tok/s | {s} KV % | "
                                          f"{s} ok/abort/400/fail/cut" for s in soaked) + " |"
        lines += [head, "|---|" + "---|---|---|---|---|" * len(soaked)]
        per = {s: intervals(result["sides"][s]) for s in soaked}
        for i in range(max(len(v) for v in per.values())):
            cells = []
            for s in soaked:
                r = per[s][i] if i < len(per[s]) else {}
                cells += [_fmt("{:.0f}", r.get("memory_mib")), _fmt("{:.0f}", r.get("output_tok_s")),
                          _fmt("{:.0f}", r.get("prompt_tok_s")),
                          _fmt("{:.0f}", None if r.get("kv_usage") is None else 100 * r["kv_usage"]),
                          "/".join(str(r.get(o, "-")) for o in OUTCOMES)]
            end = next((per[s][i]["end_s"] for s in soaked if i < len(per[s])), 0.0)
            lines.append(f"| {end:.0f}{' (ramp)' if i < ramp else ''} | " + " | ".join(cells) + " |")
        lines += ["", "| target | " + " | ".join(soaked) + " |", "|---|" + "---|" * len(soaked)]
        v = {s: verdict(result["sides"][s], ramp) for s in soaked}
        after = " after the ramp" if ramp else ""
        lines.append("| no failed requests (besides the deliberate aborts and 400s) | " + " | ".join(
            f"{'met' if v[s]['no_failures'] else 'MISSED'} ({v[s]['totals']['failed']} failed of "
            f"{sum(v[s]['totals'].values())})" for s in soaked) + " |")
        lines.append(f"| memory, last interval vs first{after}, within {MEMORY_DRIFT:.0%} | " + " | ".join(
            f"{'met' if v[s]['memory_flat'] else 'MISSED'} ({_pct(v[s]['memory_drift'])}, {v[s]['memory_source']})"
            for s in soaked) + " |")
        lines.append(f"| output tok/s, last interval vs first{after}, within {THROUGHPUT_DRIFT:.0%} | " + " | ".join(
            f"{'met' if v[s]['throughput_flat'] else 'MISSED'} ({_pct(v[s]['throughput_drift'])})" for s in soaked) + " |")
        lines.append(f"| (output tok/s over the intervals{after}: mean, sd, least-squares trend per interval) | " + " | ".join(
            "-" if not (t := v[s]["throughput_trend"]) else
            f"{t['mean']:.0f}, sd {100 * t['sd']:.1f}%, trend {100 * t['slope']:+.1f}% ± {100 * t['slope_se']:.1f}%"
            for s in soaked) + " |")
        if not ramp:
            lines.append("| (output tok/s, last interval vs the second: the first holds the ramp-up) | " + " | ".join(
                _pct(v[s]["throughput_drift_after_ramp"]) for s in soaked) + " |")
        if len(soaked) > 1 and not solo:
            total = [sum(per[s][i]["output_tok_s"] or 0.0 for s in soaked) for i in range(min(len(per[s]) for s in soaked))]
            lines.append("\nAll sides together (they share the GPU), output tok/s per interval: "
                         + ", ".join(f"{t:.0f}" for t in total))
        for s in soaked:
            ex = result["sides"][s].get("examples", {})
            if ex.get("rejected"):
                lines.append(f"\n{s}: an over-length prompt got: `{ex['rejected'][0][:300]}`")
            for f in ex.get("failed", []):
                lines.append(f"\n{s}: failed: `{f[:300]}`")
    return "\n".join(lines)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:+.1f}%"


def _ratio(a, b) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def plot(result: dict, out_dir: Path) -> Optional[Path]:
    """Memory and output tok/s per interval, one line per side (None without soak data)."""
    soaked = {s: intervals(r) for s, r in result["sides"].items() if r.get("samples")}
    if not soaked:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, (mem, tok) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for side, rows in soaked.items():
        t = [r["end_s"] / 60 for r in rows]
        mem.plot(t, [r["memory_mib"] / 1024 if r["memory_mib"] is not None else float("nan") for r in rows],
                 marker="o", label=side)
        tok.plot(t, [r["output_tok_s"] if r["output_tok_s"] is not None else float("nan") for r in rows],
                 marker="o", label=side)
    mem.set(ylabel="GPU memory (GiB)", title=f"soak: {result.get('model')}\non {result.get('gpu')}")
    tok.set(ylabel="output tok/s", xlabel="minutes into the soak")
    if ramp_min := result.get("settings", {}).get("ramp_minutes"):
        for ax in (mem, tok):
            ax.axvspan(0, ramp_min, color="grey", alpha=0.15, label="ramp (not judged)")
    for ax in (mem, tok):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out_dir / "soak.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---- orchestration ------------------------------------------------------------------------

def run(args) -> dict:
    sides = serving.check_sides([s for s in args.sides.split(",") if s])
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="vmp-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cache_root = Path(args.cache_dir) if args.cache_dir else workdir / "caches"
    layers = args.layers or e2e.SHAPES[args.shape]["num_hidden_layers"]
    model = args.model or str(e2e.write_model(workdir / f"llama-3.1-{args.shape}-gptq-{layers}l", layers, args.shape))
    args.dummy = args.model is None
    if args.gpu_memory_utilization is None:
        args.gpu_memory_utilization = 0.9 if args.solo else round(0.9 / len(sides), 3)
    flags = serving.engine_flags(e2e.engine_kwargs(args))
    result = {**e2e._environment(), "sides": {s: {"starts": []} for s in sides},
              "model": args.model or f"Llama-3.1-{args.shape.upper()} GPTQ 4-bit g128, {layers} layers, dummy weights",
              "settings": {"minutes": args.minutes, "ramp_minutes": args.ramp_minutes,
                           "concurrency": args.concurrency, "restarts": args.restarts,
                           "sample_s": args.sample_s, "prompt_len": PROMPT_LEN, "output_len": OUTPUT_LEN,
                           "kinds": dict(KINDS), "lengths": f"stratified per {LENGTH_BLOCK} requests",
                           "max_model_len": args.max_model_len,
                           "gpu_memory_utilization": args.gpu_memory_utilization, "solo": args.solo,
                           "tensor_parallel_size": args.tensor_parallel_size}}

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))

    def server(i: int, side: str, n: int) -> serving.Server:
        env = startup.cache_env(cache_root / side)
        srv = serving.Server(side, model, flags, args.port + i, workdir / f"{side}-start{n}.log", env)
        srv.kind = "warm" if _filled(env) else "cold"
        return srv

    def started(side: str, srv: serving.Server) -> None:
        rec = {"kind": srv.kind, **srv.phases()}
        result["sides"][side]["starts"].append(rec)
        print(f"[soak] {side} start {len(result['sides'][side]['starts'])} ({srv.kind}): "
              f"{rec['engine_start_s']:.1f} s {rec.get('startup')}", flush=True)
        save()

    vocab = json.loads((Path(model) / "config.json").read_text())["vocab_size"]

    def load(group: list[tuple[str, serving.Server]]) -> None:
        """The soak of these kept servers, all at once."""
        sides_ = [Side(s, k.url, model, k.pids, lambda k=k: k.proc is not None and k.proc.poll() is None)
                  for s, k in group]
        print(f"[soak] {args.ramp_minutes} + {args.minutes} min, {args.concurrency} clients per server: "
              f"{[s for s, _ in group]}", flush=True)

        def keep(side: Side) -> None:
            result["sides"][side.name].update(samples=side.samples, counts=side.counts, examples=side.examples)
            save()

        asyncio.run(run_load(sides_, (args.ramp_minutes + args.minutes) * 60, args.concurrency, vocab,
                             args.max_model_len, args.sample_s, on_sample=keep))
        for side in sides_:
            keep(side)

    kept: list[serving.Server] = []
    try:
        for n in range(args.restarts):
            for i, side in enumerate(sides):
                with server(i, side, n) as srv:
                    started(side, srv)
        if args.solo:  # each side kept, loaded and stopped before the next starts
            for i, side in enumerate(sides):
                with server(i, side, args.restarts) as srv:
                    started(side, srv)
                    if args.minutes > 0:
                        load([(side, srv)])
        else:
            for i, side in enumerate(sides):
                kept.append(server(i, side, args.restarts).start())
                started(side, kept[-1])
            if args.minutes > 0:
                load(list(zip(sides, kept)))
    finally:
        for k in kept:
            k.stop()
    return result


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vllm_machete_plugin.bench soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a real W4A16 checkpoint (default: Llama-3.1-70B GPTQ, dummy weights)")
    ap.add_argument("--shape", choices=sorted(e2e.SHAPES), default="70b")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers of the built-in config (default: all)")
    ap.add_argument("--sides", default="machete,builtin", help=f"comma-separated subset of {list(serving.SIDES)}")
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the judged load (0: starts only)")
    ap.add_argument("--ramp-minutes", type=float, default=1.0,
                    help="load before the judged minutes: reported, marked, not judged (a multiple of --sample-s)")
    ap.add_argument("--concurrency", type=int, default=64, help="clients per server")
    ap.add_argument("--restarts", type=int, default=1, help="starts (and stops) of each side before the kept one")
    ap.add_argument("--solo", action="store_true", help="load one side at a time, alone on the GPU (default: all at once)")
    ap.add_argument("--cache-dir", help="per-side compile caches under DIR/<side> (default: new, empty)")
    ap.add_argument("--workdir", help="the dummy model, server logs and (without --cache-dir) the caches go here "
                    "(default: a new temp dir); a later run with the same DIR starts warm, as vLLM's compile-cache "
                    "key holds the model's path")
    ap.add_argument("--sample-s", type=float, default=60.0, help="seconds per sample interval")
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--gpu-memory-utilization", type=float, default=None, help="per side (default 0.9 / sides; 0.9 with --solo)")
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--port", type=int, default=8031, help="first side's port; the next sides count up")
    ap.add_argument("--json", help="results file")
    ap.add_argument("--plot-dir", help="write soak.png here")
    ap.add_argument("--report", help="only print the tables (and plot) of this results file")
    args = ap.parse_args(argv)
    if args.ramp_minutes < 0 or args.ramp_minutes * 60 % args.sample_s:
        ap.error(f"--ramp-minutes {args.ramp_minutes} must be a non-negative multiple of --sample-s "
                 f"({args.sample_s} s), so the ramp ends on a sample")
    result = json.loads(Path(args.report).read_text()) if args.report else run(args)
    print(markdown(result))
    if args.plot_dir and (p := plot(result, Path(args.plot_dir))):
        print(f"[soak] wrote {p}")
    return 0
