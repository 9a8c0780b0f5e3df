"""bench e2e's startup phases (vllm_machete_plugin/bench/startup.py), without a GPU: the
vLLM 0.26.0 methods it wraps exist and get timed, the Dynamo time is taken from vLLM's
log record, the derived phases add up, and the report shows them per side."""
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
    startup._timed(Owner, "phase", "x_s", record)
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
        startup.install({})
        for o, n in targets:
            assert getattr(o, n).__wrapped__ is not None, f"{o.__name__}.{n} was not wrapped"
    finally:
        for o, n, f in saved:
            setattr(o, n, f)
        logging.getLogger("vllm.compilation.backends").handlers = handlers


def test_dynamo_time_comes_from_vllms_log_record():
    record = {}
    handler = startup._DynamoTime(record)
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
    startup.install({})
    assert "profile_s: vllm.v1.worker.gpu_worker.Worker.determine_available_memory not found" in capsys.readouterr().out
    assert base_loader.initialize_model.__wrapped__ is not None
