"""The startup phases of bench e2e and bench soak (vllm_machete_plugin/bench/startup.py),
without a GPU: the vLLM 0.26.0 methods it wraps exist and get timed, the Dynamo time is
taken from vLLM's log record, the derived phases add up, a server's log gives the same
phases back, and the report shows them per side."""
import logging
import time

import pytest

from vllm_machete_plugin.bench import e2e, startup


def test_timer_adds_the_wall_time_of_every_call():
    class Owner:
        @staticmethod
        def phase(seconds):
            time.sleep(seconds)
            return seconds

    record = {}
    startup._timed(Owner, "phase", "x_s", startup.record_sink(record))
    assert Owner.phase(0.02) == 0.02 and Owner.phase(0.03) == 0.03
    assert 0.05 <= record["startup"]["x_s"] < 0.5


def test_install_wraps_the_phase_boundaries_of_vllm():
    pytest.importorskip("vllm")
    from vllm.model_executor.model_loader import base_loader
    from vllm.v1.worker import gpu_model_runner, gpu_worker
    from vllm.v1.worker.gpu import model_runner as v2_model_runner
    targets = [(base_loader, "initialize_model"), (base_loader, "process_weights_after_loading"),
               (gpu_worker.Worker, "determine_available_memory"),
               (gpu_worker.Worker, "compile_or_warm_up_model"), (gpu_model_runner.GPUModelRunner, "capture_model"),
               (v2_model_runner.GPUModelRunner, "capture_model")]
    saved = [(o, n, o.__dict__[n]) for o, n in targets]
    handlers = list(logging.getLogger("vllm.compilation.backends").handlers)
    try:
        startup.install(startup.record_sink({}))
        for o, n in targets:
            assert getattr(o, n).__wrapped__ is not None, f"{o.__name__}.{n} was not wrapped"
    finally:
        for o, n, f in saved:
            setattr(o, n, f)
        logging.getLogger("vllm.compilation.backends").handlers = handlers


def test_dynamo_time_comes_from_vllms_log_record():
    record = {}
    handler = startup._DynamoTime(startup.record_sink(record))
    log = logging.LogRecord("vllm.compilation.backends", logging.INFO, "", 0,
                            "Dynamo bytecode transform time: %.2f s", (12.5,), None)
    handler.emit(log)
    handler.emit(logging.LogRecord("x", logging.INFO, "", 0, "something else %s", (3.0,), None))
    assert record["startup"]["dynamo_s"] == 12.5


def test_finish_derives_weights_inductor_warmup_and_other():
    record = {"load_s": 10.0, "startup": {"construct_s": 1.0, "process_weights_s": 2.0, "profile_s": 30.0,
                          "dynamo_s": 8.0, "compile_or_warm_up_s": 25.0, "cudagraph_s": 20.0}}
    startup.finish(record, engine_start_s=70.0, compile_s=28.0, cudagraph_sizes=35)
    p = record["startup"]
    assert p["weights_s"] == pytest.approx(7.0)  # the model load minus construction and repack
    assert p["inductor_s"] == pytest.approx(20.0)  # compile minus Dynamo
    assert p["warmup_s"] == pytest.approx(5.0)  # compile_or_warm_up minus capture
    # 70 - (1 + 7 + 2 + 30 + 20 + 5): compile/Dynamo/Inductor sit inside the profiling run
    assert p["other_s"] == pytest.approx(5.0)
    assert p["cudagraph_sizes"] == 35 and "compile_or_warm_up_s" not in p


def test_report_shows_the_phases_per_side_and_skips_them_for_older_results():
    side = {"engine_start_s": 70.0, "startup": {"construct_s": 1.0, "weights_s": 7.0, "cudagraph_s": 20.0,
                                                "cudagraph_sizes": 35}}
    md = e2e.markdown({"sides": {"machete": side, "builtin": {"engine_start_s": 60.0}}})
    assert "| start: weight load | 7.0 | - |" in md
    assert "| start: CUDA graphs captured | 35 | - |" in md
    old = e2e.markdown({"sides": {"builtin": {"engine_start_s": 60.0}}})
    assert "start: " not in old and "| engine start (s) | 60.0 |" in old


def test_a_missing_boundary_is_left_out_with_a_message(monkeypatch, capsys):
    pytest.importorskip("vllm")
    from vllm.model_executor.model_loader import base_loader
    from vllm.v1.worker import gpu_model_runner, gpu_worker
    from vllm.v1.worker.gpu import model_runner as v2_model_runner
    for o, n in [(base_loader, "initialize_model"), (base_loader, "process_weights_after_loading"),
                 (gpu_worker.Worker, "compile_or_warm_up_model"),
                 (gpu_model_runner.GPUModelRunner, "capture_model"), (v2_model_runner.GPUModelRunner, "capture_model")]:
        monkeypatch.setattr(o, n, getattr(o, n))  # restored after the test
    monkeypatch.delattr(gpu_worker.Worker, "determine_available_memory")
    monkeypatch.setattr(logging.getLogger("vllm.compilation.backends"), "handlers", [])
    startup.install(startup.record_sink({}))
    assert "profile_s: vllm.v1.worker.gpu_worker.Worker.determine_available_memory not found" in capsys.readouterr().out
    assert base_loader.initialize_model.__wrapped__ is not None


