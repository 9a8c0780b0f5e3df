"""Corrupted copies of tiny GPTQ / AWQ / compressed-tensors checkpoints through vLLM's
path: the quant config as `vllm serve --quantization machete` builds it, vLLM's linear
layers built with it, filled by vLLM's weight loaders and repacked (reference backend).
Each corruption used to load and serve wrong outputs, or fail with a message naming
nothing useful; now it is refused (or warned about) naming the layer or file, the tensor,
the shapes and the fix."""
import json
import logging
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from ckpt_harness import llama_linears, llama_quant_config, load_llama_linears
from vllm_machete_plugin.backends.reference import reference_mm
from vllm_machete_plugin.canonical import SYMMETRIC_ZERO, pack_int4
from vllm_machete_plugin.checkpoints import CheckpointError
from vllm_machete_plugin.config import MacheteConfig
from vllm_machete_plugin.testing import build_tiny_checkpoint
from vllm_machete_plugin.testing.tiny import LINEARS, read_tiny_linears

PRE = "model.layers.0"
SHARDS = {"qkv_proj": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "o_proj": ["self_attn.o_proj"],
          "gate_up_proj": ["mlp.gate_proj", "mlp.up_proj"], "down_proj": ["mlp.down_proj"]}


@pytest.fixture
def vllm_path(vllm_tp1, register_plugin, monkeypatch):
    monkeypatch.setenv("VMP_BACKEND", "reference")


def edit_tensors(path, edit) -> None:
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def drop_module(path, module: str) -> None:
    edit_tensors(path, lambda t: [t.pop(k) for k in [k for k in t if k.startswith(module + ".")]])


def edit_config(path, edit) -> None:
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))


def load_layer(path, layer: int = 0, qc=None) -> dict:
    """Decoder layer `layer`'s linears, built with the checkpoint's quant config and filled."""
    cfg = json.loads((path / "config.json").read_text())
    layers = llama_linears(qc or llama_quant_config(path), cfg, torch.float16, layer)
    load_llama_linears(layers, load_file(str(path / "model.safetensors")), layer)
    return layers


def assert_serves_checkpoint(layers: dict, want: dict) -> None:
    """Every layer repacks and computes X @ dequant(W) of the checkpoint modules `want`."""
    x = torch.randn(3, 768, generator=torch.Generator().manual_seed(0)).half()
    for name, layer in layers.items():
        layer.quant_method.process_weights_after_loading(layer)
        xi = x[:, :layer.input_size]
        y, _ = layer(xi)
        ref = torch.cat([reference_mm(xi, want[f"{PRE}.{m}"]).float() for m in SHARDS[name]], dim=1)
        torch.testing.assert_close(y.float(), ref, rtol=2e-3, atol=2e-3 * ref.abs().max().item())


# ---- a module or a file missing ------------------------------------------------------

def test_gptq_module_missing_from_checkpoint_is_refused(tmp_path, vllm_path):
    """Without modules_in_block_to_quantize, the header scan took a module without integer
    tensors for an unquantized one: o_proj ran on an fp16 weight nothing filled."""
    path = build_tiny_checkpoint(tmp_path, "gptq")
    drop_module(path, f"{PRE}.self_attn.o_proj")
    with pytest.raises(CheckpointError, match=r"^model\.layers\.0\.self_attn\.o_proj: the checkpoint has no tensors "
                                              r"for model\.layers\.0\.self_attn\.o_proj: neither integer .* such as "
                                              r"'model\.layers\.0\.self_attn\.o_proj\.qweight' nor an unquantized "
                                              r"'model\.layers\.0\.self_attn\.o_proj\.weight'.*Fix: re-download"):
        load_layer(path)


def test_gptq_shard_missing_from_fused_layer_is_named(tmp_path, vllm_path):
    """A missing q_proj used to be reported as qkv's shards 'quantized differently'."""
    path = build_tiny_checkpoint(tmp_path, "gptq")
    drop_module(path, f"{PRE}.self_attn.q_proj")
    with pytest.raises(CheckpointError) as e:
        load_layer(path)
    msg = str(e.value)
    assert msg.startswith("model.layers.0.self_attn.qkv_proj: the checkpoint has no tensors for "
                          "model.layers.0.self_attn.q_proj: "), msg
    assert ("the checkpoint has tensors for ['model.layers.0.self_attn.k_proj', 'model.layers.0.self_attn.v_proj'] "
            "only" in msg and "differently" not in msg), msg


def shard_files(path) -> list[str]:
    """Rewrite the checkpoint as two files, layer 1 in the second, with the index HF writes."""
    tensors = load_file(str(path / "model.safetensors"))
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    where = {k: files[k.startswith("model.layers.1.")] for k in tensors}
    for f in files:
        save_file({k: t for k, t in tensors.items() if where[k] == f}, str(path / f), metadata={"format": "pt"})
    (path / "model.safetensors").unlink()
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": where}))
    return files


