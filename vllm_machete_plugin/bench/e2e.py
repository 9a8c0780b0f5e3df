"""End-to-end benchmark: our plugin (`--quantization machete`) against vLLM 0.26.0's
built-in path and vLLM with its Humming kernels (`--linear-backend humming`) for the same
W4A16 checkpoint, on one GPU.

Default model: Llama-3.1-70B (config built in) in GPTQ 4-bit g128 with dummy weights
(load_format="dummy"); `--layers N` shortens it, `--model PATH` takes a real checkpoint.
The config lists `modules_in_block_to_quantize`, so vLLM's built-in GPTQ path really
quantizes every decoder linear; each side reports which kernel ran and how many linear
layers are quantized.

Each side runs in its own processes with identical engine settings (prefix caching off)
and compile caches of its own (vLLM's, Inductor's, Triton's, empty: every start is a cold
start, whichever side ran before), after one priming process that imports vLLM and
initializes CUDA (`prime_s`), so no side pays the machine's first-process costs (cold disk
reads, bytecode writes) in its engine start:
  * offline (one process, vLLM in-process): load time and peak memory of the model load,
    engine start split into phases (`startup.py`), KV-cache size, TTFT of a 1024-token
    prompt at batch 1, TPOT at batch 1/16/64/256 ((t[1+T tokens] - t[1 token]) / T), and
    throughput of 256 requests of 1024 in / 256 out; beside the TPOT and throughput runs, the
    mean SM clock and board power while they ran (gpu_clock.ClockSampler);
  * with `--warm-restart`, one more process per side that only starts the engine, on the
    caches the offline run filled: the warm restart's engine start and its phases;
  * serving: `vllm serve` on loopback and `vllm bench serve` (random data) at request
    rates 1, 2, 4, 8 and inf: median TTFT, median TPOT, output tok/s.
Results: JSON (`--json`, merged per side so sides can run in separate invocations), a
markdown table on stdout, PNG plots (`--plot-dir`).

  python -m vllm_machete_plugin.bench e2e [--layers 4] [--shape 405b] [--tensor-parallel-size 4] \
      [--sides machete,builtin,humming] \
      [--json FILE] [--plot-dir DIR] [--no-serve | --no-offline] [--warm-restart]
  python -m vllm_machete_plugin.bench e2e --report FILE [--plot-dir DIR]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from . import serving, startup
from .gpu_clock import ClockSampler
from .serving import SIDES

TPOT_BATCHES = (1, 16, 64, 256)
BREAKDOWN_BATCHES = (1, 64)  # decode steps whose kernel time is broken down (decode_b<B>_kernel_us)
WARM = "warm_restart"  # a side's record of its second start on its own filled caches (--warm-restart)
TOP_KERNELS = 12             # kernels named per breakdown (decode_b<B>_top_kernels_us)
RATES = ("1", "2", "4", "8", "inf")
SERVE_INPUT_LEN, SERVE_OUTPUT_LEN = 1024, 128  # tokens per request in the serving sweep
LLAMA_70B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
    "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu", "attention_bias": False,
    "mlp_bias": False, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "initializer_range": 0.02, "use_cache": True, "torch_dtype": "float16",
    "quantization_config": {
        "quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True,
        "checkpoint_format": "gptq", "lm_head": False,
        "modules_in_block_to_quantize": [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                                         ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"],
                                         ["mlp.down_proj"]]},
}


# Llama-3.1-405B: the 70B config with its own dimensions (tensor-parallel runs, 4+ GPUs).
LLAMA_405B = {**LLAMA_70B, "hidden_size": 16384, "intermediate_size": 53248, "num_hidden_layers": 126,
              "num_attention_heads": 128, "num_key_value_heads": 8}
SHAPES = {"70b": LLAMA_70B, "405b": LLAMA_405B}


def write_model(path: Path, layers: Optional[int] = None, shape: str = "70b") -> Path:
    """config.json of Llama-3.1-70B (or -405B) GPTQ (layers shortened if asked) and a
    tokenizer covering the whole vocabulary; weights come from load_format="dummy"."""
    from ..testing.tokenizer import build_wordlevel_tokenizer, save_tokenizer
    path.mkdir(parents=True, exist_ok=True)
    base = SHAPES[shape]
    config = {**base, "num_hidden_layers": layers or base["num_hidden_layers"]}
    (path / "config.json").write_text(json.dumps(config, indent=1))
    save_tokenizer(build_wordlevel_tokenizer(config["vocab_size"]), path, config["max_position_embeddings"])
    return path


def engine_kwargs(args) -> dict:
    """Identical for both sides and for `vllm serve` (see serving.engine_flags)."""
    return dict(dtype="float16", max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
                enable_prefix_caching=False, max_num_seqs=256, seed=0, tensor_parallel_size=args.tensor_parallel_size,
                load_format="dummy" if args.dummy else "auto")


# ---- offline worker (runs in its own process: `e2e --worker SIDE`) ----------------------

def _patch_load_model(record: dict) -> None:
    """Time the model load (weights + our repack) and its peak GPU memory."""
    import torch
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader
    original = BaseModelLoader.load_model

    def load_model(self, *a, **kw):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        model = original(self, *a, **kw)
        torch.cuda.synchronize()
        record["load_s"] = time.perf_counter() - t0
        record["load_peak_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
        record["weights_gib"] = (torch.cuda.memory_allocated() - base) / 2**30
        return model

    BaseModelLoader.load_model = load_model


def _describe_linears(model) -> dict:
    """Which method/kernel runs the decoder's linear layers, and how many are quantized."""
    from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
    kinds: dict[str, int] = {}
    total = quantized = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, LinearBase) or ".layers." not in name:
            continue
        total += 1
        qm = mod.quant_method
        if isinstance(qm, UnquantizedLinearMethod):
            kind = "unquantized"
        else:
            quantized += 1
            backend = getattr(mod, "vmp_backend", None)
            kernel = getattr(qm, "kernel", None)
            kind = (f"{type(qm).__name__}/{backend.name}" if backend is not None else
                    f"{type(qm).__name__}/{type(kernel).__name__}" if kernel is not None else type(qm).__name__)
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"linear_layers": total, "quantized_linear_layers": quantized, "kernels": kinds}