def test_capture_hands_over_its_graph_count():
    class Runner:
        class compilation_config:
            cudagraph_capture_sizes = [1, 2, 4, 8]

        def capture_model(self):
            return 0

    record = {}
    startup._timed(Runner, "capture_model", "cudagraph_s", startup.record_sink(record))
    Runner().capture_model()
    Runner().capture_model()
    assert record["startup"]["cudagraph_sizes"] == 4  # a count is set, not added up
    assert record["startup"]["cudagraph_s"] >= 0.0


# What a `vllm serve` log of vLLM 0.26.0 holds, the engine core's lines prefixed.
SERVER_LOG = """\
(APIServer pid=10) INFO 12-03 06:00:01 [api_server.py:1] vLLM API server version 0.26.0
(EngineCore pid=11) INFO 12-03 06:00:20 [startup.py:58] vmp-startup construct_s 1.250
(EngineCore pid=11) INFO 12-03 06:00:25 [startup.py:58] vmp-startup process_weights_s 3.500
(EngineCore pid=11) INFO 12-03 06:00:25 [gpu_model_runner.py:5348] Model loading took 36.84 GiB memory and 9.750000 seconds
(EngineCore pid=11) INFO 12-03 06:00:40 [backends.py:1156] Dynamo bytecode transform time: 14.25 s
(EngineCore pid=11) INFO 12-03 06:01:00 [monitor.py:60] torch.compile took 34.50 s in total
(EngineCore pid=11) INFO 12-03 06:01:05 [startup.py:58] vmp-startup profile_s 40.000
(EngineCore pid=11) INFO 12-03 06:01:30 [startup.py:58] vmp-startup cudagraph_s 20.000
(EngineCore pid=11) INFO 12-03 06:01:30 [startup.py:58] vmp-startup cudagraph_sizes 51.000
(EngineCore pid=11) INFO 12-03 06:01:31 [startup.py:58] vmp-startup compile_or_warm_up_s 22.500
"""


def test_a_servers_log_gives_the_phases_back():
    r = startup.parse_log(SERVER_LOG, engine_start_s=90.0)
    p = r["startup"]
    assert r["load_s"] == 9.75 and r["engine_start_s"] == 90.0
    assert (p["construct_s"], p["process_weights_s"], p["weights_s"]) == (1.25, 3.5, 5.0)
    assert (p["compile_s"], p["dynamo_s"]) == (34.5, 14.25) and p["inductor_s"] == pytest.approx(20.25)
    assert (p["profile_s"], p["cudagraph_s"], p["cudagraph_sizes"]) == (40.0, 20.0, 51)
    assert p["warmup_s"] == pytest.approx(2.5)
    assert p["other_s"] == pytest.approx(90.0 - (1.25 + 5.0 + 3.5 + 40.0 + 20.0 + 2.5))


def test_the_v2_runners_load_line_is_read():
    log = SERVER_LOG.replace("36.84 GiB memory and 9.750000 seconds", "36.84 GiB and 5.310358 seconds")
    r = startup.parse_log(log, engine_start_s=90.0)
    assert r["load_s"] == 5.310358 and r["startup"]["weights_s"] == pytest.approx(5.310358 - 1.25 - 3.5)


def test_a_warm_restart_without_compile_lines_keeps_the_rest():
    log = "\n".join(line for line in SERVER_LOG.splitlines() if "Dynamo" not in line and "torch.compile" not in line)
    p = startup.parse_log(log, engine_start_s=60.0)["startup"]
    assert "compile_s" not in p and "dynamo_s" not in p and "inductor_s" not in p
    assert p["profile_s"] == 40.0


def test_log_sink_writes_what_parse_log_reads(caplog):
    sink = startup.log_sink()
    with caplog.at_level(logging.INFO, logger="vllm.vllm_machete_plugin.startup"):
        sink("construct_s", 2.5)
        sink("construct_s", 0.5)
        sink("cudagraph_sizes", 7)
    p = startup.parse_log(caplog.text, engine_start_s=10.0)["startup"]
    assert p["construct_s"] == 3.0 and p["cudagraph_sizes"] == 7


def test_register_installs_the_log_timers_only_when_asked(monkeypatch):
    pytest.importorskip("vllm")
    import vllm_machete_plugin as plugin
    calls = []
    monkeypatch.setattr(startup, "install", lambda sink, dynamo_from_log=True: calls.append(dynamo_from_log))
    monkeypatch.setattr(plugin, "_phases_logged", False)
    monkeypatch.delenv(startup.ENV, raising=False)
    plugin.register()
    assert calls == []
    monkeypatch.setenv(startup.ENV, "1")
    plugin.register()
    plugin.register()  # once per process
    assert calls == [False]  # Dynamo comes from vLLM's own log line, not twice
