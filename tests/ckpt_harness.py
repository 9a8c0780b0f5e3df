"""Test harness for the checkpoint format modules: vLLM 0.26.0's real linear layers
(QKVParallelLinear, MergedColumnParallelLinear, ColumnParallelLinear, RowParallelLinear)
and real parameter classes / weight_loader_v2 on CPU. Tensor parallelism is simulated by
patching vLLM's TP rank/size getters (no distributed init), so a TP=2 rank loads exactly
the slice vLLM would load on that rank. For whole checkpoints on disk: the quantization
config as `vllm serve --quantization machete` builds it (engine_quant_config; with Llama's
model init applied: llama_quant_config), and one decoder layer's linears built with it and
filled as Llama's load_weights fills them (llama_linears, load_llama_linears; they need the
vllm_tp1 fixture)."""
from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
import vllm.model_executor.layers.linear as vllm_linear
import vllm.model_executor.parameter as vllm_parameter
from vllm.model_executor.layers.linear import (LinearMethodBase, UnquantizedLinearMethod,
                                               register_weight_loader_v2_supported_method)

from vllm_machete_plugin.canonical import CanonicalW4
from vllm_machete_plugin.checkpoints.base import CheckpointError, CheckpointFormat, Partition

MAPPING = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


@contextlib.contextmanager
def tensor_parallel(rank: int, size: int):
    with contextlib.ExitStack() as stack:
        for module in (vllm_linear, vllm_parameter):
            stack.enter_context(mock.patch.object(module, "get_tensor_model_parallel_rank", return_value=rank))
            stack.enter_context(mock.patch.object(module, "get_tensor_model_parallel_world_size", return_value=size))
        yield


@register_weight_loader_v2_supported_method
class CheckpointTestLinearMethod(LinearMethodBase):
    """Creates the format's parameters exactly as the plugin's linear method does."""

    def __init__(self, fmt: CheckpointFormat, scheme):
        self.fmt, self.scheme = fmt, scheme

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size,
                       output_size, params_dtype, **extra_weight_attrs):
        layer.part = Partition(k=input_size_per_partition, output_sizes=tuple(output_partition_sizes),
                               k_full=input_size, n_full=output_size)
        layer.scheme = self.scheme
        self.fmt.create_weights(layer, self.scheme, layer.part, params_dtype, extra_weight_attrs["weight_loader"])

    def apply(self, layer, x, bias=None):
        raise NotImplementedError("loading tests only")


class FormatQuantConfig:
    """The part of a QuantizationConfig that vLLM's linear layers call."""

    def __init__(self, fmt: CheckpointFormat):
        self.fmt = fmt

    def get_quant_method(self, layer, prefix):
        scheme = self.fmt.scheme_for(prefix, MAPPING)
        return UnquantizedLinearMethod() if scheme is None else CheckpointTestLinearMethod(self.fmt, scheme)


def make_layer(kind: str, fmt: CheckpointFormat, k: int, n, *, tp_rank: int = 0, tp_size: int = 1,
               dtype=torch.float16, layer_prefix: str = "model.layers.0"):
    """kind: "qkv" (n = (heads, kv_heads, head_dim)), "gate_up" (n = per-shard N),
    "column" / "row" (n = N). Prefixes are the Llama module names vLLM uses."""
    cfg = FormatQuantConfig(fmt)
    with tensor_parallel(tp_rank, tp_size):
        if kind == "qkv":
            heads, kv_heads, head_dim = n
            return vllm_linear.QKVParallelLinear(k, head_dim, heads, kv_heads, bias=False, params_dtype=dtype,
                                                 quant_config=cfg, prefix=f"{layer_prefix}.self_attn.qkv_proj")
        if kind == "gate_up":
            return vllm_linear.MergedColumnParallelLinear(k, [n, n], bias=False, params_dtype=dtype,
                                                          quant_config=cfg, prefix=f"{layer_prefix}.mlp.gate_up_proj")
        if kind == "column":
            return vllm_linear.ColumnParallelLinear(k, n, bias=False, params_dtype=dtype, quant_config=cfg,
                                                    prefix=f"{layer_prefix}.mlp.up_proj")
        if kind == "row":
            return vllm_linear.RowParallelLinear(k, n, bias=False, params_dtype=dtype, quant_config=cfg,
                                                 prefix=f"{layer_prefix}.mlp.down_proj")
    raise ValueError(kind)


def load(layer, tensors: dict, shard_id=None, skip=()) -> None:
    """Feed one checkpoint module's tensors (suffix -> tensor) through each parameter's
    weight_loader, as Llama's load_weights does (shard_id for fused layers)."""
    for suffix, t in tensors.items():
        if suffix in skip:
            continue
        param = getattr(layer, suffix)
        if shard_id is None:
            param.weight_loader(param, t)
        else:
            param.weight_loader(param, t, shard_id)


def canonical(layer, fmt: CheckpointFormat) -> CanonicalW4:
    return fmt.to_canonical(layer, layer.scheme, layer.part, where=layer.prefix)


