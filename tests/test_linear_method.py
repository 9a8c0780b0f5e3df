"""vLLM's own linear layers (QKV, merged gate_up, row-parallel) driven through our
quant method on the CPU: parameters created by the format module, filled by vLLM's
weight loaders from a tiny checkpoint's tensors, repacked, and run with the reference
backend (forced with VMP_BACKEND=reference; it is never chosen on its own)."""
import weakref

import pytest
import torch

from ckpt_harness import llama_linears, load_llama_linears, machete_config, tiny_files
from vllm_machete_plugin.backends.reference import reference_mm
from vllm_machete_plugin.testing import build_tiny_checkpoint
from vllm_machete_plugin.testing.tiny import read_tiny_linears

CASES = [
    ("gptq", dict(group_size=128, sym=True)),
    ("gptq", dict(group_size=64, sym=False)),
    ("gptq", dict(group_size=32, sym=True, act_order=True)),
    ("gptq", dict(group_size=-1, sym=True)),
    ("awq", dict(group_size=128)),
    ("awq", dict(group_size=64)),
    ("compressed-tensors", dict(group_size=128, sym=True)),
    ("compressed-tensors", dict(group_size=128, sym=False, act_order=True)),
    ("compressed-tensors", dict(group_size=-1, sym=False)),
    ("auto-round", dict(group_size=128)),
    ("auto-round", dict(group_size=32)),
    ("auto-round", dict(group_size=64, sym=False)),
    ("auto-round", dict(group_size=128, packing_format="auto_round:auto_awq")),
    ("auto-round", dict(group_size=64, sym=False, packing_format="auto_round:auto_awq")),
]


def _build(tmp_path, fmt, opts, dtype):
    path = build_tiny_checkpoint(tmp_path / "ckpt", fmt, dtype=dtype, **opts)
    cfg, tensors = tiny_files(path)
    return path, cfg, machete_config(cfg), tensors


@pytest.mark.parametrize("fmt,opts", CASES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_vllm_layers_match_reference(vllm_tp1, tmp_path, monkeypatch, fmt, opts, dtype):
    monkeypatch.setenv("VMP_BACKEND", "reference")
    tdtype = getattr(torch, dtype)
    path, cfg, qc, tensors = _build(tmp_path, fmt, opts, dtype)
    layers = llama_linears(qc, cfg, tdtype)
    load_llama_linears(layers, tensors)
    expected_w = read_tiny_linears(path)
    pre = "model.layers.0"
    parts = {"qkv_proj": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
             "o_proj": ["self_attn.o_proj"], "gate_up_proj": ["mlp.gate_proj", "mlp.up_proj"],
             "down_proj": ["mlp.down_proj"]}
    gen = torch.Generator().manual_seed(0)
    for name, layer in layers.items():
        ckpt_params = [weakref.ref(getattr(layer, n)) for n in layer.vmp_checkpoint_params]
        layer.quant_method.process_weights_after_loading(layer)
        assert all(p() is None for p in ckpt_params), "checkpoint-layout params must be freed"
        x = torch.randn(5, layer.input_size, generator=gen).to(tdtype)
        y, _ = layer(x)
        want = torch.cat([reference_mm(x, expected_w[f"{pre}.{p}"]).float() for p in parts[name]], dim=1)
        # Same fp32 products; only the output rounding to fp16/bf16 differs.
        tol = 1e-2 if dtype == "bfloat16" else 2e-3
        torch.testing.assert_close(y.float(), want, rtol=tol, atol=tol * want.abs().max().item())


def test_missing_tensor_is_reported_with_layer_and_name(vllm_tp1, tmp_path, monkeypatch):
    from vllm_machete_plugin.checkpoints.base import CheckpointError

    monkeypatch.setenv("VMP_BACKEND", "reference")
    _, cfg, qc, tensors = _build(tmp_path, "gptq", dict(group_size=128, sym=False), "float16")
    layers = llama_linears(qc, cfg, torch.float16)
    load_llama_linears(layers, tensors, skip={"model.layers.0.mlp.down_proj.qzeros"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.down_proj.*qzeros"):
        layers["down_proj"].quant_method.process_weights_after_loading(layers["down_proj"])


@pytest.mark.parametrize("load_format", ["sharded_state", "runai_streamer_sharded"])
def test_saved_kernel_format_state_is_refused_with_the_fix(vllm_tp1, tmp_path, monkeypatch, load_format):
    """vLLM's pre-sharded state loaders look the saved (repacked, vmp_*) names up in a fresh model's
    checkpoint-layout parameters and would fail with a bare KeyError: refused when the model is built."""
    from vllm_machete_plugin.checkpoints.base import CheckpointError

    _, cfg, qc, _ = _build(tmp_path, "gptq", dict(group_size=128), "float16")
    monkeypatch.setattr(vllm_tp1.load_config, "load_format", load_format)
    with pytest.raises(CheckpointError, match=rf"model\.layers\.0\.self_attn\.qkv_proj: load_format='{load_format}' "
                                              r".*Fix: load the original quantized checkpoint"):
        llama_linears(qc, cfg, torch.float16)
    monkeypatch.setattr(vllm_tp1.load_config, "load_format", "auto")
    assert not llama_linears(qc, cfg, torch.float16)["qkv_proj"].vmp_dummy


def test_no_backend_error_names_layer_and_reasons(vllm_tp1, tmp_path, monkeypatch):
    from vllm_machete_plugin.backends import NoBackendError

    monkeypatch.setenv("VMP_DISABLED_BACKENDS", "marlin,machete")
    _, cfg, qc, tensors = _build(tmp_path, "gptq", dict(group_size=128), "float16")
    layers = llama_linears(qc, cfg, torch.float16)
    load_llama_linears(layers, tensors)
    with pytest.raises(NoBackendError, match=r"model\.layers\.0\.self_attn\.o_proj.*K=256 N=256"):
        layers["o_proj"].quant_method.process_weights_after_loading(layers["o_proj"])


@pytest.mark.parametrize("fmt,opts", [("gptq", dict(group_size=128, sym=True, act_order=True)),
                                      ("awq", dict(group_size=128)),
                                      ("compressed-tensors", dict(group_size=64, sym=False, act_order=True)),
                                      ("compressed-tensors", dict(group_size=128, sym=True))])
def test_dummy_load_format_gives_a_fully_quantized_layer(vllm_tp1, tmp_path, monkeypatch, fmt, opts):
    """load_format="dummy" (no tensors loaded, integer params uninitialised) must still
    give quantized layers that run: the 70B benchmarks depend on it."""
    from vllm.model_executor.model_loader.weight_utils import initialize_single_dummy_weight

    monkeypatch.setenv("VMP_BACKEND", "reference")
    monkeypatch.setattr(vllm_tp1.load_config, "load_format", "dummy")
    _, cfg, qc, _ = _build(tmp_path, fmt, opts, "float16")
    for name, layer in llama_linears(qc, cfg, torch.float16).items():
        for p in layer.parameters():
            if not p.dtype.is_floating_point:
                p.data.copy_(torch.randint(-2**31, 2**31 - 1, p.shape, dtype=torch.int64).to(p.dtype))
            initialize_single_dummy_weight(p)
        layer.quant_method.process_weights_after_loading(layer)
        assert layer.vmp_backend.name == "reference"
        y, _ = layer(torch.randn(3, layer.input_size, dtype=torch.float16))
        assert y.shape == (3, layer.output_size_per_partition) and torch.isfinite(y).all()
        if opts.get("act_order"):
            assert hasattr(layer, "vmp_perm") or layer.vmp_backend.name == "reference"