def test_missing_shard_file_is_named(tmp_path, vllm_path):
    path = build_tiny_checkpoint(tmp_path, "gptq")
    files = shard_files(path)
    llama_quant_config(path)  # the sharded checkpoint is fine
    (path / files[1]).unlink()
    with pytest.raises(CheckpointError, match=rf"model\.safetensors\.index\.json names 2 weight files, but "
                                              rf"\['{files[1]}'\] is not in the directory.*Fix: download the missing"):
        llama_quant_config(path)


@pytest.mark.parametrize("fmt,tensor", [("awq", "qweight"), ("compressed-tensors", "weight_packed")])
def test_awq_and_ct_missing_module_is_refused_at_load(tmp_path, vllm_path, fmt, tensor):
    """AWQ and compressed-tensors configs name their unquantized modules, so a missing
    module is still quantized, and its never-filled parameters are refused at repack."""
    path = build_tiny_checkpoint(tmp_path, fmt)
    drop_module(path, f"{PRE}.self_attn.o_proj")
    layers = load_layer(path)
    with pytest.raises(CheckpointError, match=rf"o_proj: tensor '{tensor}' .* was never loaded from the checkpoint"):
        layers["o_proj"].quant_method.process_weights_after_loading(layers["o_proj"])


# ---- NaN / Inf scales ---------------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("fmt,name,at,shape,first", [
    ("gptq", "scales", (1, 5), (2, 512), [1, 261]),
    ("awq", "scales", (1, 5), (2, 512), [1, 261]),
    ("compressed-tensors", "weight_scale", (5, 1), (512, 2), [261, 1]),
])
def test_non_finite_scale_is_refused(tmp_path, vllm_path, fmt, name, at, shape, first, value):
    """One NaN/Inf scale of k_proj (shard 1 of qkv: column 256 + 5) made the model output NaN/Inf."""
    path = build_tiny_checkpoint(tmp_path, fmt)
    edit_tensors(path, lambda t: t[f"{PRE}.self_attn.k_proj.{name}"].__setitem__(at, float(value)))
    layers = load_layer(path)
    counts = "1 NaN and 0 Inf" if value == "nan" else "0 NaN and 1 Inf"
    with pytest.raises(CheckpointError, match=re.escape(
            f"model.layers.0.self_attn.qkv_proj: checkpoint tensor '{name}' (") + r".*" + re.escape(
            f") of shape {shape} holds {counts} values (first at index {first}, in shard 1 (from 0) of the 3 "
            f"this layer fuses)") + r".*Fix: re-download the checkpoint"):
        layers["qkv_proj"].quant_method.process_weights_after_loading(layers["qkv_proj"])


HOST_READS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist")


@pytest.mark.parametrize("fmt,opts", [("gptq", dict(sym=True)), ("gptq", dict(sym=True, checkpoint_format="gptq_v2")),
                                      ("gptq", dict(sym=False, act_order=True, group_size=64)), ("awq", {}),
                                      ("compressed-tensors", dict(sym=False, act_order=True, group_size=64))])
def test_value_checks_read_back_once_per_layer(tmp_path, vllm_path, monkeypatch, fmt, opts):
    """Finite scales, symmetric zero points, g_idx and weight_shape are checked on the load
    device and read back together: one host synchronisation per layer."""
    path = build_tiny_checkpoint(tmp_path, fmt, **opts)
    qc = llama_quant_config(path)
    layers = load_layer(path, qc=qc)
    reads = []

    def counted(name):
        method = getattr(torch.Tensor, name)
        return lambda self, *a, **kw: reads.append(name) or method(self, *a, **kw)
    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    for prefix, layer in layers.items():
        reads.clear()
        qc.fmt.to_canonical(layer, layer.quant_method.scheme, layer.vmp_partition, where=prefix)
        assert len(reads) == 1, (prefix, reads)


# ---- a GPTQ v1 checkpoint labelled gptq_v2 -------------------------------------------------

class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def gptq_warnings():
    """Warnings of the GPTQ format module (vLLM's 'vllm' logger does not propagate to pytest's)."""
    handler = Records()
    logger = logging.getLogger("vllm.vllm_machete_plugin.checkpoints.gptq")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


@pytest.mark.parametrize("sym", [True, False])
def test_v1_checkpoint_labelled_v2_warns_once(tmp_path, vllm_path, gptq_warnings, sym):
    """AutoGPTQ (v1) stores the symmetric zero point 8 as 7; read as gptq_v2 that is 7, one
    zero step off. With sym=true the zero points are unused, so the model is served right."""
    path = build_tiny_checkpoint(tmp_path, "gptq", sym=True)
    want = read_tiny_linears(path)
    edit_config(path, lambda c: c["quantization_config"].update(checkpoint_format="gptq_v2", sym=sym))
    qc = llama_quant_config(path)
    for layer in (0, 1):
        layers = load_layer(path, layer, qc)
        if layer == 0 and sym:
            assert_serves_checkpoint(layers, want)
        else:
            for lin in layers.values():
                lin.quant_method.process_weights_after_loading(lin)
    assert len(gptq_warnings) == 1, gptq_warnings
    msg = gptq_warnings[0]
    assert msg.startswith("vllm-machete-plugin: model.layers.0.self_attn.qkv_proj: checkpoint_format is gptq_v2, "
                          "but every stored zero point in 'qzeros' is 7, the gptq (v1) encoding of the symmetric "
                          "zero point 8"), msg
    assert ("served right" in msg) == sym and ("off by one zero step" in msg) != sym, msg
    assert msg.endswith('Fix: set checkpoint_format to "gptq" in quantization_config, or remove it.'), msg