def assert_missing_tensor(fmt: CheckpointFormat, w: CanonicalW4, tensor: str, match: str) -> None:
    """A row-parallel layer whose checkpoint lacks `tensor` is refused at repack with a
    CheckpointError matching `match` (it names the layer, the tensor and the fix)."""
    layer = make_layer("row", fmt, w.k, w.n)
    load(layer, fmt.pack(w, layer.scheme), skip={tensor})
    with pytest.raises(CheckpointError, match=match):
        canonical(layer, fmt)


QKV_DIMS = (4, 2, 64)  # heads, KV heads, head dim of the fused qkv test layers
QKV_SHARDS = [("q", QKV_DIMS[0] * QKV_DIMS[2]), ("k", QKV_DIMS[1] * QKV_DIMS[2]), ("v", QKV_DIMS[1] * QKV_DIMS[2])]  # (shard, N)


def assert_qkv_loads(fmt: CheckpointFormat, shards: dict, k: int, tp_size: int) -> None:
    """Each shard (shard id -> CanonicalW4) of a fused qkv layer, packed and fed through
    vLLM's loaders on every TP rank, repacks to that rank's column slice of the shards."""
    for rank in range(tp_size):
        layer = make_layer("qkv", fmt, k, QKV_DIMS, tp_rank=rank, tp_size=tp_size)
        for s, w in shards.items():
            load(layer, fmt.pack(w, layer.scheme), shard_id=s)
        assert_same(canonical(layer, fmt), concat_columns([column_slice(w, rank, tp_size) for w in shards.values()]))


def bare_layer(tensors: dict) -> torch.nn.Module:
    """A module holding checkpoint tensors as plain attributes (no vLLM), for pack/unpack tests."""
    m = torch.nn.Module()
    for name, t in tensors.items():
        m.register_buffer(name, t)
    return m


def whole(k: int, n: int) -> Partition:
    return Partition(k=k, output_sizes=(n,), k_full=k, n_full=n)


# ---- what a rank must hold: slices of the full canonical weights ---------------

def column_slice(w: CanonicalW4, rank: int, size: int) -> CanonicalW4:
    """Columns of `w` that tensor-parallel rank `rank` of `size` holds (column-parallel)."""
    step = w.n // size
    cols = slice(rank * step, (rank + 1) * step)
    return CanonicalW4(codes=w.codes[:, cols], scales=w.scales[:, cols],
                       zeros=None if w.zeros is None else w.zeros[:, cols], group_size=w.group_size, g_idx=w.g_idx)


def concat_columns(parts: list[CanonicalW4]) -> CanonicalW4:
    return CanonicalW4(codes=torch.cat([p.codes for p in parts], 1), scales=torch.cat([p.scales for p in parts], 1),
                       zeros=None if parts[0].zeros is None else torch.cat([p.zeros for p in parts], 1),
                       group_size=parts[0].group_size, g_idx=parts[0].g_idx)


def assert_same(got: CanonicalW4, want: CanonicalW4) -> None:
    assert got.group_size == want.group_size
    assert torch.equal(got.codes, want.codes)
    assert torch.equal(got.scales.float(), want.scales.float())
    assert (got.zeros is None) == (want.zeros is None)
    if want.zeros is not None:
        assert torch.equal(got.zeros, want.zeros)
    assert (got.g_idx is None) == (want.g_idx is None)
    if want.g_idx is not None:
        assert torch.equal(got.g_idx.to(torch.int64), want.g_idx.to(torch.int64))