KERNEL_CATEGORIES = (  # (category, substrings of a CUDA kernel name), first match wins
    # Inductor's fused kernels are named after the ops they border (triton_red_fused_fused_add_
    # rms_norm_machete_mm_0 is an RMSNorm next to our GEMM), not after what they compute.
    ("other", ("triton_",)),
    ("w4a16 GEMM", ("marlin", "machete", "GemmUniversal", "MixedInput", "humming")),
    ("attention", ("flash", "fmha", "attn", "attention")),
    ("other GEMM", ("gemm", "cublas", "nvjet", "xmma", "cutlass")),
)


def kernel_category(name: str) -> str:
    low = name.lower()
    for category, keys in KERNEL_CATEGORIES:
        if any(k.lower() in low for k in keys):
            return category
    return "other"


def _kernel_us(llm, prompts, params) -> dict[str, float]:
    """GPU kernel time by kernel name (µs) of one llm.generate call, CUDA-graph kernels included."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        llm.generate(prompts, params, use_tqdm=False)
    out: dict[str, float] = {}
    for e in prof.events():
        if e.device_type.name == "CUDA":
            out[e.name] = out.get(e.name, 0.0) + e.device_time_total
    return out


def per_step(short: dict[str, float], long: dict[str, float], steps: int) -> dict[str, float]:
    """Kernel µs per decode step by name: (run with 1 + steps tokens) - (run with 1 token), / steps."""
    return {k: (long.get(k, 0.0) - short.get(k, 0.0)) / steps for k in sorted(set(short) | set(long))}


def by_category(step: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, us in step.items():
        cat = kernel_category(name)
        out[cat] = out.get(cat, 0.0) + us
    return out


def top_kernels(step: dict[str, float], n: int = TOP_KERNELS) -> dict[str, float]:
    """The n kernels with the most time per step, names cut to 120 characters."""
    return {name[:120]: us for name, us in sorted(step.items(), key=lambda kv: -kv[1])[:n]}


def _timed(llm, prompts, params) -> float:
    t0 = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - t0


def run_worker(side: str, model: str, args) -> dict:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine in this process: load hooks, model access
    record: dict = {"side": side}
    in_process = args.tensor_parallel_size == 1  # else the model lives in vLLM's worker processes
    if in_process:
        _patch_load_model(record)
        startup.install(startup.record_sink(record))
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    t0 = time.perf_counter()
    llm = LLM(model=model, **SIDES[side], **engine_kwargs(args))
    record["engine_start_s"] = time.perf_counter() - t0
    if in_process:
        compilation = llm.llm_engine.vllm_config.compilation_config
        startup.finish(record, record["engine_start_s"], compilation.compilation_time,
                       len(compilation.cudagraph_capture_sizes or []))
    record.update(llm.apply_model(_describe_linears)[0])
    cache = llm.llm_engine.vllm_config.cache_config
    record["kv_cache_tokens"] = int(cache.num_gpu_blocks * cache.block_size)
    record["gpu_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    print(f"[e2e] {side}: {record}", flush=True)
    if args.start_only:  # a warm restart: only the start is measured
        return record

    vocab = llm.llm_engine.model_config.get_vocab_size()
    gen = torch.Generator().manual_seed(0)

    def prompts(n: int, length: int):
        ids = torch.randint(3, vocab, (n, length), generator=gen).tolist()
        return [TokensPrompt(prompt_token_ids=p) for p in ids]

    def params(tokens: int):
        return SamplingParams(temperature=0.0, max_tokens=tokens, min_tokens=tokens, ignore_eos=True)

    # TTFT: one 1024-token prompt, one output token (prefill + first sampling step).
    p = prompts(1, 1024)
    _timed(llm, p, params(1))
    record["ttft_ms"] = 1e3 * statistics.median(_timed(llm, p, params(1)) for _ in range(args.reps))
    # TPOT: decode steps at a fixed batch, prefill cost removed by the 1-token run.
    record["tpot_ms"], record["tpot_gpu"] = {}, {}
    for b in TPOT_BATCHES:
        p = prompts(b, args.tpot_input)
        _timed(llm, p, params(2))
        short = statistics.median(_timed(llm, p, params(1)) for _ in range(args.reps))
        with ClockSampler() as clock:  # the clock under the power cap, beside the time
            long = statistics.median(_timed(llm, p, params(1 + args.tpot_tokens)) for _ in range(args.reps))
        record["tpot_ms"][str(b)] = 1e3 * (long - short) / args.tpot_tokens
        record["tpot_gpu"][str(b)] = clock.means()
        print(f"[e2e] {side}: TPOT batch {b} = {record['tpot_ms'][str(b)]:.2f} ms", flush=True)
    # Where a decode step goes: kernel time by category and the top kernels, prefill removed.
    for b in BREAKDOWN_BATCHES:
        p = prompts(b, args.tpot_input)
        step = per_step(_kernel_us(llm, p, params(1)), _kernel_us(llm, p, params(1 + args.tpot_tokens)),
                        args.tpot_tokens)
        record[f"decode_b{b}_kernel_us"] = by_category(step)
        record[f"decode_b{b}_top_kernels_us"] = top_kernels(step)
        print(f"[e2e] {side}: batch-{b} decode step, kernel µs: {record[f'decode_b{b}_kernel_us']}; top: "
              f"{record[f'decode_b{b}_top_kernels_us']}", flush=True)
    # Offline throughput.
    n, inp, out = args.throughput_requests, 1024, 256
    with ClockSampler(interval=0.1) as clock:
        t = _timed(llm, prompts(n, inp), params(out))
    record["throughput"] = {"requests": n, "input_len": inp, "output_len": out, "seconds": t,
                            "output_tok_s": n * out / t, "total_tok_s": n * (inp + out) / t, "gpu": clock.means()}
    print(f"[e2e] {side}: throughput {record['throughput']}", flush=True)
    return record


# ---- serving sweep ------------------------------------------------------------------------

def run_serving(side: str, model: str, args, workdir: Path, caches: dict[str, str]) -> dict:
    env = {"VLLM_USE_FLASHINFER_SAMPLER": "0"}
    with serving.Server(side, model, serving.engine_flags(engine_kwargs(args)), args.port,
                        workdir / f"serve-{side}.log", env=caches):
        out = {}
        for rate in RATES:
            name = f"bench-{side}-{rate}.json"
            bench = [sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve", "--backend", "vllm", "--model", model, "--host", "127.0.0.1",
                     "--port", str(args.port), "--dataset-name", "random", "--random-input-len", str(SERVE_INPUT_LEN),
                     "--random-output-len", str(SERVE_OUTPUT_LEN), "--ignore-eos", "--num-prompts", str(args.serve_prompts),
                     "--request-rate", rate, "--seed", "0", "--save-result", "--result-dir", str(workdir),
                     "--result-filename", name]
            r = subprocess.run(bench, capture_output=True, text=True, env={**os.environ, **env}, timeout=1800)
            if r.returncode != 0:
                raise RuntimeError(f"vllm bench serve ({side}, rate {rate}) failed:\n{(r.stdout + r.stderr)[-4000:]}")
            res = json.loads((workdir / name).read_text())
            out[rate] = {k: res[k] for k in ("completed", "failed", "median_ttft_ms", "median_tpot_ms",
                                             "output_throughput", "request_throughput")}
            print(f"[e2e] {side} serve rate {rate}: {out[rate]}", flush=True)
        return out


# ---- report -------------------------------------------------------------------------------

def markdown(result: dict) -> str:
    sides = [s for s in SIDES if s in result["sides"]]
    rows: list[tuple[str, list]] = []

    def get(side, *keys):
        return _at(result["sides"][side], keys)

    rows.append(("kernels (decoder linears)", [json.dumps(get(s, "kernels")) for s in sides]))
    rows.append(("quantized linears", [f"{get(s, 'quantized_linear_layers')}/{get(s, 'linear_layers')}" for s in sides]))
    if any(get(s, "vmp_env") for s in sides):  # A/B knobs of the plugin in effect (VMP_MACHETE_SUBST, VMP_PDL, ...)
        rows.append(("plugin settings (VMP_*)", [" ".join(f"{k}={v}" for k, v in sorted((get(s, "vmp_env") or {}).items()))
                                                 or "-" for s in sides]))
    for label, keys, fmt in [("load time (s)", ("load_s",), "{:.1f}"),
                             ("load peak memory (GiB)", ("load_peak_gib",), "{:.2f}"),
                             ("weights after load (GiB)", ("weights_gib",), "{:.2f}"),
                             ("KV cache (tokens)", ("kv_cache_tokens",), "{:,}"),
                             ("engine start (s)", ("engine_start_s",), "{:.1f}"),
                             *startup.report_rows(),
                             ("engine start, warm restart (s)", (WARM, "engine_start_s"), "{:.1f}"),
                             ("load time, warm restart (s)", (WARM, "load_s"), "{:.1f}"),
                             *[(f"warm restart, {label[len('start: '):]}", (WARM, *keys), fmt)
                               for label, keys, fmt in startup.report_rows()],
                             ("TTFT 1024 tok, batch 1 (ms)", ("ttft_ms",), "{:.1f}")]:
        if (label.startswith("start: ") or WARM in keys) and all(get(s, *keys) is None for s in sides):
            continue  # results from before the startup phases were recorded, or without a warm restart
        rows.append((label, [_fmt(fmt, get(s, *keys)) for s in sides]))
    for b in BREAKDOWN_BATCHES:
        key = f"decode_b{b}_kernel_us"
        for c in sorted({c for s in sides for c in (get(s, key) or {})}):
            rows.append((f"batch-{b} decode step: {c} kernels (µs)", [_fmt("{:.0f}", get(s, key, c)) for s in sides]))
    for b in TPOT_BATCHES:
        rows.append((f"TPOT batch {b} (ms)", [_fmt("{:.2f}", get(s, "tpot_ms", str(b))) for s in sides]))
    rows.append(("offline throughput, output tok/s", [_fmt("{:.0f}", get(s, "throughput", "output_tok_s")) for s in sides]))
    rows.append(("offline throughput, total tok/s", [_fmt("{:.0f}", get(s, "throughput", "total_tok_s")) for s in sides]))
    # Mean SM clock and board power while timed (ClockSampler); absent from results before 2026-12-04.
    for label, keys in [*[(f"TPOT batch {b}", ("tpot_gpu", str(b))) for b in TPOT_BATCHES],
                        ("offline throughput", ("throughput", "gpu"))]:
        if any(get(s, *keys) for s in sides):
            rows.append((f"{label}: SM MHz / board W", [f"{_fmt('{:.0f}', get(s, *keys, 'sm_mhz'))} / "
                                                         f"{_fmt('{:.0f}', get(s, *keys, 'power_w'))}" for s in sides]))
    for rate in RATES if any(r.get("serve") for r in result["sides"].values()) else ():
        for key, label, fmt in [("median_ttft_ms", "median TTFT (ms)", "{:.1f}"),
                                ("median_tpot_ms", "median TPOT (ms)", "{:.2f}"),
                                ("output_throughput", "output tok/s", "{:.0f}")]:
            rows.append((f"serve rate {rate}: {label}", [_fmt(fmt, get(s, "serve", rate, key)) for s in sides]))
    lines = ["| metric | " + " | ".join(sides) + " |", "|---|" + "---|" * len(sides)]
    lines += ["| " + label + " | " + " | ".join(vals) + " |" for label, vals in rows]
    return "\n".join(lines)


# Issue 16 / 18 targets: (label, key path, ours / peer at most (or, for a rate, at least), peers).
# A time is better lower, a rate higher; the peer is the better of the sides named that ran.
TARGETS = [
    ("TPOT batch 1", ("tpot_ms", "1"), 0.75, ("builtin",)),
    ("TPOT batch 64", ("tpot_ms", "64"), 0.90, ("builtin", "humming")),
    ("TTFT 1024 tokens", ("ttft_ms",), 0.95, ("builtin", "humming")),
    ("offline output tok/s", ("throughput", "output_tok_s"), 1.10, ("builtin", "humming")),
    ("engine start, cold", ("engine_start_s",), 1.10, ("builtin",)),
    ("engine start, warm restart", (WARM, "engine_start_s"), 1.10, ("builtin",)),
    ("weight load", ("load_s",), 1.30, ("builtin",)),
]


def verdicts(result: dict) -> str:
    """Ours against the targets: per row the better peer, the ratio and met / missed; rows
    whose data is missing on our side or every peer's are left out. Where some peer the target
    names did not run, a miss stands (the absent peer could only raise the bar) but a pass is
    only "met vs <peers that ran>", not met."""
    def get(side, keys):
        return _at(result["sides"].get(side), keys)

    rate = {"offline output tok/s"}
    lines = ["| target | ours | better peer | ours / peer | target | verdict |", "|---|---|---|---|---|---|"]
    for label, keys, bound, peers in TARGETS:
        ours = get("machete", keys)
        vals = {p: v for p in peers if (v := get(p, keys)) is not None}
        if ours is None or not vals:
            continue
        peer = (max if label in rate else min)(vals, key=vals.get)
        ratio = ours / vals[peer]
        met = ratio >= bound if label in rate else ratio <= bound
        verdict = "met" if met else "missed"
        absent = [p for p in peers if p not in vals]
        if met and absent:
            verdict = f"met vs {', '.join(vals)} ({', '.join(absent)} not run)"
        lines.append(f"| {label} | {ours:.2f} | {peer} {vals[peer]:.2f} | {ratio:.2f} | "
                     f"{'>=' if label in rate else '<='} {bound:.2f} | {verdict} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _at(record, keys):
    """record[k0][k1]..., or None where a level is missing."""
    for k in keys:
        record = record.get(k) if isinstance(record, dict) else None
    return record


def _fmt(fmt: str, v) -> str:
    return "-" if v is None else fmt.format(v)


def plot(result: dict, out_dir: Path) -> list[Path]:
    """TPOT vs batch and output tok/s vs request rate, ours against built-in; a plot
    is written only when some side has its data."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{result['model']}\non {result['gpu']}"
    series = {
        "e2e-tpot-vs-batch.png": ("batch", "TPOT (ms)", {
            side: sorted((int(b), v) for b, v in (r.get("tpot_ms") or {}).items())
            for side, r in result["sides"].items()}),
        "e2e-throughput-vs-rate.png": ("request rate (req/s)", "output tok/s", {
            side: [(i, (r.get("serve") or {})[rate]["output_throughput"]) for i, rate in enumerate(RATES)
                   if rate in (r.get("serve") or {})]
            for side, r in result["sides"].items()}),
    }
    paths = []
    for name, (xlabel, ylabel, lines) in series.items():
        lines = {side: pts for side, pts in lines.items() if pts}
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for side, pts in lines.items():
            ax.plot(*zip(*pts), marker="o", label=side)
        if name == "e2e-tpot-vs-batch.png":
            ax.set_xscale("log")
        else:
            ax.set_xticks(range(len(RATES)), RATES)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths.append(out_dir / name)
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def plugin_env() -> dict[str, str]:
    """The plugin's environment knobs set for this run (schedule forcing, substitution, PDL)."""
    return {k: v for k, v in os.environ.items() if k.startswith("VMP_") and k != "VMP_E2E_MODEL"}


