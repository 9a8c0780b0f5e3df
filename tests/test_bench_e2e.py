"""The end-to-end benchmark's CPU-side pieces: the built-in 70B model directory and the
report (table + plots) from a results file. The measurements themselves need a GPU."""
import json

import pytest

from vllm_machete_plugin.bench import e2e
from vllm_machete_plugin.checkpoints import format_for


def test_model_dir_is_llama_70b_gptq_with_every_linear_quantized(tmp_path):
    from transformers import AutoTokenizer
    path = e2e.write_model(tmp_path / "m", layers=2)
    config = json.loads((path / "config.json").read_text())
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (8192, 28672, 2)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"]) == (64, 8, 128256)
    fmt = format_for(config["quantization_config"])
    listed = {m for block in config["quantization_config"]["modules_in_block_to_quantize"] for m in block}
    want = {f"{parent}.{leaf}" for parent, leaves in
            [("self_attn", ["q_proj", "k_proj", "v_proj", "o_proj"]), ("mlp", ["gate_proj", "up_proj", "down_proj"])]
            for leaf in leaves}
    assert listed == want and set(fmt.modules_in_block) == want
    tok = AutoTokenizer.from_pretrained(path)
    ids = [5, 128255, 4242]
    assert tok(tok.decode(ids), add_special_tokens=False).input_ids == ids


def test_405b_shape_and_full_depth_by_default(tmp_path):
    config = json.loads((e2e.write_model(tmp_path / "m", shape="405b") / "config.json").read_text())
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (16384, 53248, 126)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (128, 8)
    assert config["quantization_config"]["group_size"] == 128


def test_tensor_parallel_size_reaches_every_engine(tmp_path, monkeypatch):
    """--tensor-parallel-size goes to the offline workers and to every `vllm serve`."""
    servers, runs, _ = _fake_processes(monkeypatch, lambda cmd, env, runs: {"side": cmd[cmd.index("--worker") + 1]},
                                    lambda runs: {"gpu": "FakeGPU"})
    args = _args(json=str(tmp_path / "r.json"), tensor_parallel_size=2, shape="405b", layers=None)
    result = e2e.run(args)
    assert e2e.engine_kwargs(args)["tensor_parallel_size"] == 2
    assert all(s[s.index("--tensor-parallel-size") + 1] == "2" for s in servers) and len(servers) == 2
    workers = [c for c in runs if "--worker" in c]
    assert all(c[c.index("--tensor-parallel-size") + 1] == "2" and c[c.index("--shape") + 1] == "405b"
               and "--layers" not in c for c in workers)
    assert result["model"] == "Llama-3.1-405B GPTQ 4-bit g128, 126 layers, dummy weights"


def _result():
    side = {"kernels": {"MacheteLinearMethod/machete": 8}, "linear_layers": 8, "quantized_linear_layers": 8,
            "load_s": 12.5, "load_peak_gib": 36.1, "weights_gib": 35.2, "kv_cache_tokens": 100000,
            "engine_start_s": 90.0, "ttft_ms": 200.0, "tpot_ms": {"1": 20.0, "16": 21.0, "64": 30.0, "256": 60.0},
            "throughput": {"output_tok_s": 900.0, "total_tok_s": 4500.0},
            "serve": {r: {"median_ttft_ms": 100.0, "median_tpot_ms": 25.0, "output_throughput": 100.0 * (i + 1)}
                      for i, r in enumerate(e2e.RATES)}}
    builtin = {**side, "kernels": {"GPTQMarlinLinearMethod/MarlinLinearKernel": 8}, "tpot_ms": {"1": 21.2}}
    return {"model": "m", "gpu": "H100", "sides": {"machete": side, "builtin": builtin}}