def row_slice(w: CanonicalW4, rank: int, size: int, replicated_scales: bool) -> CanonicalW4:
    """Rows (K) of `w` that rank `rank` of `size` holds on a row-parallel layer. With
    act-order or channelwise scales (replicated_scales) the rank keeps the full group
    table; act-order g_idx keeps global group ids."""
    step = w.k // size
    rows = slice(rank * step, (rank + 1) * step)
    g_idx = None if w.g_idx is None else w.g_idx[rows]
    if replicated_scales:
        group_size = w.group_size if w.g_idx is not None else step
        return CanonicalW4(codes=w.codes[rows], scales=w.scales, zeros=w.zeros, group_size=group_size, g_idx=g_idx)
    gs = slice(rank * step // w.group_size, (rank + 1) * step // w.group_size)
    return CanonicalW4(codes=w.codes[rows], scales=w.scales[gs], zeros=None if w.zeros is None else w.zeros[gs],
                       group_size=w.group_size, g_idx=g_idx)


def nibble_word(nibbles: list[int]) -> int:
    """One int32 from 8 values, value j in bits [4j, 4j+4): plain integer arithmetic,
    independent of the code under test."""
    assert len(nibbles) == 8 and all(0 <= x < 16 for x in nibbles)
    v = sum(x * 16 ** j for j, x in enumerate(nibbles))
    return v - 2 ** 32 if v >= 2 ** 31 else v


def assert_act_order_resolves(w: CanonicalW4, where: str) -> CanonicalW4:
    """sort_by_group(w) gives contiguous groups, uses every checkpoint row, keeps the
    product X @ W exact, and its pad rows (regrouping) dequantize to exactly 0."""
    from vllm_machete_plugin.act_order import sort_by_group
    from vllm_machete_plugin.canonical import dequantize
    ws, perm = sort_by_group(w, where=where)
    assert ws.g_idx is None and ws.k % ws.group_size == 0 and perm.shape == (ws.k,)
    assert sorted(set(perm.tolist())) == list(range(w.k))
    x = torch.randn(3, w.k, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x[:, perm] @ dequantize(ws, torch.float64), x @ dequantize(w, torch.float64),
                               rtol=0, atol=1e-12)
    assert int((dequantize(ws) == 0).all(dim=1).sum()) >= ws.k - w.k
    return ws


# ---- whole checkpoints on disk, through vLLM's config and load path -------------------

def engine_quant_config(path, quantization: str = "machete", **kw):
    """(ModelConfig, quant config) for the checkpoint at `path` as vLLM's front-end builds
    them: EngineArgs (which loads the general plugins, as `vllm serve` does), then the
    quant-config step of create_engine_config (get_quant_config, maybe_update_config)."""
    from vllm.config import VllmConfig
    from vllm.engine.arg_utils import EngineArgs

    ea = EngineArgs(model=str(path), quantization=quantization, load_format="dummy", **kw)
    mc = ea.create_model_config()
    # create_engine_config() needs a GPU platform; this is the quant-config step of it.
    return mc, VllmConfig._get_quantization_config(mc, ea.create_load_config())


def llama_quant_config(path, **kw):
    """engine_quant_config's quant config, then what Llama's model init does to it before
    building layers (vLLM's SupportsQuant._maybe_apply_model_mapping: the model's name
    mapper and packed_modules_mapping)."""
    from types import SimpleNamespace

    from vllm.model_executor.models.interfaces import SupportsQuant
    from vllm.model_executor.models.llama import LlamaForCausalLM

    _, qc = engine_quant_config(path, **kw)
    SupportsQuant._maybe_apply_model_mapping(SimpleNamespace(
        quant_config=qc, hf_to_vllm_mapper=LlamaForCausalLM.hf_to_vllm_mapper,
        packed_modules_mapping=LlamaForCausalLM.packed_modules_mapping))
    return qc


def tiny_files(path) -> tuple[dict, dict]:
    """(config.json as a dict, the tensors of model.safetensors) of a tiny checkpoint at `path`."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(path)
    return json.loads((path / "config.json").read_text()), load_file(str(path / "model.safetensors"))


def machete_config(cfg: dict):
    """Our quant config from config.json's quantization_config (as vLLM's from_config builds it),
    with Llama's packed_modules_mapping, which vLLM sets from the model class. A new object each
    call: the linear method links only layers of one config (one model)."""
    from vllm_machete_plugin.config import MacheteConfig

    qc = MacheteConfig.from_config(cfg["quantization_config"])
    qc.packed_modules_mapping = MAPPING
    return qc


def llama_linears(qc, cfg: dict, dtype: torch.dtype, layer: int = 0) -> dict:
    """vLLM's four linear layers of Llama decoder layer `layer` (config.json dict `cfg`),
    built with quant config `qc`: its get_quant_method runs here, as in vLLM's model init."""
    h, heads, kv, hd, inter = (cfg["hidden_size"], cfg["num_attention_heads"],
                               cfg["num_key_value_heads"], cfg["head_dim"], cfg["intermediate_size"])
    pre = f"model.layers.{layer}"
    kw = dict(bias=False, params_dtype=dtype, quant_config=qc)
    return {
        "qkv_proj": vllm_linear.QKVParallelLinear(h, hd, heads, kv, prefix=f"{pre}.self_attn.qkv_proj", **kw),
        "o_proj": vllm_linear.RowParallelLinear(heads * hd, h, prefix=f"{pre}.self_attn.o_proj", **kw),
        "gate_up_proj": vllm_linear.MergedColumnParallelLinear(h, [inter, inter], prefix=f"{pre}.mlp.gate_up_proj",
                                                               **kw),
        "down_proj": vllm_linear.RowParallelLinear(inter, h, prefix=f"{pre}.mlp.down_proj", **kw),
    }


LLAMA_SHARDS = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
                "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
                "o_proj": ("o_proj", None), "down_proj": ("down_proj", None)}


def load_llama_linears(layers: dict, tensors: dict, layer: int = 0, skip=()) -> None:
    """What vLLM's Llama load_weights does for these layers' checkpoint tensors. As there, the
    parameters are looked up in a snapshot taken before the first load (a layer that vLLM's
    layerwise reload processes early keeps receiving its late tensors on the old parameters)."""
    params = {(name, n): p for name, m in layers.items() for n, p in m.named_parameters()}
    for key, t in tensors.items():
        if not key.startswith(f"model.layers.{layer}.") or key in skip:
            continue
        module, suffix = key.split(".")[-2:]
        if module not in LLAMA_SHARDS:
            continue
        target, shard = LLAMA_SHARDS[module]
        param = params[(target, suffix)]
        if shard is None:
            param.weight_loader(param, t)
        else:
            param.weight_loader(param, t, shard)