@pytest.mark.parametrize("opts", [dict(sym=True), dict(sym=True, checkpoint_format="gptq_v2"),
                                  dict(sym=False, checkpoint_format="gptq_v2"), dict(sym=False)])
def test_correct_v1_and_v2_checkpoints_do_not_warn(tmp_path, vllm_path, gptq_warnings, opts):
    path = build_tiny_checkpoint(tmp_path, "gptq", **opts)
    assert_serves_checkpoint(load_layer(path), read_tiny_linears(path))
    assert gptq_warnings == []


# ---- messages that were someone else's -------------------------------------------------

@pytest.mark.parametrize("cut", ["data", "header"])
@pytest.mark.parametrize("fmt", ["gptq", "awq", "compressed-tensors"])
def test_truncated_safetensors_file_is_named(tmp_path, vllm_path, fmt, cut):
    """safetensors says only 'incomplete metadata, file not fully covered' (inside vLLM's
    loader, or in the GPTQ scan); the file check at config time names the file."""
    path = build_tiny_checkpoint(tmp_path, fmt)
    file = path / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:-1000] if cut == "data" else data[:40])
    detail = (r"the file is truncated: its header declares \d+ bytes of tensor data, but the file holds \d+"
              if cut == "data" else r"truncated or not a safetensors file: 40 bytes, too short for a \d+-byte header")
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(file))}: {detail}.*Fix: download the file again"):
        llama_quant_config(path)


def test_checkpoint_without_quantization_config_is_named(tmp_path, vllm_path):
    """vLLM said only 'Cannot find the config file for machete'."""
    path = build_tiny_checkpoint(tmp_path, "gptq")
    edit_config(path, lambda c: c.pop("quantization_config"))
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: --quantization machete needs a quantized "
                                              r"checkpoint, but its config.json has no quantization_config.*no "
                                              r"quantize_config\.json or quant_config\.json.*Fix: drop --quantization"):
        llama_quant_config(path)


@pytest.mark.parametrize("fmt,file", [("gptq", "quantize_config.json"), ("awq", "quant_config.json")])
def test_legacy_quantization_config_file_is_read(tmp_path, vllm_path, fmt, file):
    """Old AutoGPTQ / AutoAWQ repos keep the config in its own file, without quant_method."""
    path = build_tiny_checkpoint(tmp_path, fmt)
    want = read_tiny_linears(path)
    config = json.loads((path / "config.json").read_text())
    legacy = {k: v for k, v in config.pop("quantization_config").items() if k != "quant_method"}
    (path / "config.json").write_text(json.dumps(config))
    (path / file).write_text(json.dumps(legacy))
    qc = llama_quant_config(path)
    assert isinstance(qc, MacheteConfig) and qc.fmt.name == fmt
    assert_serves_checkpoint(load_layer(path, qc=qc), want)


def test_ct_symmetric_config_over_zero_points_is_refused(tmp_path, vllm_path):
    """vLLM's loader said only that the model has no parameter 'qkv_proj.weight_zero_point'."""
    path = build_tiny_checkpoint(tmp_path, "compressed-tensors", sym=False)
    edit_config(path, lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].update(
        symmetric=True, zp_dtype=None))
    layers = load_layer(path)
    with pytest.raises(CheckpointError, match=r"^model\.layers\.0\.self_attn\.qkv_proj: quantization_config says "
                                              r"symmetric: true, but the checkpoint has 'weight_zero_point' "
                                              r"\(weight_zero_point int32 \[N/8, G\].*\) of shape \(64, 2\) holding "
                                              r"zero points \[-\d.*The weights were quantized asymmetrically\. "
                                              r"Fix: set symmetric: false"):
        layers["qkv_proj"].quant_method.process_weights_after_loading(layers["qkv_proj"])


def test_ct_symmetric_zero_points_of_zero_are_accepted(tmp_path, vllm_path):
    """Zero points that are all 0 (stored as 8) are what symmetric means: loaded and dropped."""
    path = build_tiny_checkpoint(tmp_path, "compressed-tensors", sym=True)

    def add_zero_points(tensors):
        for layer in range(2):
            for name, (k, n, _) in LINEARS.items():
                zeros = torch.full((n, k // 128), SYMMETRIC_ZERO, dtype=torch.uint8)
                tensors[f"model.layers.{layer}.{name}.weight_zero_point"] = pack_int4(zeros, dim=0)
    edit_tensors(path, add_zero_points)
    assert_serves_checkpoint(load_layer(path), read_tiny_linears(path))