def test_report_table_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    f = tmp_path / "r.json"
    f.write_text(json.dumps(_result()))
    assert e2e.main(["--report", str(f), "--plot-dir", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "| metric | machete | builtin |" in out
    assert "| TPOT batch 1 (ms) | 20.00 | 21.20 |" in out
    assert "| TPOT batch 64 (ms) | 30.00 | - |" in out
    assert "| serve rate inf: output tok/s | 500 | 500 |" in out
    assert "Ours against the targets" in out and "| TPOT batch 1 | 20.00 | builtin 21.20 | 0.94 | <= 0.75 | missed |" in out
    assert "MarlinLinearKernel" in out and "| quantized linears | 8/8 | 8/8 |" in out
    for name in ("e2e-tpot-vs-batch.png", "e2e-throughput-vs-rate.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000


def test_clock_and_power_rows_where_sampled():
    result = _result()
    result["sides"]["machete"]["tpot_gpu"] = {"64": {"sm_mhz": 1712.4, "power_w": 690.2, "samples": 40}}
    result["sides"]["machete"]["throughput"] = {"output_tok_s": 900.0,
                                                "gpu": {"sm_mhz": 1500.0, "power_w": None, "samples": 9}}
    table = e2e.markdown(result)
    assert "| TPOT batch 64: SM MHz / board W | 1712 / 690 | - / - |" in table
    assert "| offline throughput: SM MHz / board W | 1500 / - | - / - |" in table
    assert "TPOT batch 1: SM MHz" not in table and "SM MHz" not in e2e.markdown(_result())


def test_verdicts_take_the_better_peer_and_the_direction_of_each_metric():
    """TPOT / TTFT / starts: lower is better, throughput higher; the peer is the better of the
    sides a target names (engine start and load against the built-in side only)."""
    sides = {
        "machete": {"tpot_ms": {"1": 13.6, "64": 23.3}, "ttft_ms": 199.0, "throughput": {"output_tok_s": 727.0},
                    "engine_start_s": 108.6, "load_s": 3.3, "warm_restart": {"engine_start_s": 90.0}},
        "builtin": {"tpot_ms": {"1": 19.6, "64": 27.1}, "ttft_ms": 201.2, "throughput": {"output_tok_s": 718.0},
                    "engine_start_s": 114.9, "load_s": 3.1, "warm_restart": {"engine_start_s": 80.0}},
        "humming": {"tpot_ms": {"1": 15.1, "64": 24.3}, "ttft_ms": 216.4, "throughput": {"output_tok_s": 747.0},
                    "engine_start_s": 50.0, "load_s": 2.3},
    }
    table = e2e.verdicts({"sides": sides})
    assert "| TPOT batch 1 | 13.60 | builtin 19.60 | 0.69 | <= 0.75 | met |" in table  # not Humming's 15.1
    assert "| TPOT batch 64 | 23.30 | humming 24.30 | 0.96 | <= 0.90 | missed |" in table
    assert "| TTFT 1024 tokens | 199.00 | builtin 201.20 | 0.99 | <= 0.95 | missed |" in table
    assert "| offline output tok/s | 727.00 | humming 747.00 | 0.97 | >= 1.10 | missed |" in table
    assert "| engine start, cold | 108.60 | builtin 114.90 | 0.95 | <= 1.10 | met |" in table  # not Humming's 50
    assert "| engine start, warm restart | 90.00 | builtin 80.00 | 1.12 | <= 1.10 | missed |" in table
    assert "| weight load | 3.30 | builtin 3.10 | 1.06 | <= 1.30 | met |" in table
    del sides["builtin"]
    table = e2e.verdicts({"sides": sides})
    assert "TPOT batch 1" not in table and "engine start" not in table
    assert "| TPOT batch 64 | 23.30 | humming 24.30 | 0.96 | <= 0.90 | missed |" in table  # a miss stands
    # 199 / 216.4 = 0.92 passes Humming alone; the built-in side (201.2 above) would fail it.
    assert "| TTFT 1024 tokens | 199.00 | humming 216.40 | 0.92 | <= 0.95 | met vs humming (builtin not run) |" in table
    assert e2e.verdicts({"sides": {"machete": sides["machete"]}}) == ""


def test_unknown_side_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown side"):
        e2e.main(["--sides", "turbo", "--no-serve"])


def test_report_without_serving_sweep_omits_its_rows_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    result = _result()
    for side in result["sides"].values():
        del side["serve"]
    f = tmp_path / "r.json"
    f.write_text(json.dumps(result))
    assert e2e.main(["--report", str(f), "--plot-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "serve rate" not in out and "| TTFT 1024 tok, batch 1 (ms) | 200.0 | 200.0 |" in out
    assert (tmp_path / "e2e-tpot-vs-batch.png").exists()
    assert not (tmp_path / "e2e-throughput-vs-rate.png").exists()


def _args(**kw):
    ns = e2e.argparse.Namespace(model=None, shape="70b", layers=2, tensor_parallel_size=1, sides="machete,builtin",
                                json=None, no_serve=False,
                                no_offline=False,
                                serve_prompts=4, throughput_requests=8, tpot_input=16, tpot_tokens=4, reps=1,
                                max_model_len=2048, gpu_memory_utilization=0.9, port=8099, dummy=True,
                                warm_restart=False, start_only=False)
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def _fake_processes(monkeypatch, worker_out, environment):
    """Fakes the offline worker (its JSON: worker_out(cmd, env, runs so far)), `vllm serve`
    and `vllm bench serve` (output tok/s = len(rate)), and the environment record
    (environment(runs so far)); returns the lists of server commands, run commands and the
    servers' extra environments."""
    servers, runs, server_envs = [], [], []

    class FakeServer:
        pid = 2**22 + 1  # no such process: the server's process tree is empty

        def __init__(self, cmd, **kw):
            servers.append(cmd)
            server_envs.append(kw.get("env", {}))

        def poll(self):
            return None

        def terminate(self):
            pass

        def wait(self, timeout=None):
            return 0

    def fake_run(cmd, env=None, **kw):
        if "--worker" in cmd:
            e2e.Path(cmd[cmd.index("--worker-out") + 1]).write_text(json.dumps(worker_out(cmd, env, runs)))
        else:
            rate = cmd[cmd.index("--request-rate") + 1]
            res = {"completed": 4, "failed": 0, "median_ttft_ms": 1.0, "median_tpot_ms": 2.0,
                   "output_throughput": float(len(rate)), "request_throughput": 1.0}
            (e2e.Path(cmd[cmd.index("--result-dir") + 1]) / cmd[cmd.index("--result-filename") + 1]).write_text(
                json.dumps(res))
        runs.append(cmd)
        return e2e.subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(e2e.subprocess, "Popen", FakeServer)
    monkeypatch.setattr(e2e.subprocess, "run", fake_run)
    monkeypatch.setattr(e2e.serving, "wait_healthy", lambda *a, **kw: None)
    monkeypatch.setattr(e2e, "_environment", lambda: environment(runs))
    monkeypatch.setattr(e2e, "prime", lambda: 1.5)
    return servers, runs, server_envs


def test_orchestration_runs_each_side_in_its_own_processes_with_identical_settings(tmp_path, monkeypatch, capsys):
    """Offline worker and `vllm serve` + `vllm bench serve` per side (subprocesses faked):
    same engine flags on both sides, --quantization machete only on ours, every rate
    swept, results merged into the JSON file."""
    servers, runs, _ = _fake_processes(
        monkeypatch, lambda cmd, env, runs: {"side": cmd[cmd.index("--worker") + 1], "tpot_ms": {"1": 20.0},
                                             "model": env["VMP_E2E_MODEL"]},
        lambda runs: {"gpu": "FakeGPU", "date": "today"})
    out = tmp_path / "r.json"
    result = e2e.run(_args(json=str(out), sides="machete,builtin,humming"))
    assert [s for s in result["sides"]] == ["machete", "builtin", "humming"]
    assert json.loads(out.read_text())["sides"]["builtin"]["serve"]["inf"]["failed"] == 0
    assert set(result["sides"]["machete"]["serve"]) == set(e2e.RATES)
    ours, theirs, humming = servers
    assert ours[ours.index("--quantization") + 1] == "machete" and "--quantization" not in theirs
    assert ours[:ours.index("--quantization")] == theirs  # identical engine settings
    assert humming == theirs + ["--linear-backend", "humming"] and "--quantization" not in humming
    assert "--no-enable-prefix-caching" in theirs and theirs[theirs.index("--load-format") + 1] == "dummy"
    workers = [c for c in runs if "--worker" in c]
    assert len(workers) == 3 and all("--layers" in c and c[c.index("--layers") + 1] == "2" for c in workers)
    model = result["sides"]["machete"]["model"]
    assert json.loads((e2e.Path(model) / "config.json").read_text())["num_hidden_layers"] == 2


def test_each_side_starts_cold_on_compile_caches_of_its_own_after_one_priming_process(tmp_path, monkeypatch):
    """Every side's offline worker and server get their own, distinct vLLM / Inductor / Triton
    cache directories (so no side warm-starts on another's compiled graphs), and the
    priming process runs once per invocation, before the first side (its time recorded)."""
    order = []
    envs = {}

    def worker(cmd, env, runs):
        side = cmd[cmd.index("--worker") + 1]
        order.append(side)
        envs[side] = {k: env[k] for k in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
        return {"side": side}

    _, _, server_envs = _fake_processes(monkeypatch, worker, lambda runs: {"gpu": "FakeGPU"})
    monkeypatch.setattr(e2e, "prime", lambda: order.append("prime") or 2.5)
    result = e2e.run(_args(sides="machete,builtin,humming"))
    assert order == ["prime", "machete", "builtin", "humming"] and result["prime_s"] == 2.5
    assert all(r["prime_s"] == 2.5 for r in result["sides"].values())  # kept per side across invocations
    dirs = [d for side_env in envs.values() for d in side_env.values()]
    assert len(set(dirs)) == 9  # 3 sides x 3 caches, none shared
    assert all(f"/caches/{side}/" in d for side, side_env in envs.items() for d in side_env.values())
    assert [e["TRITON_CACHE_DIR"] for e in server_envs] == [envs[s]["TRITON_CACHE_DIR"] for s in ("machete", "builtin", "humming")]


def test_warm_restart_starts_each_side_again_on_its_own_filled_caches(tmp_path, monkeypatch, capsys):
    """--warm-restart: after a side's offline worker, a second worker process with --start-only,
    the same caches and its own output file; its start lands under the side's warm_restart and
    in the table, beside the cold start."""
    calls = []

    def worker(cmd, env, runs):
        side, warm = cmd[cmd.index("--worker") + 1], "--start-only" in cmd
        calls.append((side, warm, env["TRITON_CACHE_DIR"], cmd[cmd.index("--worker-out") + 1]))
        start = {"engine_start_s": 30.0 if warm else 100.0, "load_s": 1.0, "startup": {"compile_s": 2.0 if warm else 40.0}}
        return {"side": side, **start} if warm else {"side": side, "tpot_ms": {"1": 20.0}, **start}

    _fake_processes(monkeypatch, worker, lambda runs: {"gpu": "FakeGPU", "model": "m"})
    result = e2e.run(_args(sides="machete,builtin", no_serve=True, warm_restart=True))
    assert [(c[0], c[1]) for c in calls] == [("machete", False), ("machete", True), ("builtin", False), ("builtin", True)]
    assert calls[0][2] == calls[1][2] != calls[2][2] == calls[3][2]  # same caches per side, none shared
    assert calls[0][3] != calls[1][3]  # the warm start's record does not overwrite the offline one
    ours = result["sides"]["machete"]
    assert ours["engine_start_s"] == 100.0 and ours["tpot_ms"] == {"1": 20.0}
    assert ours["warm_restart"] == {"engine_start_s": 30.0, "load_s": 1.0, "startup": {"compile_s": 2.0}}
    md = e2e.markdown(result)
    assert "| engine start, warm restart (s) | 30.0 | 30.0 |" in md
    assert "| warm restart, torch.compile in all | 2.0 | 2.0 |" in md
    assert "warm restart" not in e2e.markdown({**result, "sides": {k: {kk: vv for kk, vv in v.items() if kk != "warm_restart"}
                                                                  for k, v in result["sides"].items()}})


def test_start_only_worker_returns_after_the_start(monkeypatch):
    """The worker behind a warm restart builds the engine, records the start and returns
    before any generation."""
    import sys
    import types
    generated = []

    class FakeLLM:
        def __init__(self, model, **kw):
            cache = types.SimpleNamespace(num_gpu_blocks=10, block_size=16)
            comp = types.SimpleNamespace(compilation_time=1.0, cudagraph_capture_sizes=[1, 2])
            self.llm_engine = types.SimpleNamespace(vllm_config=types.SimpleNamespace(cache_config=cache,
                                                                                     compilation_config=comp))

        def apply_model(self, fn):
            return [{"linear_layers": 1}]

        def generate(self, *a, **kw):
            generated.append(a)
            return []

    fake_vllm = types.ModuleType("vllm")
    fake_vllm.LLM, fake_vllm.SamplingParams = FakeLLM, object
    fake_inputs = types.ModuleType("vllm.inputs")
    fake_inputs.TokensPrompt = dict
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", fake_inputs)
    monkeypatch.setattr(e2e, "_patch_load_model", lambda record: None)
    monkeypatch.setattr(e2e.startup, "install", lambda sink: None)
    monkeypatch.setattr(e2e.startup, "finish", lambda record, *a: record.setdefault("startup", {"compile_s": 1.0}))
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # run_worker sets it: restored after the test
    import torch
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: 2**30)
    record = e2e.run_worker("machete", "model-dir", _args(start_only=True))
    assert record["engine_start_s"] >= 0 and record["kv_cache_tokens"] == 160 and record["startup"] == {"compile_s": 1.0}
    assert not generated and "ttft_ms" not in record and "tpot_ms" not in record


def test_one_side_at_a_time_merges_into_the_results_file(tmp_path, monkeypatch):
    _fake_processes(monkeypatch, lambda cmd, env, runs: {"side": cmd[cmd.index("--worker") + 1]},
                    lambda runs: {"gpu": "FakeGPU"})
    out = tmp_path / "r.json"
    e2e.run(_args(json=str(out), sides="machete", no_serve=True))
    e2e.run(_args(json=str(out), sides="builtin", no_serve=True))
    assert set(json.loads(out.read_text())["sides"]) == {"machete", "builtin"}


def test_serving_sweep_and_offline_runs_merge_per_side(tmp_path, monkeypatch):
    """--no-offline adds the sweep to the side's offline results; a later --no-serve run
    replaces the offline results and keeps the sweep; each part records its date."""
    _, runs, _ = _fake_processes(monkeypatch, lambda cmd, env, runs: {"tpot_ms": {"1": float(len(runs))}},
                              lambda runs: {"gpu": "FakeGPU", "date": f"d{len(runs)}"})
    out = tmp_path / "r.json"
    e2e.run(_args(json=str(out), sides="machete", no_serve=True))
    e2e.run(_args(json=str(out), sides="machete", no_offline=True, reps=5))
    result = json.loads(out.read_text())
    side = result["sides"]["machete"]
    assert side["tpot_ms"] == {"1": 0.0} and set(side["serve"]) == set(e2e.RATES)
    assert result["settings"]["reps"] == 1 and result["settings"]["serve_prompts"] == 4
    assert (side["offline_date"], side["serve_date"]) == ("d0", "d1")  # each part says when it ran
    assert not any("--worker" in c for c in runs[1:])  # the sweep ran no offline worker
    e2e.run(_args(json=str(out), sides="machete", no_serve=True))
    side = json.loads(out.read_text())["sides"]["machete"]
    assert side["tpot_ms"] == {"1": 6.0} and set(side["serve"]) == set(e2e.RATES)
    assert (side["offline_date"], side["serve_date"]) == ("d6", "d1")
    with pytest.raises(SystemExit, match="nothing to run"):
        e2e.run(_args(json=str(out), no_serve=True, no_offline=True))


@pytest.mark.parametrize("name,category", [
    ("void vmp::marlin::(anonymous namespace)::gemm_kernel<__half, 1, false>(...)", "w4a16 GEMM"),
    ("void cutlass::device_kernel<cutlass::gemm::kernel::GemmUniversal<...> >(...)", "w4a16 GEMM"),
    ("void machete::MacheteKernel<...>", "w4a16 GEMM"),
    ("humming", "w4a16 GEMM"),
    ("void flash::flash_fwd_splitkv_kernel<...>", "attention"),
    ("nvjet_hsh_128x64_64x3_1x2_h_bz_coopA_NNT", "other GEMM"),
    ("void vllm::rms_norm_kernel<c10::Half>(...)", "other"),
    ("triton_red_fused_fused_add_rms_norm_machete_mm_0", "other"),
    ("triton_poi_fused_humming_gemm_mul_silu_slice_1", "other"),
])
def test_kernel_categories(name, category):
    assert e2e.kernel_category(name) == category


@pytest.mark.parametrize("batch,breakdown,rows", [
    (1, {"w4a16 GEMM": 20000.0, "attention": 300.0}, ["| batch-1 decode step: w4a16 GEMM kernels (µs) | 20000 | - |"]),
    (64, {"w4a16 GEMM": 18800.0, "other": 1200.0}, ["| batch-64 decode step: w4a16 GEMM kernels (µs) | 18800 | - |",
                                                    "| batch-64 decode step: other kernels (µs) | 1200 | - |"]),
])
def test_decode_breakdown_rows(tmp_path, capsys, batch, breakdown, rows):
    result = _result()
    result["sides"]["machete"][f"decode_b{batch}_kernel_us"] = breakdown
    f = tmp_path / "r.json"
    f.write_text(json.dumps(result))
    e2e.main(["--report", str(f)])
    out = capsys.readouterr().out
    assert all(row in out for row in rows), out


def test_decode_step_breakdown_per_name():
    """Per decode step: the 1-token run (prefill, first sampling) is subtracted from the
    1 + T token run and divided by T, per kernel name; categories sum those; the top list
    is ordered by time and cut to its length."""
    short = {"void vmp::machete::mid_m_kernel<...>": 100.0, "void flash::fwd<...>": 50.0}
    long = {"void vmp::machete::mid_m_kernel<...>": 900.0, "void flash::fwd<...>": 450.0,
            "void vllm::rms_norm_kernel<c10::Half>(...)": 80.0}
    step = e2e.per_step(short, long, 4)
    assert step == {"void flash::fwd<...>": 100.0, "void vllm::rms_norm_kernel<c10::Half>(...)": 20.0,
                    "void vmp::machete::mid_m_kernel<...>": 200.0}
    assert e2e.by_category(step) == {"attention": 100.0, "other": 20.0, "w4a16 GEMM": 200.0}
    assert list(e2e.top_kernels(step, 2)) == ["void vmp::machete::mid_m_kernel<...>", "void flash::fwd<...>"]
    assert all(len(k) <= 120 for k in e2e.top_kernels({"x" * 300: 1.0}))



def test_plugin_knobs_are_recorded_and_shown(tmp_path, capsys, monkeypatch):
    """A run with an A/B knob of the plugin set (VMP_MACHETE_SUBST, VMP_PDL...) says so in its
    table; one without shows no such row."""
    monkeypatch.setenv("VMP_MACHETE_SUBST", "256x64w=128x64w")
    monkeypatch.setenv("VMP_E2E_MODEL", "/tmp/model")  # internal, not a knob
    knobs = e2e.plugin_env()  # (CI may set build knobs such as VMP_CUDA_ARCHS too)
    assert knobs["VMP_MACHETE_SUBST"] == "256x64w=128x64w" and "VMP_E2E_MODEL" not in knobs
    result = _result()
    f = tmp_path / "r.json"
    f.write_text(json.dumps(result))
    e2e.main(["--report", str(f)])
    assert "plugin settings" not in capsys.readouterr().out
    result["sides"]["machete"]["vmp_env"] = {"VMP_MACHETE_SUBST": "256x64w=128x64w"}
    f.write_text(json.dumps(result))
    e2e.main(["--report", str(f)])
    assert "| plugin settings (VMP_*) | VMP_MACHETE_SUBST=256x64w=128x64w |" in capsys.readouterr().out