def _environment() -> dict:
    """GPU, driver and versions, from nvidia-smi: this process makes no CUDA context, which
    would hold GPU memory beside the engines it starts."""
    import torch
    import vllm
    from .. import __version__
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip().splitlines()
    name, driver = (smi[0].split(", ") + [None])[:2] if smi else (None, None)
    return {"gpu": name, "driver": driver, "torch": torch.__version__, "vllm": vllm.__version__,
            "plugin": __version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vllm_machete_plugin.bench e2e", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a real W4A16 checkpoint (default: Llama-3.1-70B GPTQ, dummy weights)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="70b", help="the built-in dummy model's dimensions")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers of the built-in config (default: all)")
    ap.add_argument("--tensor-parallel-size", type=int, default=1,
                    help="GPUs per engine (above 1, load time, startup phases and the decode kernel "
                         "breakdown are not recorded: they run in vLLM's worker processes)")
    ap.add_argument("--sides", default="machete,builtin,humming", help=f"comma-separated subset of {list(SIDES)}")
    ap.add_argument("--json", help="results file; sides already in it are kept unless re-run")
    ap.add_argument("--plot-dir", help="write the PNG plots here")
    ap.add_argument("--report", help="only print the table (and plots) of this results file")
    ap.add_argument("--no-serve", action="store_true", help="skip the `vllm serve` request-rate sweep")
    ap.add_argument("--no-offline", action="store_true",
                    help="only the serving sweep (offline results of --json are kept)")
    ap.add_argument("--serve-prompts", type=int, default=100, help="requests per rate in the serving sweep")
    ap.add_argument("--throughput-requests", type=int, default=256)
    ap.add_argument("--tpot-input", type=int, default=128, help="prompt length for the TPOT runs")
    ap.add_argument("--tpot-tokens", type=int, default=64, help="decode steps timed per TPOT run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--port", type=int, default=8021)
    ap.add_argument("--warm-restart", action="store_true",
                    help="after a side's offline run, start its engine once more on the compile caches that run "
                         "filled, and record that start by phase (issue 18's warm restart)")
    ap.add_argument("--start-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.dummy = args.model is None

    if args.worker:  # child process: one side's offline metrics, written as JSON
        record = run_worker(args.worker, os.environ["VMP_E2E_MODEL"], args)
        Path(args.worker_out).write_text(json.dumps(record))
        return 0
    if args.report:
        result = json.loads(Path(args.report).read_text())
    else:
        result = run(args)
    print(markdown(result))
    table = verdicts(result)
    if table:
        print("\nOurs against the targets of issues 16 and 18:\n\n" + table)
    if args.plot_dir:
        for p in plot(result, Path(args.plot_dir)):
            print(f"[e2e] wrote {p}")
    return 0


def run(args) -> dict:
    sides = serving.check_sides([s for s in args.sides.split(",") if s])
    if args.no_serve and args.no_offline:
        raise SystemExit("[e2e] --no-serve and --no-offline together leave nothing to run")
    workdir = Path(tempfile.mkdtemp(prefix="vmp-e2e-"))
    layers = args.layers or SHAPES[args.shape]["num_hidden_layers"]
    model = args.model or str(write_model(workdir / f"llama-3.1-{args.shape}-gptq-{layers}l", layers, args.shape))
    result = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).exists() else {"sides": {}}
    result.update(_environment())
    result["model"] = args.model or f"Llama-3.1-{args.shape.upper()} GPTQ 4-bit g128, {layers} layers, dummy weights"
    settings = {**result.get("settings", {}), **engine_kwargs(args)}  # a part not run keeps its settings
    if not args.no_offline:
        settings.update(tpot_input=args.tpot_input, tpot_tokens=args.tpot_tokens, reps=args.reps)
    if not args.no_serve:
        settings.update(serve_prompts=args.serve_prompts, serve_input_len=SERVE_INPUT_LEN,
                        serve_output_len=SERVE_OUTPUT_LEN)
    result["settings"] = settings
    result["prime_s"] = prime()
    for side in sides:
        caches = startup.cache_env(workdir / "caches" / side)
        kept = result["sides"].get(side, {})  # this side's results already in --json, if any
        if args.no_offline:
            record = dict(kept)
        else:
            out = workdir / f"offline-{side}.json"
            env = {**os.environ, **caches, "VMP_E2E_MODEL": model, "VLLM_USE_FLASHINFER_SAMPLER": "0"}
            cmd = [sys.executable, "-m", "vllm_machete_plugin.bench", "e2e", "--worker", side,
                   "--worker-out", str(out), *_forwarded(args)]
            r = subprocess.run(cmd, env=env)
            if r.returncode != 0:
                raise SystemExit(f"[e2e] offline run of {side} failed (exit {r.returncode})")
            record = {**json.loads(out.read_text()), **{k: kept[k] for k in ("serve", "serve_date") if k in kept},
                      "offline_date": result.get("date"), "vmp_env": plugin_env()}
            if args.warm_restart:  # the same caches, now filled by the run above
                warm_out = workdir / f"warm-{side}.json"
                warm_cmd = [*cmd, "--start-only"]
                warm_cmd[warm_cmd.index("--worker-out") + 1] = str(warm_out)
                r = subprocess.run(warm_cmd, env=env)
                if r.returncode != 0:
                    raise SystemExit(f"[e2e] warm restart of {side} failed (exit {r.returncode})")
                warm = json.loads(warm_out.read_text())
                record[WARM] = {k: warm[k] for k in ("engine_start_s", "load_s", "startup") if k in warm}
        if not args.no_serve:
            record["serve"] = run_serving(side, model, args, workdir, caches)
            record["serve_date"] = result.get("date")
        record["prime_s"] = result["prime_s"]  # this invocation's priming (sides may run in several)
        result["sides"][side] = record
        if args.json:  # after every side, so a later failure loses nothing
            Path(args.json).write_text(json.dumps(result, indent=1))
    return result


PRIME = "import torch, vllm; from vllm import LLM; torch.zeros(1, device='cuda'); torch.cuda.synchronize()"


def prime() -> float:
    """Seconds of one process that imports vLLM and initializes CUDA: the first process on a
    machine pays for cold disk reads and bytecode writes (about 25 s more engine start for
    whichever side ran first in e2e v4, v6 and v7), so it is paid here, outside every side."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", PRIME], env={**os.environ, "VLLM_USE_FLASHINFER_SAMPLER": "0"}, check=False)
    return time.perf_counter() - t


def _forwarded(args) -> list[str]:
    out = []
    for name in ("shape", "layers", "tensor_parallel_size", "throughput_requests", "tpot_input", "tpot_tokens", "reps",
                 "max_model_len", "gpu_memory_utilization"):
        if getattr(args, name) is not None:
            out += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return out + (["--model", args.model] if args.model else [])
