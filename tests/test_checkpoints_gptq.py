"""GPTQ checkpoint format: exact unpacking of hand-packed tensors, pack round trips,
loading through vLLM's parameter classes (fused shards, TP=2 splits), and bad inputs."""
import pytest
import torch

from ckpt_harness import (MAPPING, QKV_SHARDS, assert_act_order_resolves, assert_missing_tensor,
                          assert_qkv_loads, assert_same, bare_layer, canonical, column_slice,
                          concat_columns, load, make_layer, nibble_word, row_slice, whole)
from vllm_machete_plugin.act_order import REGROUP_ROWS
from vllm_machete_plugin.canonical import dequantize
from vllm_machete_plugin.checkpoints import CheckpointError, GPTQFormat, format_for
from vllm_machete_plugin.checkpoints.base import LayerScheme
from vllm_machete_plugin.testing import quantize_rtn
from vllm_machete_plugin.testing.quantize import act_order_g_idx

DOWN = "model.layers.0.mlp.down_proj"


def gptq(group_size=128, sym=True, desc_act=False, checkpoint_format="gptq", **extra):
    return GPTQFormat({"quant_method": "gptq", "bits": 4, "group_size": group_size, "sym": sym,
                       "desc_act": desc_act, "checkpoint_format": checkpoint_format, **extra})


def rtn(n, k, group_size, sym, act_order=False, dtype=torch.float16, seed=0, g_idx=None):
    gen = torch.Generator().manual_seed(seed)
    return quantize_rtn(torch.randn(n, k, generator=gen), group_size, sym, act_order, dtype, gen, g_idx=g_idx)


# ---- exact unpacking of hand-packed tensors --------------------------------------

