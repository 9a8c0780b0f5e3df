"""AWQ (GEMM) checkpoint format: exact unpacking of hand-packed tensors in AWQ's nibble
order, pack round trips, loading through vLLM's parameter classes, and bad inputs."""
import pytest
import torch

from ckpt_harness import (MAPPING, QKV_SHARDS, assert_missing_tensor, assert_qkv_loads, assert_same,
                          bare_layer, canonical, column_slice, concat_columns, load, make_layer,
                          nibble_word, row_slice, whole)
from vllm_machete_plugin.canonical import dequantize
from vllm_machete_plugin.checkpoints import AWQFormat, CheckpointError, format_for
from vllm_machete_plugin.checkpoints.base import LayerScheme
from vllm_machete_plugin.testing import quantize_rtn

DOWN = "model.layers.0.mlp.down_proj"
ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble slot j holds column 8c + ORDER[j]


def awq(group_size=128, **extra):
    return AWQFormat({"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
                      "version": "gemm", "modules_to_not_convert": None, **extra})


def rtn(n, k, group_size, sym=False, dtype=torch.float16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return quantize_rtn(torch.randn(n, k, generator=gen), group_size, sym, False, dtype, gen)


def awq_word(values8):
    return nibble_word([values8[ORDER[j]] for j in range(8)])


@pytest.mark.parametrize("group_size", [-1, 32, 64, 128])
def test_unpack_hand_packed(group_size):
    K, N = 256, 32
    g = K if group_size == -1 else group_size
    G = K // g
    q = [[(7 * k + 3 * n + k // 5) % 16 for n in range(N)] for k in range(K)]
    z = [[(5 * i + 11 * n + 1) % 16 for n in range(N)] for i in range(G)]
    s = [[(1 + (i * N + n) % 7) / 128 for n in range(N)] for i in range(G)]
    tensors = {
        "qweight": torch.tensor([[awq_word(row[8 * c:8 * c + 8]) for c in range(N // 8)] for row in q], dtype=torch.int32),
        "qzeros": torch.tensor([[awq_word(row[8 * c:8 * c + 8]) for c in range(N // 8)] for row in z], dtype=torch.int32),
        "scales": torch.tensor(s, dtype=torch.float16),
    }
    fmt = awq(group_size)
    scheme = fmt.scheme_for(DOWN, MAPPING)
    assert scheme == LayerScheme(4, group_size, False, False)
    w = fmt.to_canonical(bare_layer(tensors), scheme, whole(K, N), DOWN)
    assert w.codes.tolist() == q and w.zeros.tolist() == z and w.scales.tolist() == s
    assert w.group_size == g and w.g_idx is None
    deq = dequantize(w)
    for k in range(0, K, 29):
        for n in range(N):
            assert deq[k, n].item() == s[k // g][n] * (q[k][n] - z[k // g][n])
    packed = AWQFormat.pack(w, scheme)
    assert list(packed) == ["qweight", "qzeros", "scales"]
    for name, t in tensors.items():
        assert packed[name].dtype == t.dtype and torch.equal(packed[name], t), name


def test_awq_order_of_one_word():
    """Columns 0..7 with values 0..7: slots hold [0,2,4,6,1,3,5,7] -> 0x75316420."""
    codes = torch.arange(8, dtype=torch.uint8).repeat(32, 1)  # K=32, N=8, code == column
    w = rtn(8, 32, 32)
    w.codes, w.zeros = codes, torch.zeros(1, 8, dtype=torch.uint8)
    packed = AWQFormat.pack(w, LayerScheme(4, 32, False, False))
    assert bool((packed["qweight"] == 0x75316420).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sym_codes", [False, True])
@pytest.mark.parametrize("group_size", [-1, 32, 64, 128])
def test_round_trip(group_size, sym_codes, dtype):
    K, N = 256, 64
    fmt = awq(group_size)
    scheme = fmt.scheme_for(DOWN, MAPPING)
    w = rtn(N, K, group_size, sym_codes, dtype)
    packed = AWQFormat.pack(w, scheme)
    assert {n: (t.dtype, tuple(t.shape)) for n, t in packed.items()} == {
        "qweight": (torch.int32, (K, N // 8)), "qzeros": (torch.int32, (w.num_groups, N // 8)),
        "scales": (torch.float16, (w.num_groups, N))}
    got = fmt.to_canonical(bare_layer(packed), scheme, whole(K, N), DOWN)
    if sym_codes:  # AWQ always stores zero points: symmetric codes come back with zeros == 8
        assert bool((got.zeros == 8).all())
        got.zeros = None
    assert_same(got, w)
    assert torch.equal(dequantize(got), dequantize(w))


# ---- loading through vLLM's parameter classes ----------------------------------------

@pytest.mark.parametrize("tp_size", [1, 2])
@pytest.mark.parametrize("group_size", [128, 32, -1])
def test_load_qkv(group_size, tp_size):
    K = 256
    fmt = awq(group_size)
    shards = {s: rtn(n, K, group_size, seed=i)
              for i, (s, n) in enumerate(QKV_SHARDS)}
    assert_qkv_loads(fmt, shards, K, tp_size)


def test_load_gate_up_tp2():
    K, N = 256, 384
    fmt = awq(64)
    shards = [rtn(N, K, 64, seed=i) for i in range(2)]
    for rank in range(2):
        layer = make_layer("gate_up", fmt, K, N, tp_rank=rank, tp_size=2)
        for i, w in enumerate(shards):
            load(layer, AWQFormat.pack(w, layer.scheme), shard_id=i)
        assert_same(canonical(layer, fmt), concat_columns([column_slice(w, rank, 2) for w in shards]))


def test_column_parallel_tp2_is_n_half():
    fmt = awq(128)
    w = rtn(256, 256, 128)
    for rank in range(2):
        layer = make_layer("column", fmt, 256, 256, tp_rank=rank, tp_size=2)
        load(layer, AWQFormat.pack(w, layer.scheme))
        got = canonical(layer, fmt)
        assert_same(got, column_slice(w, rank, 2))
        assert torch.equal(dequantize(got), dequantize(w)[:, rank * 128:(rank + 1) * 128])


@pytest.mark.parametrize("group_size", [128, 64, -1])
def test_row_parallel_tp2_is_k_half(group_size):
    K, N = 512, 128
    fmt = awq(group_size)
    w = rtn(N, K, group_size)
    for rank in range(2):
        layer = make_layer("row", fmt, K, N, tp_rank=rank, tp_size=2)
        load(layer, AWQFormat.pack(w, layer.scheme))
        got = canonical(layer, fmt)
        assert_same(got, row_slice(w, rank, 2, replicated_scales=group_size == -1))
        assert torch.equal(dequantize(got), dequantize(w)[rank * 256:(rank + 1) * 256])


def test_modules_to_not_convert_is_substring_match():
    fmt = awq(modules_to_not_convert=["mlp.down_proj", "visual"])
    assert fmt.scheme_for(DOWN, MAPPING) is None
    assert fmt.scheme_for("model.visual.blocks.0.attn.qkv", MAPPING) is None
    assert fmt.scheme_for("model.layers.0.mlp.gate_up_proj", MAPPING) == LayerScheme(4, 128, False, False)


def test_legacy_keys_w_bit_and_q_group_size():
    fmt = format_for({"quant_method": "awq", "w_bit": 4, "q_group_size": 64, "zero_point": True, "version": "GEMM"})
    assert fmt.scheme_for(DOWN, MAPPING) == LayerScheme(4, 64, False, False)


# ---- bad inputs ---------------------------------------------------------------------

@pytest.mark.parametrize("version", ["gemv", "gemv_fast", "marlin", "exllama"])
def test_unsupported_version(version):
    with pytest.raises(CheckpointError, match=rf"version='{version}' is not supported. Only AutoAWQ's 'gemm'.*"
                                              r"Fix: re-export the model with version='gemm'"):
        awq(version=version)


def test_zero_point_false_is_refused():
    with pytest.raises(CheckpointError, match=r"zero_point=false is not supported.*Fix: quantize with zero_point=true"):
        awq(zero_point=False)


@pytest.mark.parametrize("bits", [3, 8])
def test_bits_other_than_4_are_refused(bits):
    with pytest.raises(CheckpointError, match=rf"AWQ quantization_config: bits={bits} is not supported"):
        awq(bits=bits)


def test_unsupported_group_size():
    with pytest.raises(CheckpointError, match=r"group_size=256 is not supported; supported group sizes are \[-1, 32, 64, 128\]"):
        awq(256)


def test_missing_qzeros():
    assert_missing_tensor(awq(128), rtn(128, 256, 128), "qzeros",
                          r"mlp\.down_proj: tensor 'qzeros'.*never loaded")


def test_missing_scales():
    assert_missing_tensor(awq(128), rtn(128, 256, 128), "scales",
                          r"mlp\.down_proj: tensor 'scales'.*never loaded")


def test_scales_float32_are_refused():
    fmt = awq(128)
    layer = make_layer("row", fmt, 256, 128)
    scales = AWQFormat.pack(rtn(128, 256, 128), layer.scheme)["scales"].float()
    with pytest.raises(CheckpointError, match=r"down_proj: checkpoint tensor 'scales' has dtype float32, expected float16/bfloat16"):
        load(layer, {"scales": scales})


def test_output_shard_not_multiple_of_8_after_split():
    """AWQ packs along N: a TP split leaving N per rank not divisible by 8 cannot be narrowed."""
    with pytest.raises(CheckpointError, match=r"up_proj: output shard sizes per rank \[36\] are not all multiples of 8"):
        make_layer("column", awq(128), 256, 72, tp_rank=0, tp_size=2)


def test_grouped_row_parallel_split_straddling_a_group():
    with pytest.raises(CheckpointError, match=r"down_proj: K=384 split over tensor_parallel_size=2 gives K=192 per "
                                              r"rank.*group_size=128.*Fix"):
        make_layer("row", awq(128), 384, 128, tp_rank=0, tp_size=2)


def test_format_is_picklable():
    import pickle
    back = pickle.loads(pickle.dumps(awq(64, modules_to_not_convert=["down_proj"])))
    assert back.scheme_for(DOWN, MAPPING) is None
    assert back.scheme_for("model.layers.0.mlp.gate_up_proj", MAPPING) == LayerScheme(4, 64, False, False)


def test_awq_never_scans_the_checkpoint(monkeypatch):
    """Only formats whose config leaves the quantized modules implicit read headers."""
    import vllm.transformers_utils.config as tu

    from vllm_machete_plugin.config import MacheteConfig
    monkeypatch.setattr(tu, "get_safetensors_params_metadata",
                        lambda *a, **kw: (_ for _ in ()).throw(AssertionError("scanned")))
    config = MacheteConfig({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
                            "version": "gemm"})
    config.maybe_update_config("some/model")
    assert not config.fmt.needs_checkpoint_scan()
