"""AutoRound checkpoints (quant_method "auto-round", GPTQ packing): which modules are quantized and
how (extra_config, block_name_to_quantize), the zero points a symmetric module may store, loading
through vLLM's parameter classes, and what is refused. Whole tiny checkpoints run through vLLM's
layers in tests/test_linear_method.py and resolve through vLLM's config in tests/test_plugin.py."""
import pytest
import torch

from ckpt_harness import canonical, load, make_layer
from vllm_machete_plugin.canonical import dequantize
from vllm_machete_plugin.checkpoints import AWQFormat, AutoRoundFormat, CheckpointError, GPTQFormat, format_for
from vllm_machete_plugin.checkpoints.auto_round import AutoRoundAWQFormat
from vllm_machete_plugin.checkpoints.base import LayerScheme
from vllm_machete_plugin.testing import quantize_rtn

DOWN = "model.layers.0.mlp.down_proj"


def auto_round(**kw):
    raw = {"quant_method": "auto-round", "packing_format": "auto_round:auto_gptq", "bits": 4, "group_size": 128,
           "sym": True, "data_type": "int", **kw}
    return format_for(raw)


def scheme(group_size=128):
    return LayerScheme(bits=4, group_size=group_size, sym=True, act_order=False)


def test_asymmetric_modules_by_config_or_by_rule():
    assert auto_round(sym=False)._scheme_of_module(DOWN) == LayerScheme(4, 128, False, False)
    fmt = auto_round(extra_config={r".*down_proj": {"sym": False}})
    assert fmt._scheme_of_module(DOWN) == LayerScheme(4, 128, False, False)
    assert fmt._scheme_of_module("model.layers.0.mlp.up_proj") == scheme()


def test_modules_follow_extra_config_and_blocks():
    fmt = auto_round(extra_config={DOWN: {"bits": 16, "data_type": "float"},
                                   r"layers\.1\..*o_proj": {"group_size": 64},
                                   "model.layers.2.self_attn.q_proj": {"bits": 4, "group_size": 32}},
                     block_name_to_quantize="model.layers")
    assert isinstance(fmt, AutoRoundFormat) and fmt.name == "auto-round"
    assert fmt._scheme_of_module(DOWN) is None  # bits 16: left unquantized
    assert fmt._scheme_of_module("model.layers.1.mlp.down_proj") == scheme()
    assert fmt._scheme_of_module("model.layers.1.self_attn.o_proj") == scheme(64)  # regex key
    assert fmt._scheme_of_module("model.layers.0.self_attn.o_proj") == scheme()
    assert fmt._scheme_of_module("model.layers.2.self_attn.q_proj") == scheme(32)  # exact key
    assert fmt._scheme_of_module("lm_head") is None
    assert fmt._scheme_of_module("visual.blocks.0.attn.qkv") is None  # outside block_name_to_quantize
    # Outside the blocks, a rule with bits quantizes (AutoRound's exporter writes one for each module
    # it quantized there); its other defaults are channelwise and symmetric, as vLLM reads them.
    outside = auto_round(block_name_to_quantize=["model.layers"],
                         extra_config={"mtp.fc": {"bits": 4, "group_size": 128}, "mtp.proj": {"bits": 4},
                                       r"visual\..*": {"data_type": "int"}})
    assert outside._scheme_of_module("mtp.fc") == scheme()
    assert outside._scheme_of_module("mtp.proj") == LayerScheme(4, -1, True, False)
    assert outside._scheme_of_module("visual.blocks.0.attn.qkv") is None  # a rule without bits
    assert outside._scheme_of_module("mtp.other") is None
    # Older exports list one list of block names per model part.
    nested = auto_round(to_quant_block_names=[["model.layers.0", "model.layers.1"], ["mtp.layers"]])
    assert nested.blocks == ["model.layers.0", "model.layers.1", "mtp.layers"]
    assert nested._scheme_of_module("mtp.layers.0.mlp.down_proj") == scheme()
    assert nested._scheme_of_module("model.layers.2.mlp.down_proj") is None
    # vLLM's prefixes may lack the checkpoint's leading "model." (an exact key matches either way).
    prefixed = auto_round(extra_config={"model.layers.3.mlp.up_proj": {"bits": 16}})
    assert prefixed._scheme_of_module("layers.3.mlp.up_proj") is None
    # Fused layers take one scheme from their shards; shards that disagree are refused.
    mixed = auto_round(extra_config={"model.layers.0.self_attn.k_proj": {"group_size": 64}})
    mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    with pytest.raises(CheckpointError, match="qkv_proj"):
        mixed.scheme_for("model.layers.0.self_attn.qkv_proj", mapping)
    assert mixed.scheme_for("model.layers.1.self_attn.qkv_proj", mapping) == scheme()


def test_vllm_renames_reach_the_rules():
    from vllm.model_executor.models.utils import WeightsMapper

    fmt = auto_round(extra_config={"model.language_model.layers.0.mlp.down_proj": {"bits": 16}},
                     to_quant_block_names=["model.language_model.layers"])
    fmt.apply_vllm_mapper(WeightsMapper(orig_to_new_prefix={"model.language_model.": "language_model.model."}))
    assert fmt.blocks == ["language_model.model.layers"]
    assert fmt._scheme_of_module("language_model.model.layers.0.mlp.down_proj") is None
    assert fmt._scheme_of_module("language_model.model.layers.1.mlp.down_proj") == scheme()
    assert fmt._scheme_of_module("model.language_model.layers.1.mlp.down_proj") is None  # old name: outside