def hand_packed(K, N, g, sym, version, g_idx):
    """Codes, zeros, scales as Python lists and the GPTQ tensors built from them bit by bit."""
    G = K // g
    q = [[(7 * k + 3 * n + k // 5) % 16 for n in range(N)] for k in range(K)]
    z = [[8] * N for _ in range(G)] if sym else [[(5 * i + 11 * n + 1) % 16 for n in range(N)] for i in range(G)]
    s = [[(1 + (i * N + n) % 7) / 128 for n in range(N)] for i in range(G)]
    stored = [[(v - 1) % 16 if version == 1 else v for v in row] for row in z]  # v1 stores z - 1
    tensors = {
        "qweight": torch.tensor([[nibble_word([q[8 * r + j][n] for j in range(8)]) for n in range(N)]
                                 for r in range(K // 8)], dtype=torch.int32),
        "qzeros": torch.tensor([[nibble_word(row[8 * c:8 * c + 8]) for c in range(N // 8)] for row in stored],
                               dtype=torch.int32),
        "scales": torch.tensor(s, dtype=torch.float16),
        "g_idx": torch.tensor(g_idx, dtype=torch.int32),
    }
    return q, z, s, tensors


@pytest.mark.parametrize("checkpoint_format", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group_size", [-1, 32, 64, 128])
def test_unpack_hand_packed(group_size, sym, checkpoint_format):
    K, N = 256, 16
    g = K if group_size == -1 else group_size
    q, z, s, tensors = hand_packed(K, N, g, sym, 1 if checkpoint_format == "gptq" else 2, [k // g for k in range(K)])
    fmt = gptq(group_size, sym, checkpoint_format=checkpoint_format)
    scheme = fmt.scheme_for(DOWN, MAPPING)
    w = fmt.to_canonical(bare_layer(tensors), scheme, whole(K, N), DOWN)
    assert w.codes.tolist() == q
    assert w.scales.tolist() == s
    assert w.group_size == g and w.g_idx is None
    if sym:
        assert w.zeros is None
    else:
        assert w.zeros.tolist() == z
    # The reference dequant formula, element by element.
    deq = dequantize(w)
    for k in range(0, K, 37):
        for n in range(N):
            assert deq[k, n].item() == s[k // g][n] * (q[k][n] - z[k // g][n])
    # pack writes exactly the same bits, names and dtypes as the tool.
    packed = GPTQFormat.pack(w, scheme, checkpoint_format=checkpoint_format)
    assert list(packed) == ["qweight", "qzeros", "scales", "g_idx"]
    for name, t in tensors.items():
        assert packed[name].dtype == t.dtype and torch.equal(packed[name], t), name


@pytest.mark.parametrize("checkpoint_format,word", [("gptq", 0x77777777), ("gptq_v2", 0x88888888 - 2 ** 32)])
def test_symmetric_qzeros_constant(checkpoint_format, word):
    """AutoGPTQ v1 writes 0x77777777 for symmetric 4-bit zeros (true zero 8 stored as 7)."""
    w = rtn(16, 64, 32, sym=True)
    packed = GPTQFormat.pack(w, LayerScheme(4, 32, True, False), checkpoint_format=checkpoint_format)
    assert bool((packed["qzeros"] == word).all())


def test_v1_zero_point_zero_wraps_to_15():
    """v1 stores z - 1 mod 16: a true zero point 0 is stored as 15 and read back as 0."""
    K, N = 64, 16
    _, z, _, tensors = hand_packed(K, N, 32, False, 1, [k // 32 for k in range(K)])
    assert any(0 in row for row in z)
    w = gptq(32, sym=False).to_canonical(bare_layer(tensors), LayerScheme(4, 32, False, False), whole(K, N), DOWN)
    assert w.zeros.tolist() == z


def test_unpack_hand_packed_act_order():
    K, N, g = 256, 16, 32
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(3)).tolist()
    g_idx = [0] * K
    for i, row in enumerate(perm):
        g_idx[row] = i // g  # GPTQ desc_act: g_idx[perm[i]] = i // group_size
    q, z, s, tensors = hand_packed(K, N, g, False, 1, g_idx)
    fmt = gptq(g, sym=False, desc_act=True)
    scheme = fmt.scheme_for(DOWN, MAPPING)
    assert scheme.act_order
    w = fmt.to_canonical(bare_layer(tensors), scheme, whole(K, N), DOWN)
    assert w.g_idx.tolist() == g_idx and w.codes.tolist() == q and w.zeros.tolist() == z
    deq = dequantize(w)
    for k in range(0, K, 11):
        for n in range(N):
            assert deq[k, n].item() == s[g_idx[k]][n] * (q[k][n] - z[g_idx[k]][n])
    assert torch.equal(GPTQFormat.pack(w, scheme)["g_idx"], tensors["g_idx"])


def test_desc_act_with_one_group_is_not_act_order():
    assert gptq(-1, desc_act=True).scheme_for(DOWN, MAPPING) == LayerScheme(4, -1, True, False)


# ---- round trip -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("checkpoint_format", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group_size", [-1, 32, 64, 128])
def test_round_trip(group_size, sym, act_order, checkpoint_format, dtype):
    K, N = 256, 64
    fmt = gptq(group_size, sym, act_order, checkpoint_format)
    scheme = fmt.scheme_for(DOWN, MAPPING)
    w = rtn(N, K, group_size, sym, scheme.act_order, dtype)
    packed = GPTQFormat.pack(w, scheme, checkpoint_format=checkpoint_format)
    assert {n: t.dtype for n, t in packed.items()} == {"qweight": torch.int32, "qzeros": torch.int32,
                                                       "scales": torch.float16, "g_idx": torch.int32}
    assert packed["qweight"].shape == (K // 8, N) and packed["qzeros"].shape == (w.num_groups, N // 8)
    got = fmt.to_canonical(bare_layer(packed), scheme, whole(K, N), DOWN)
    assert_same(got, w)
    assert torch.equal(dequantize(got), dequantize(w))


# ---- loading through vLLM's parameter classes and weight loaders -----------------

@pytest.mark.parametrize("tp_size", [1, 2])
@pytest.mark.parametrize("group_size,sym,act_order", [(128, True, False), (64, False, False), (32, False, True),
                                                      (-1, True, False), (128, True, True)])
def test_load_qkv(group_size, sym, act_order, tp_size):
    K = 256
    fmt = gptq(group_size, sym, act_order)
    g_idx = act_order_g_idx(K, group_size, torch.Generator().manual_seed(1)) if act_order else None
    shards = {s: rtn(n, K, group_size, sym, act_order, seed=i, g_idx=g_idx)
              for i, (s, n) in enumerate(QKV_SHARDS)}
    assert_qkv_loads(fmt, shards, K, tp_size)


@pytest.mark.parametrize("group_size,sym,act_order", [(128, False, False), (32, True, True)])
def test_load_gate_up_tp2(group_size, sym, act_order):
    K, N = 256, 384
    fmt = gptq(group_size, sym, act_order)
    g_idx = act_order_g_idx(K, group_size, torch.Generator().manual_seed(1)) if act_order else None
    shards = [rtn(N, K, group_size, sym, act_order, seed=i, g_idx=g_idx) for i in range(2)]
    for rank in range(2):
        layer = make_layer("gate_up", fmt, K, N, tp_rank=rank, tp_size=2)
        for i, w in enumerate(shards):
            load(layer, GPTQFormat.pack(w, layer.scheme), shard_id=i)
        assert_same(canonical(layer, fmt), concat_columns([column_slice(w, rank, 2) for w in shards]))


def test_column_parallel_tp2_is_n_half():
    K, N = 256, 256
    fmt = gptq(64, sym=False)
    w = rtn(N, K, 64, sym=False)
    for rank in range(2):
        layer = make_layer("column", fmt, K, N, tp_rank=rank, tp_size=2)
        load(layer, GPTQFormat.pack(w, layer.scheme))
        got = canonical(layer, fmt)
        assert_same(got, column_slice(w, rank, 2))
        assert torch.equal(dequantize(got), dequantize(w)[:, rank * 128:(rank + 1) * 128])


@pytest.mark.parametrize("group_size,sym", [(128, True), (32, False), (-1, False), (-1, True)])
def test_row_parallel_tp2_is_k_half(group_size, sym):
    K, N = 512, 128
    fmt = gptq(group_size, sym)
    w = rtn(N, K, group_size, sym)
    for rank in range(2):
        layer = make_layer("row", fmt, K, N, tp_rank=rank, tp_size=2)
        load(layer, GPTQFormat.pack(w, layer.scheme))
        got = canonical(layer, fmt)
        assert_same(got, row_slice(w, rank, 2, replicated_scales=group_size == -1))
        assert torch.equal(dequantize(got), dequantize(w)[rank * 256:(rank + 1) * 256])


def test_row_parallel_act_order_keeps_full_table_and_global_g_idx():
    K, N, g = 512, 128, 128
    fmt = gptq(g, sym=False, desc_act=True)
    w = rtn(N, K, g, sym=False, act_order=True)
    for rank in range(2):
        layer = make_layer("row", fmt, K, N, tp_rank=rank, tp_size=2)
        assert type(layer.scales).__name__ == "ChannelQuantScaleParameter"
        assert tuple(layer.scales.shape) == (K // g, N)
        load(layer, GPTQFormat.pack(w, layer.scheme))
        got = canonical(layer, fmt)
        assert_same(got, row_slice(w, rank, 2, replicated_scales=True))
        assert torch.equal(dequantize(got), dequantize(w)[rank * 256:(rank + 1) * 256])


# ---- layer selection ----------------------------------------------------------------

def test_dynamic_negative_rule_skips_layer():
    fmt = gptq(dynamic={r"-:.*\.mlp\..*": {}})
    assert fmt.scheme_for("model.layers.0.mlp.gate_up_proj", MAPPING) is None
    assert fmt.scheme_for(DOWN, MAPPING) is None
    assert fmt.scheme_for("model.layers.0.self_attn.qkv_proj", MAPPING) == LayerScheme(4, 128, True, False)


def test_dynamic_positive_rule_overrides_scheme():
    fmt = gptq(dynamic={r"+:.*down_proj": {"group_size": 32, "sym": False}})
    assert fmt.scheme_for(DOWN, MAPPING) == LayerScheme(4, 32, False, False)
    assert fmt.scheme_for("model.layers.0.self_attn.o_proj", MAPPING) == LayerScheme(4, 128, True, False)


def test_dynamic_rule_splitting_fused_layer_is_refused():
    fmt = gptq(dynamic={r"-:.*\.q_proj": {}})
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.self_attn\.qkv_proj.*q_proj.*unquantized"):
        fmt.scheme_for("model.layers.0.self_attn.qkv_proj", MAPPING)


def test_dynamic_positive_rule_with_8_bits_is_refused():
    fmt = gptq(dynamic={r"+:.*down_proj": {"bits": 8}})
    with pytest.raises(CheckpointError, match=r"down_proj.*bits=8 is not supported"):
        fmt.scheme_for(DOWN, MAPPING)


def test_modules_in_block_to_quantize():
    fmt = gptq(modules_in_block_to_quantize=[["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                                             ["mlp.down_proj"]])
    assert fmt.scheme_for("model.layers.0.self_attn.qkv_proj", MAPPING) is not None
    assert fmt.scheme_for(DOWN, MAPPING) is not None
    assert fmt.scheme_for("model.layers.0.mlp.gate_up_proj", MAPPING) is None
    assert fmt.scheme_for("model.layers.0.self_attn.o_proj", MAPPING) is None


def test_format_for_normalises_quant_method():
    assert isinstance(format_for({"quant_method": "GPTQ", "bits": 4, "group_size": 128}), GPTQFormat)
    with pytest.raises(CheckpointError, match=r"'fp8' is not supported; supported formats: gptq, awq, compressed-tensors"):
        format_for({"quant_method": "fp8"})


# ---- bad inputs ---------------------------------------------------------------------

@pytest.mark.parametrize("bits", [3, 8])
def test_bits_other_than_4_are_refused(bits):
    with pytest.raises(CheckpointError, match=rf"bits={bits} is not supported.*4-bit.*(3-bit and 8-bit).*kernels"):
        gptq(bits=bits)


def test_lm_head_quantized_is_refused():
    with pytest.raises(CheckpointError, match=r"lm_head=true.*not supported.*Fix: .*lm_head=false"):
        gptq(lm_head=True)


def test_unknown_checkpoint_format_is_refused():
    with pytest.raises(CheckpointError, match=r"checkpoint_format='marlin' is not supported.*gptq_v2"):
        gptq(checkpoint_format="marlin")


def test_legacy_marlin_flag_is_refused_with_the_fix():
    """AutoGPTQ's older quantize_config.json says is_marlin_format=true instead (no checkpoint_format)."""
    with pytest.raises(CheckpointError, match=r"checkpoint_format='marlin' is not supported.*is_marlin_format=true.*"
                                              r"serve the GPTQ checkpoint they were converted from"):
        GPTQFormat({"quant_method": "gptq", "bits": 4, "group_size": 128, "is_marlin_format": True})


def test_group_size_not_dividing_k():
    with pytest.raises(CheckpointError, match=r"mlp\.down_proj: group_size=128 does not divide the layer's K=320"):
        make_layer("row", gptq(128), 320, 128)


def test_grouped_row_parallel_split_straddling_a_group():
    with pytest.raises(CheckpointError, match=r"mlp\.down_proj: K=384 split over tensor_parallel_size=2 gives "
                                              r"K=192 per rank.*not a multiple of group_size=128.*"
                                              r"Fix: use a tensor_parallel_size.*\[1\]"):
        make_layer("row", gptq(128), 384, 128, tp_rank=0, tp_size=2)


def test_act_order_split_straddling_groups_is_regrouped():
    """Act-order on a split K loads (full table, global ids); its groups straddle the
    ranks, so sorting regroups each group's rows into 32-row groups padded with zeros."""
    K, N, g = 512, 128, 128
    fmt = gptq(g, sym=True, desc_act=True)
    w = rtn(N, K, g, sym=True, act_order=True)
    layer = make_layer("row", fmt, K, N, tp_rank=1, tp_size=2)
    load(layer, GPTQFormat.pack(w, layer.scheme))
    ws = assert_act_order_resolves(canonical(layer, fmt), layer.prefix)
    assert ws.group_size == REGROUP_ROWS and K // 2 < ws.k <= K


def test_missing_qzeros_for_asymmetric():
    assert_missing_tensor(gptq(128, sym=False), rtn(128, 256, 128, False), "qzeros",
                          r"mlp\.down_proj: tensor 'qzeros' \(qzeros int32 \[G, N/8\].*"
                          r"never loaded.*lacks 'model\.layers\.0\.mlp\.down_proj\.qzeros'")


def test_missing_scales():
    assert_missing_tensor(gptq(128), rtn(128, 256, 128, True), "scales",
                          r"down_proj: tensor 'scales'.*never loaded")


def test_missing_shard_of_fused_layer():
    fmt = gptq(128, sym=False)
    layer = make_layer("qkv", fmt, 256, (4, 2, 64))
    for s, n in [("q", 256), ("k", 128), ("v", 128)]:
        load(layer, GPTQFormat.pack(rtn(n, 256, 128, False), layer.scheme), shard_id=s,
             skip={"qzeros"} if s == "v" else ())
    with pytest.raises(CheckpointError, match=r"qkv_proj: tensor 'qzeros'.*never loaded.*shards loaded: \['k', 'q'\] of 3"):
        canonical(layer, fmt)


def test_missing_g_idx_with_act_order():
    assert_missing_tensor(gptq(128, desc_act=True), rtn(128, 256, 128, True, True), "g_idx",
                          r"down_proj: tensor 'g_idx'.*never loaded.*needs g_idx when desc_act=true")


def test_scales_float32_are_refused():
    fmt = gptq(128)
    layer = make_layer("row", fmt, 256, 128)
    tensors = GPTQFormat.pack(rtn(128, 256, 128, True), layer.scheme)
    with pytest.raises(CheckpointError, match=r"down_proj: checkpoint tensor 'scales' has dtype float32, "
                                              r"expected float16/bfloat16"):
        load(layer, {"scales": tensors["scales"].float()})


def test_qweight_int16_is_refused():
    fmt = gptq(128)
    layer = make_layer("row", fmt, 256, 128)
    tensors = GPTQFormat.pack(rtn(128, 256, 128, True), layer.scheme)
    with pytest.raises(CheckpointError, match=r"down_proj: checkpoint tensor 'qweight' has dtype int16, expected int32"):
        load(layer, {"qweight": tensors["qweight"].to(torch.int16)})


def test_qweight_of_wrong_shape_is_refused():
    fmt = gptq(128)
    layer = make_layer("row", fmt, 256, 128)
    wrong = GPTQFormat.pack(rtn(128, 128, 128, True), layer.scheme)["qweight"]
    with pytest.raises(CheckpointError, match=r"down_proj: checkpoint tensor 'qweight' has shape \(16, 128\), which "
                                              r"does not fit this rank's parameter of shape \(32, 128\)"):
        load(layer, {"qweight": wrong})


def test_sym_config_with_asymmetric_zeros_is_refused():
    fmt = gptq(128, sym=True)
    w = rtn(128, 256, 128, sym=False)
    tensors = GPTQFormat.pack(w, LayerScheme(4, 128, False, False))
    with pytest.raises(CheckpointError, match=r"down_proj: quantization_config says sym=true, but 'qzeros' hold"):
        fmt.to_canonical(bare_layer(tensors), fmt.scheme_for(DOWN, MAPPING), whole(256, 128), DOWN)


def test_permuted_g_idx_without_desc_act_is_refused():
    w = rtn(128, 256, 32, sym=True, act_order=True)
    tensors = GPTQFormat.pack(w, LayerScheme(4, 32, True, True))
    fmt = gptq(32, sym=True, desc_act=False)
    with pytest.raises(CheckpointError, match=r"down_proj: 'g_idx' is not k // group_size.*Fix: set desc_act=true"):
        fmt.to_canonical(bare_layer(tensors), fmt.scheme_for(DOWN, MAPPING), whole(256, 128), DOWN)


def test_fused_shards_with_different_g_idx_are_refused():
    fmt = gptq(64, desc_act=True)
    layer = make_layer("qkv", fmt, 256, (4, 2, 64))
    load(layer, GPTQFormat.pack(rtn(256, 256, 64, True, True, seed=0), layer.scheme), shard_id="q")
    with pytest.raises(CheckpointError, match=r"qkv_proj: the fused shards carry different 'g_idx'"):
        load(layer, GPTQFormat.pack(rtn(128, 256, 64, True, True, seed=1), layer.scheme), shard_id="k")


@pytest.mark.parametrize("checkpoint_format", ["gptq", "gptq_v2"])
def test_dummy_fill_gives_symmetric_zeros(checkpoint_format):
    """load_format="dummy": random int32 words everywhere, then fill_dummy makes the
    symmetric qzeros valid for this checkpoint_format's encoding."""
    fmt = gptq(64, sym=True, desc_act=True, checkpoint_format=checkpoint_format)
    layer = make_layer("row", fmt, 256, 128)
    names = ("qweight", "g_idx", "scales", "qzeros")
    for name in names:
        p = getattr(layer, name)
        p.data.copy_(torch.randint(-2 ** 31, 2 ** 31 - 1, p.shape).to(p.dtype) if not p.dtype.is_floating_point
                     else torch.rand(p.shape).to(p.dtype))
    fmt.fill_dummy(layer, layer.scheme, layer.part, names)
    w = canonical(layer, fmt)
    assert w.zeros is None and sorted(w.g_idx.tolist()) == [k // 64 for k in range(256)]


def test_format_is_picklable():
    """The format travels inside vLLM's quant config to engine and worker processes."""
    import pickle
    fmt = gptq(64, sym=False, checkpoint_format="gptq_v2", dynamic={r"-:.*o_proj": {}},
               modules_in_block_to_quantize=[["mlp.down_proj"]])
    back = pickle.loads(pickle.dumps(fmt))
    assert back.version == 2 and back.scheme_for(DOWN, MAPPING) == fmt.scheme_for(DOWN, MAPPING)
    assert back.scheme_for("model.layers.0.self_attn.o_proj", MAPPING) is None


def test_unlisted_fp16_modules_are_found_in_the_safetensors_headers(tmp_path):
    """A GPTQ checkpoint that leaves layer 1's down_proj in fp16 without listing
    modules_in_block_to_quantize: maybe_update_config reads the headers and that layer
    stays unquantized, the others quantized (vLLM's built-in GPTQ does the same)."""
    import json

    from safetensors.torch import load_file, save_file

    from vllm_machete_plugin.config import MacheteConfig
    from vllm_machete_plugin.testing import build_tiny_checkpoint
    path = build_tiny_checkpoint(tmp_path / "m", "gptq")
    tensors = load_file(str(path / "model.safetensors"))
    fp16 = "model.layers.1.mlp.down_proj"
    for key in [k for k in tensors if k.startswith(fp16 + ".")]:
        del tensors[key]
    tensors[fp16 + ".weight"] = torch.zeros(256, 768, dtype=torch.float16)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = MacheteConfig(json.loads((path / "config.json").read_text())["quantization_config"])
    assert config.fmt.scheme_for(fp16, MAPPING) is not None  # before: everything is quantized
    config.maybe_update_config(str(path))
    assert config.fmt.scheme_for(fp16, MAPPING) is None
    assert config.fmt.scheme_for("model.layers.0.mlp.down_proj", MAPPING) is not None
    assert config.fmt.scheme_for("model.layers.1.mlp.gate_up_proj", MAPPING) is not None
    with pytest.raises(CheckpointError, match=r"model\.layers\.11\.mlp\.down_proj: the checkpoint has no tensors"):
        config.fmt.scheme_for("model.layers.11.mlp.down_proj", MAPPING)  # neither quantized nor fp16: missing


def test_scanned_modules_follow_vllms_name_mapper(tmp_path):
    """vLLM's model may rename checkpoint modules (its hf_to_vllm_mapper, e.g. a vision-language
    model's language_model prefix): the scan's names are renamed the same way, so layers are
    matched under vLLM's names, not refused as missing."""
    import json

    from vllm.model_executor.models.utils import WeightsMapper

    from vllm_machete_plugin.config import MacheteConfig
    from vllm_machete_plugin.testing import build_tiny_checkpoint
    path = build_tiny_checkpoint(tmp_path / "m", "gptq")
    config = MacheteConfig(json.loads((path / "config.json").read_text())["quantization_config"])
    config.maybe_update_config(str(path))
    config.apply_vllm_mapper(WeightsMapper(orig_to_new_prefix={"model.": "language_model.model."}))
    assert config.fmt.scheme_for("language_model.model.layers.0.mlp.down_proj", MAPPING) is not None
    with pytest.raises(CheckpointError, match="the checkpoint has no tensors for model.layers.0.mlp.down_proj"):
        config.fmt.scheme_for("model.layers.0.mlp.down_proj", MAPPING)


def test_listed_modules_and_dummy_checkpoints_are_left_alone(tmp_path):
    from vllm_machete_plugin.config import MacheteConfig
    raw = {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False}
    config = MacheteConfig({**raw, "modules_in_block_to_quantize": [["mlp.down_proj"]]})
    config.maybe_update_config(str(tmp_path))  # no safetensors at all: nothing learned
    assert config.fmt.modules_in_block == ["mlp.down_proj"]
    config = MacheteConfig(raw)
    config.maybe_update_config(str(tmp_path))
    assert config.fmt.modules_in_block == []
    assert config.fmt.scheme_for("model.layers.0.self_attn.qkv_proj", MAPPING) is not None
