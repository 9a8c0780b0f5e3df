"""compressed-tensors pack-quantized W4A16: exact unpacking of hand-packed tensors,
cross-checks against the installed compressed_tensors library's own packer, round trips,
loading through vLLM's parameter classes, layer targeting, and unsupported schemes."""
import pytest
import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

from ckpt_harness import (MAPPING, QKV_SHARDS, assert_act_order_resolves, assert_missing_tensor,
                          assert_qkv_loads, assert_same, bare_layer, canonical, column_slice,
                          concat_columns, load, make_layer, nibble_word, row_slice, whole)
from vllm_machete_plugin.act_order import REGROUP_ROWS
from vllm_machete_plugin.canonical import dequantize
from vllm_machete_plugin.checkpoints import CheckpointError, CompressedTensorsFormat, format_for
from vllm_machete_plugin.checkpoints.base import LayerScheme
from vllm_machete_plugin.testing import quantize_rtn
from vllm_machete_plugin.testing.quantize import act_order_g_idx

DOWN = "model.layers.0.mlp.down_proj"
QKV = "model.layers.0.self_attn.qkv_proj"


def weights(strategy="group", group_size=128, symmetric=True, actorder=None, **extra):
    return {"num_bits": 4, "type": "int", "symmetric": symmetric, "strategy": strategy,
            "group_size": group_size if strategy == "group" else None, "dynamic": False, "actorder": actorder, **extra}


def ct_config(groups=None, ignore=("lm_head",), **extra):
    groups = groups or {"group_0": {"targets": ["Linear"], "weights": weights(), "input_activations": None}}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": groups, "ignore": list(ignore), **extra}


def ct(group_size=128, sym=True, act_order=False):
    channel = group_size == -1
    w = weights("channel" if channel else "group", None if channel else group_size, sym, "group" if act_order else None)
    return CompressedTensorsFormat(ct_config({"group_0": {"targets": ["Linear"], "weights": w}}))


def rtn(n, k, group_size, sym, act_order=False, dtype=torch.float16, seed=0, g_idx=None):
    gen = torch.Generator().manual_seed(seed)
    return quantize_rtn(torch.randn(n, k, generator=gen), group_size, sym, act_order, dtype, gen, g_idx=g_idx)


def ct_scheme(w_scheme: LayerScheme) -> QuantizationScheme:
    channel = w_scheme.group_size == -1
    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=w_scheme.sym, strategy="channel" if channel else "group",
        group_size=None if channel else w_scheme.group_size, actorder="group" if w_scheme.act_order else None))


# ---- exact unpacking of hand-packed tensors --------------------------------------