@pytest.mark.parametrize("kw,match", [
    (dict(packing_format="auto_round:llm_compressor"),
     r"packing_format='auto_round:llm_compressor' is not supported; supported: 'auto_round:auto_gptq' and "
     r"'auto_round:auto_awq'"),
    (dict(packing_format="auto_round:auto_awq", data_type="mx_fp"), r"data_type='mx_fp' is not supported"),
    (dict(data_type="mx_fp"), r"data_type='mx_fp' is not supported"),
    (dict(bits=8), r"bits=8 is not supported"),
    (dict(group_size=96), r"group_size=96 is not supported"),
    (dict(extra_config={"lm_head": {"bits": 4}}), r"quantizes 'lm_head' to 4 bits; a quantized lm_head"),
    (dict(extra_config={"layers.(0": {"bits": 16}}), r"extra_config key 'layers.\(0' is not a valid regex"),
])
def test_unsupported_configs_are_refused_with_the_reason(kw, match):
    with pytest.raises(CheckpointError, match=match):
        auto_round(**kw)


def test_missing_keys_are_named():
    with pytest.raises(CheckpointError, match=r"AutoRound quantization_config: required keys \['group_size'\]"):
        format_for({"quant_method": "auto-round", "bits": 4})


@pytest.mark.parametrize("rule,match", [
    ({"bits": 8}, r"bits=8 is not supported"),
    ({"data_type": "nv_fp"}, r"data_type='nv_fp'"),
])
def test_a_module_rule_that_cannot_be_served_names_the_module_and_rule(rule, match):
    fmt = auto_round(extra_config={r".*down_proj": rule})
    with pytest.raises(CheckpointError, match=rf"{DOWN} \(AutoRound extra_config '\.\*down_proj'\): .*{match}"):
        fmt._scheme_of_module(DOWN)


@pytest.mark.parametrize("version", ["gptq", "gptq_v2"])
def test_symmetric_zero_points_stored_either_way_load_exactly(version):
    """GPTQ packing as v1 writes it (stored 7) or as is (stored 8): both are the zero point 8."""
    fmt = auto_round()
    gen = torch.Generator().manual_seed(0)
    w = quantize_rtn(torch.randn(128, 256, generator=gen), 128, True, False, torch.float16, gen)
    layer = make_layer("row", fmt, 256, 128)
    load(layer, GPTQFormat.pack(w, layer.scheme, checkpoint_format=version))
    got = canonical(layer, fmt)
    assert got.zeros is None and torch.equal(got.codes, w.codes)
    assert torch.equal(dequantize(got), dequantize(w))


def test_asymmetric_zero_points_are_gptq_v1s():
    """AutoRound's GPTQ packer stores z - 1, as GPTQ v1 does: an asymmetric module loads exactly."""
    fmt = auto_round(sym=False, group_size=64)
    gen = torch.Generator().manual_seed(0)
    w = quantize_rtn(torch.randn(128, 256, generator=gen), 64, False, False, torch.float16, gen)
    layer = make_layer("row", fmt, 256, 128)
    load(layer, GPTQFormat.pack(w, layer.scheme, checkpoint_format="gptq"))
    got = canonical(layer, fmt)
    assert torch.equal(got.zeros, w.zeros) and torch.equal(got.codes, w.codes)


def test_asymmetric_zero_points_under_a_sym_config_are_refused():
    fmt = auto_round()
    gen = torch.Generator().manual_seed(0)
    w = quantize_rtn(torch.randn(128, 256, generator=gen), 128, False, False, torch.float16, gen)
    layer = make_layer("row", fmt, 256, 128)
    load(layer, GPTQFormat.pack(w, layer.scheme.__class__(4, 128, False, False)))
    with pytest.raises(CheckpointError, match=rf"{DOWN}: the AutoRound config says sym=true, but 'qzeros' hold"):
        canonical(layer, fmt)


def test_awq_packing_reads_autoawqs_tensors_under_the_same_rules():
    """auto_round:auto_awq: AutoAWQ's GEMM tensors, zero points always stored (8 where symmetric), so
    every module is served with them; the module rules are AutoRound's."""
    fmt = auto_round(packing_format="auto_round:auto_awq", group_size=64,
                     extra_config={DOWN: {"bits": 16}, r".*o_proj": {"group_size": 128}})
    assert isinstance(fmt, AutoRoundAWQFormat) and fmt.name == "auto-round"
    assert fmt._scheme_of_module(DOWN) is None
    assert fmt._scheme_of_module("model.layers.0.self_attn.o_proj") == LayerScheme(4, 128, False, False)
    assert fmt._scheme_of_module("model.layers.0.mlp.up_proj") == LayerScheme(4, 64, False, False)
    assert fmt._scheme_of_module("lm_head") is None
    gen = torch.Generator().manual_seed(0)
    for sym in (True, False):
        w = quantize_rtn(torch.randn(128, 256, generator=gen), 64, sym, False, torch.float16, gen)
        layer = make_layer("row", fmt, 256, 128, layer_prefix="model.layers.1")
        packed = AutoRoundFormat.pack(w, layer.scheme, packing_format="auto_round:auto_awq")
        assert packed.keys() == AWQFormat.pack(w, layer.scheme).keys()
        load(layer, packed)
        assert torch.equal(dequantize(canonical(layer, fmt)), dequantize(w))
