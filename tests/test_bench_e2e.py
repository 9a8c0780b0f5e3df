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
    assert "MarlinLinearKernel" in out and "| quantized linears | 8/8 | 8/8 |" in out
    for name in ("e2e-tpot-vs-batch.png", "e2e-throughput-vs-rate.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000


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