@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group_size", [-1, 32, 64, 128])
def test_unpack_hand_packed(group_size, sym, act_order):
    K, N = 256, 16
    g = K if group_size == -1 else group_size
    G = K // g
    act_order = act_order and group_size != -1
    g_idx = [k // g for k in range(K)]
    if act_order:
        perm = torch.randperm(K, generator=torch.Generator().manual_seed(5)).tolist()
        for i, row in enumerate(perm):
            g_idx[row] = i // g
    q_signed = [[(7 * k + 3 * n + k // 5) % 16 - 8 for n in range(N)] for k in range(K)]  # [K][N], -8..7
    zp_signed = [[(5 * i + 11 * n + 1) % 16 - 8 for n in range(N)] for i in range(G)]      # [G][N]
    s = [[(1 + (i * N + n) % 7) / 128 for n in range(N)] for i in range(G)]
    # On disk: value + 8; weight_packed [N, K/8] along K, weight_zero_point [N/8, G] along N.
    tensors = {
        "weight_packed": torch.tensor([[nibble_word([q_signed[8 * c + j][n] + 8 for j in range(8)])
                                        for c in range(K // 8)] for n in range(N)], dtype=torch.int32),
        "weight_scale": torch.tensor([[s[i][n] for i in range(G)] for n in range(N)], dtype=torch.float16),
    }
    if not sym:
        tensors["weight_zero_point"] = torch.tensor(
            [[nibble_word([zp_signed[i][8 * r + j] + 8 for j in range(8)]) for i in range(G)] for r in range(N // 8)],
            dtype=torch.int32)
    if act_order:
        tensors["weight_g_idx"] = torch.tensor(g_idx, dtype=torch.int32)
    tensors["weight_shape"] = torch.tensor([N, K])
    fmt = ct(group_size, sym, act_order)
    scheme = fmt.scheme_for(DOWN, MAPPING)
    assert scheme == LayerScheme(4, group_size, sym, act_order)
    w = fmt.to_canonical(bare_layer(tensors), scheme, whole(K, N), DOWN)
    assert w.codes.tolist() == [[v + 8 for v in row] for row in q_signed]
    assert w.scales.tolist() == s
    assert w.zeros is None if sym else w.zeros.tolist() == [[v + 8 for v in row] for row in zp_signed]
    assert (w.g_idx.tolist() if act_order else None) == (g_idx if act_order else None)
    deq = dequantize(w)
    for k in range(0, K, 31):
        for n in range(N):
            zp = 0 if sym else zp_signed[g_idx[k]][n]
            assert deq[k, n].item() == s[g_idx[k]][n] * (q_signed[k][n] - zp)  # compressed-tensors' formula
    packed = CompressedTensorsFormat.pack(w, scheme)
    assert list(packed) == list(tensors)
    for name, t in tensors.items():
        assert packed[name].dtype == t.dtype and torch.equal(packed[name], t), name


# ---- cross-checks against the compressed_tensors library ---------------------------

@pytest.mark.parametrize("group_size,sym,act_order", [(128, True, False), (32, False, False), (-1, False, False),
                                                      (-1, True, False), (64, False, True), (128, True, True)])
def test_pack_matches_compressed_tensors_library(group_size, sym, act_order):
    N, K = 64, 256
    scheme = LayerScheme(4, group_size, sym, act_order)
    w = rtn(N, K, group_size, sym, act_order)
    ours = CompressedTensorsFormat.pack(w, scheme)
    # The library's bit packer on signed int8 values.
    assert torch.equal(ours["weight_packed"], pack_to_int32((w.codes.t().to(torch.int8) - 8).contiguous(), 4))
    if not sym:
        assert torch.equal(ours["weight_zero_point"],
                           pack_to_int32((w.zeros.t().to(torch.int8) - 8).contiguous(), 4, packed_dim=0))
    # The library's whole-module compressor, fed the exactly representable dequantized weight.
    state = {"weight": dequantize(w).t().contiguous(), "weight_scale": w.scales.t().contiguous()}
    if not sym:
        state["weight_zero_point"] = (w.zeros.t().to(torch.int8) - 8).contiguous()
    if act_order:
        state["weight_g_idx"] = w.g_idx
    theirs = PackedQuantizationCompressor.compress(state, ct_scheme(scheme))
    assert set(theirs) == set(ours)
    for name in ours:
        assert theirs[name].dtype == ours[name].dtype and torch.equal(theirs[name], ours[name]), name
    # ...and its decompressor reads what we write back to the same weight (it dequantizes
    # in the scale dtype: one rounding of the exact product, as dequantize(w, fp16) does).
    back = PackedQuantizationCompressor.decompress(dict(ours), ct_scheme(scheme))
    assert back["weight"].dtype == torch.float16
    assert torch.equal(back["weight"], dequantize(w, torch.float16).t())


@pytest.mark.parametrize("group_size,sym,act_order", [(128, False, True), (-1, True, False)])
def test_quantization_config_parses_with_compressed_tensors(group_size, sym, act_order):
    raw = CompressedTensorsFormat.quantization_config(LayerScheme(4, group_size, sym, act_order))
    parsed = QuantizationConfig.model_validate(raw)
    args = parsed.config_groups["group_0"].weights
    assert (args.num_bits, args.symmetric, args.strategy) == (4, sym, "channel" if group_size == -1 else "group")
    assert args.actorder == ("group" if act_order else None)
    assert format_for(raw).scheme_for(DOWN, MAPPING) == LayerScheme(4, group_size, sym, act_order)


# ---- round trip -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group_size", [-1, 32, 64, 128])
def test_round_trip(group_size, sym, act_order, dtype):
    N, K = 64, 256
    fmt = ct(group_size, sym, act_order)
    scheme = fmt.scheme_for(DOWN, MAPPING)
    w = rtn(N, K, group_size, sym, scheme.act_order, dtype)
    packed = CompressedTensorsFormat.pack(w, scheme)
    assert packed["weight_scale"].dtype == dtype  # the model dtype, as llm-compressor writes it
    got = fmt.to_canonical(bare_layer(packed), scheme, whole(K, N), DOWN)
    assert_same(got, w)
    assert got.scales.dtype == dtype
    assert torch.equal(dequantize(got), dequantize(w))


def test_actorder_weight_has_no_g_idx():
    fmt = CompressedTensorsFormat(ct_config({"g": {"targets": ["Linear"], "weights": weights(actorder="weight")}}))
    scheme = fmt.scheme_for(DOWN, MAPPING)
    assert scheme == LayerScheme(4, 128, True, False)
    assert "weight_g_idx" not in CompressedTensorsFormat.pack(rtn(64, 256, 128, True), scheme)


# ---- loading through vLLM's parameter classes ----------------------------------------

@pytest.mark.parametrize("tp_size", [1, 2])
@pytest.mark.parametrize("group_size,sym,act_order", [(128, True, False), (64, False, False), (32, False, True),
                                                      (-1, False, False)])
def test_load_qkv(group_size, sym, act_order, tp_size):
    K = 256
    fmt = ct(group_size, sym, act_order)
    g_idx = act_order_g_idx(K, group_size, torch.Generator().manual_seed(1)) if act_order else None
    shards = {s: rtn(n, K, group_size, sym, act_order, seed=i, g_idx=g_idx)
              for i, (s, n) in enumerate(QKV_SHARDS)}
    assert_qkv_loads(fmt, shards, K, tp_size)


def test_load_gate_up_tp2_asym():
    K, N = 256, 384
    fmt = ct(128, sym=False)
    shards = [rtn(N, K, 128, False, seed=i) for i in range(2)]
    for rank in range(2):
        layer = make_layer("gate_up", fmt, K, N, tp_rank=rank, tp_size=2)
        for i, w in enumerate(shards):
            load(layer, CompressedTensorsFormat.pack(w, layer.scheme), shard_id=i)
        assert_same(canonical(layer, fmt), concat_columns([column_slice(w, rank, 2) for w in shards]))


def test_column_parallel_tp2_is_n_half():
    fmt = ct(64, sym=False)
    w = rtn(256, 256, 64, False)
    for rank in range(2):
        layer = make_layer("column", fmt, 256, 256, tp_rank=rank, tp_size=2)
        load(layer, CompressedTensorsFormat.pack(w, layer.scheme))
        got = canonical(layer, fmt)
        assert_same(got, column_slice(w, rank, 2))
        assert torch.equal(dequantize(got), dequantize(w)[:, rank * 128:(rank + 1) * 128])


@pytest.mark.parametrize("group_size,sym,act_order", [(128, True, False), (32, False, False), (-1, False, False),
                                                      (128, False, True)])
def test_row_parallel_tp2_is_k_half(group_size, sym, act_order):
    K, N = 512, 128
    fmt = ct(group_size, sym, act_order)
    w = rtn(N, K, group_size, sym, act_order)
    for rank in range(2):
        layer = make_layer("row", fmt, K, N, tp_rank=rank, tp_size=2)
        replicated = act_order or group_size == -1
        assert type(layer.weight_scale).__name__ == ("ChannelQuantScaleParameter" if replicated
                                                     else "GroupQuantScaleParameter")
        load(layer, CompressedTensorsFormat.pack(w, layer.scheme))
        got = canonical(layer, fmt)
        assert_same(got, row_slice(w, rank, 2, replicated_scales=replicated))
        assert torch.equal(dequantize(got), dequantize(w)[rank * 256:(rank + 1) * 256])


# ---- layer targeting ----------------------------------------------------------------

def test_ignore_list_with_regex_and_names():
    fmt = CompressedTensorsFormat(ct_config(ignore=["lm_head", "re:.*layers\\.1\\..*", "model.layers.0.mlp.down_proj"]))
    assert fmt.scheme_for(DOWN, MAPPING) is None
    assert fmt.scheme_for("model.layers.1.self_attn.qkv_proj", MAPPING) is None
    assert fmt.scheme_for(QKV, MAPPING) == LayerScheme(4, 128, True, False)


def test_ignore_of_one_shard_of_a_fused_layer_is_refused():
    fmt = CompressedTensorsFormat(ct_config(ignore=["model.layers.0.self_attn.k_proj"]))
    with pytest.raises(CheckpointError, match=r"qkv_proj: vLLM fuses .*k_proj: unquantized"):
        fmt.scheme_for(QKV, MAPPING)


def test_targets_by_name_and_regex():
    groups = {"attn": {"targets": ["re:.*self_attn\\.(q|k|v)_proj$"], "weights": weights(group_size=64)},
              "mlp": {"targets": ["model.layers.0.mlp.down_proj"], "weights": weights("channel", symmetric=False)}}
    fmt = CompressedTensorsFormat(ct_config(groups))
    assert fmt.scheme_for(QKV, MAPPING) == LayerScheme(4, 64, True, False)
    assert fmt.scheme_for(DOWN, MAPPING) == LayerScheme(4, -1, False, False)
    assert fmt.scheme_for("model.layers.0.self_attn.o_proj", MAPPING) is None


def test_several_groups_with_different_schemes_for_one_layer_are_refused():
    groups = {"a": {"targets": ["Linear"], "weights": weights(group_size=128)},
              "b": {"targets": ["re:.*down_proj"], "weights": weights(group_size=32)}}
    fmt = CompressedTensorsFormat(ct_config(groups))
    with pytest.raises(CheckpointError, match=r"down_proj: several config_groups \['a', 'b'\] target this layer "
                                              r"with different schemes"):
        fmt.scheme_for(DOWN, MAPPING)


def test_quant_method_spelling_is_normalised():
    raw = ct_config()
    raw["quant_method"] = "compressed_tensors"
    assert isinstance(format_for(raw), CompressedTensorsFormat)


# ---- unsupported schemes and bad tensors ----------------------------------------------

W8A8 = {"targets": ["Linear"], "format": "int-quantized",
        "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False},
        "input_activations": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}}


@pytest.mark.parametrize("group,expected", [
    (W8A8, r"format 'int-quantized'; input_activations.*; weights\.num_bits 8"),
    ({"targets": ["Linear"], "weights": weights(), "input_activations": W8A8["input_activations"]},
     r"input_activations \(activation quantization, e\.g\. W8A8 / W4A8\)\."),
    ({"targets": ["Linear"], "format": "float-quantized",
      "weights": {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False}},
     r"format 'float-quantized'; weights\.type 'float' \(floating-point weights\); weights\.num_bits 8; "
     r"weights\.strategy 'tensor'"),
    ({"targets": ["Linear"], "weights": weights(num_bits=8)}, r"weights\.num_bits 8\."),
    ({"targets": ["Linear"], "weights": weights(strategy="block", block_structure=[128, 128])},
     r"weights\.strategy 'block'"),
    ({"targets": ["Linear"], "weights": weights(dynamic=True)}, r"weights\.dynamic True \(weights quantized at runtime\)"),
    ({"targets": ["Linear"], "weights": weights(group_size=256)}, r"weights\.group_size 256"),
])
def test_non_w4a16_scheme_is_refused(group, expected):
    with pytest.raises(CheckpointError, match=r"config_groups\['g'\]: unsupported " + expected + r".*We support W4A16 only: "
                                              r"format 'pack-quantized'"):
        CompressedTensorsFormat(ct_config({"g": group}))


def test_global_format_other_than_pack_quantized_is_refused():
    raw = ct_config(format="naive-quantized")
    with pytest.raises(CheckpointError, match=r"unsupported format 'naive-quantized'"):
        format_for(raw)


def test_kv_cache_scheme_is_refused():
    with pytest.raises(CheckpointError, match=r"kv_cache_scheme \(a quantized KV cache\) is not supported"):
        CompressedTensorsFormat(ct_config(kv_cache_scheme={"num_bits": 8, "type": "float"}))


def test_missing_zero_point_for_asymmetric():
    assert_missing_tensor(ct(128, sym=False), rtn(128, 256, 128, False), "weight_zero_point",
                          r"mlp\.down_proj: tensor 'weight_zero_point'.*never loaded.*"
                          r"Fix: symmetric: false needs weight_zero_point")


def test_missing_scale():
    assert_missing_tensor(ct(128), rtn(128, 256, 128, True), "weight_scale",
                          r"mlp\.down_proj: tensor 'weight_scale'.*never loaded")


def test_missing_g_idx_for_actorder_group():
    assert_missing_tensor(ct(64, act_order=True), rtn(128, 256, 64, True, True), "weight_g_idx",
                          r"down_proj: tensor 'weight_g_idx'.*never loaded.*actorder: weight")


def test_scale_float32_is_refused():
    fmt = ct(128)
    layer = make_layer("row", fmt, 256, 128)
    scale = CompressedTensorsFormat.pack(rtn(128, 256, 128, True), layer.scheme)["weight_scale"].float()
    with pytest.raises(CheckpointError, match=r"down_proj: checkpoint tensor 'weight_scale' has dtype float32"):
        load(layer, {"weight_scale": scale})


def test_weight_shape_mismatch_is_refused():
    fmt = ct(128)
    packed = CompressedTensorsFormat.pack(rtn(128, 256, 128, True), LayerScheme(4, 128, True, False))
    packed["weight_shape"] = torch.tensor([128, 512])
    with pytest.raises(CheckpointError, match=r"down_proj: weight_shape is \[128, 512\], but the layer is \[N, K\] = \[128, 256\]"):
        fmt.to_canonical(bare_layer(packed), fmt.scheme_for(DOWN, MAPPING), whole(256, 128), DOWN)


def test_act_order_row_split_straddling_groups():
    K, N = 512, 128
    fmt = ct(128, act_order=True)
    w = rtn(N, K, 128, True, True)
    layer = make_layer("row", fmt, K, N, tp_rank=0, tp_size=2)
    load(layer, CompressedTensorsFormat.pack(w, layer.scheme))
    ws = assert_act_order_resolves(canonical(layer, fmt), layer.prefix)
    assert ws.group_size == REGROUP_ROWS and K // 2 < ws.k <= K


def test_k_per_rank_not_multiple_of_8():
    with pytest.raises(CheckpointError, match=r"down_proj: K per rank = 36 \(K=72, tensor_parallel_size=2\) is not "
                                              r"a multiple of 8"):
        make_layer("row", ct(-1), 72, 128, tp_rank=0, tp_size=2)


def test_format_is_picklable():
    import pickle
    fmt = CompressedTensorsFormat(ct_config(ignore=["lm_head", "re:.*down_proj"]))
    back = pickle.loads(pickle.dumps(fmt))
    assert back.scheme_for(DOWN, MAPPING) is None
    assert back.scheme_for(QKV, MAPPING) == fmt.scheme_for(QKV, MAPPING) == LayerScheme(4, 128, True, False)
