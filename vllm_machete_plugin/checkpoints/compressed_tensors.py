"""compressed-tensors `pack-quantized` W4A16 checkpoints (llm-compressor),
quant_method "compressed-tensors".

On disk, per linear layer (K = in_features, N = out_features, G = K / group_size, 1 for
strategy "channel"); codes and zero points are stored offset by +8 (signed -8..7 -> 0..15),
which is exactly our unsigned code / zero-point convention:
  weight_packed     int32 [N, K/8]  8 codes per word along K, column 8c+j in bits [4j, 4j+4)
  weight_scale      fp16/bf16 [N, G]  (model dtype)
  weight_zero_point int32 [N/8, G]  packed along N; only when symmetric: false
  weight_g_idx      int32 [K]       only for actorder "group" (alias "dynamic");
                                    actorder "weight" ("static") changes calibration only
  weight_shape      int64 [2]       the original [N, K]
"""
from __future__ import annotations

import re
from typing import Callable, Optional

import torch

from ..canonical import SYMMETRIC_ZERO, CanonicalW4, pack_int4, unpack_int4
from . import params as P
from .base import CheckpointError, CheckpointFormat, LayerScheme, Partition

PACKED = "weight_packed int32 [N, K/8], packed along K"
SCALE = "weight_scale float16/bfloat16 [N, G]"
ZERO_POINT = "weight_zero_point int32 [N/8, G], packed along N"
G_IDX = "weight_g_idx int32 [K]"
SHAPE = "weight_shape int64 [2] = [N, K]"

_ACTORDER_GROUP = ("group", "dynamic", True)
_ACTORDER_NONE = (None, False, "weight", "static")
_SUPPORTED = ("W4A16 only: format 'pack-quantized'; weights {num_bits: 4, type: int, "
              "strategy: group (group_size 32/64/128) or channel, symmetric true or false, "
              "dynamic: false, actorder: null/group/weight}; input_activations: null")


def _matches(name: str, pattern: str) -> bool:
    """compressed-tensors target/ignore entry: 're:<regex>' (re.match) or an exact name."""
    return bool(re.match(pattern[3:], name)) if pattern.startswith("re:") else pattern == name


def _parse_group(group_name: str, group, global_format: Optional[str]) -> LayerScheme:
    where = f"compressed-tensors config_groups[{group_name!r}]"
    if not isinstance(group, dict):
        raise CheckpointError(f"{where}: expected a quantization scheme dict, got {group!r}. We support {_SUPPORTED}.")
    problems = []
    fmt = group.get("format") or global_format
    if fmt != "pack-quantized":
        problems.append(f"format {fmt!r}")
    if group.get("input_activations") is not None:
        problems.append("input_activations (activation quantization, e.g. W8A8 / W4A8)")
    if group.get("output_activations") is not None:
        problems.append("output_activations")
    w = group.get("weights")
    if w is None:
        problems.append("no weights scheme")
        w = {}
    if w.get("type", "int") != "int":
        problems.append(f"weights.type {w.get('type')!r} (floating-point weights)")
    if w.get("num_bits") != 4:
        problems.append(f"weights.num_bits {w.get('num_bits')!r}")
    strategy = w.get("strategy")
    if strategy not in ("group", "channel"):
        problems.append(f"weights.strategy {strategy!r}")
    if w.get("dynamic", False) is not False:
        problems.append(f"weights.dynamic {w.get('dynamic')!r} (weights quantized at runtime)")
    group_size = w.get("group_size") if strategy == "group" else -1
    if strategy == "group" and group_size not in P.SUPPORTED_GROUP_SIZES[1:]:
        problems.append(f"weights.group_size {group_size!r}")
    actorder = w.get("actorder")
    if actorder not in _ACTORDER_GROUP + _ACTORDER_NONE:
        problems.append(f"weights.actorder {actorder!r}")
    if problems:
        raise CheckpointError(f"{where}: unsupported {'; '.join(problems)}. We support {_SUPPORTED}.")
    return LayerScheme(bits=4, group_size=group_size, sym=bool(w.get("symmetric", True)),
                       act_order=actorder in _ACTORDER_GROUP and strategy == "group")


def _check_symmetric_zero_points(checks: P.Checks, zp: torch.Tensor, where: str) -> None:
    """symmetric: true with a weight_zero_point in the checkpoint: fine only when every zero
    point is 0 (stored as SYMMETRIC_ZERO), else the weights were quantized asymmetrically."""
    stored = unpack_int4(zp, dim=0)

    def fail() -> None:
        found = sorted((torch.unique(stored).to(torch.int64) - SYMMETRIC_ZERO).tolist())
        raise CheckpointError(
            f"{where}: quantization_config says symmetric: true, but the checkpoint has "
            f"'weight_zero_point' ({ZERO_POINT}) of shape {tuple(zp.shape)} holding zero points "
            f"{found} (symmetric weights have none, or all 0). The weights "
            f"were quantized asymmetrically. Fix: set symmetric: false in the config_groups entry of "
            f"quantization_config that targets this layer.")
    checks.add((stored == SYMMETRIC_ZERO).all(), fail)


def _check_weight_shape(checks: P.Checks, shape: torch.Tensor, part: Partition, where: str) -> None:
    """weight_shape [N, K] against the layer. A fused layer keeps the last shard's
    weight_shape: only K is comparable there."""
    want = [part.n_full, part.k_full]

    def fail() -> None:
        raise CheckpointError(f"{where}: weight_shape is {shape.tolist()}, but the layer is [N, K] = {want}.")
    ok = shape[1] == want[1]
    if len(part.output_sizes) == 1:
        ok = ok & (shape[0] == want[0])
    checks.add(ok, fail)


class CompressedTensorsFormat(CheckpointFormat):
    name = "compressed-tensors"

    def __init__(self, raw: dict):
        where = "compressed-tensors quantization_config"
        status = raw.get("quantization_status", "compressed")
        if status != "compressed":
            raise CheckpointError(f"{where}: quantization_status={status!r}; only 'compressed' "
                                  f"(packed) checkpoints are supported.")
        if raw.get("kv_cache_scheme") is not None:
            raise CheckpointError(f"{where}: kv_cache_scheme (a quantized KV cache) is not supported. We support {_SUPPORTED}.")
        sparsity = raw.get("sparsity_config") or {}
        if sparsity.get("format", "dense") != "dense":
            raise CheckpointError(f"{where}: sparsity_config format {sparsity.get('format')!r} is not supported "
                                  f"(dense weights only).")
        if raw.get("transform_config"):
            raise CheckpointError(f"{where}: transform_config (online rotations) is not supported.")
        groups = raw.get("config_groups")
        if not groups:
            raise CheckpointError(f"{where}: config_groups is missing or empty. We support {_SUPPORTED}.")
        self.groups = [(name, list(g.get("targets") or []) if isinstance(g, dict) else [],
                        _parse_group(name, g, raw.get("format")))
                       for name, g in groups.items()]
        self.ignore = list(raw.get("ignore") or [])

    def _scheme_of_module(self, name: str) -> Optional[LayerScheme]:
        if any(_matches(name, i) for i in self.ignore):
            return None
        # Every layer asked about is a linear layer, so the class target "Linear" matches it.
        hits = [(g, s) for g, targets, s in self.groups
                if any(t == "Linear" or _matches(name, t) for t in targets)]
        if len({s for _, s in hits}) > 1:
            raise CheckpointError(
                f"{name}: several config_groups {[g for g, _ in hits]} target this layer with "
                f"different schemes ({[s for _, s in hits]}); a layer needs exactly one scheme.")
        return hits[0][1] if hits else None

    def scheme_for(self, prefix, packed_modules_mapping):
        if any(_matches(prefix, i) for i in self.ignore):
            return None
        return super().scheme_for(prefix, packed_modules_mapping)

    def create_weights(self, layer: torch.nn.Module, scheme: LayerScheme, part: Partition,
                       params_dtype: torch.dtype, weight_loader: Callable) -> None:
        where = P.layer_name(layer)
        P.check_act_dtype(params_dtype, where)
        P.check_partition(scheme, part, where, packed_k=True, packed_n=not scheme.sym)
        g, k, n = P.num_groups(scheme, part), part.k, part.n
        replicated = P.replicated_scales(scheme, part)
        P.add_param(layer, "weight_packed", "PackedvLLMParameter", torch.empty(n, k // 8, dtype=torch.int32),
                    weight_loader, dtypes=P.INT32, layout=PACKED,
                    input_dim=1, output_dim=0, packed_dim=1, packed_factor=8)
        scale = torch.empty(n, g, dtype=params_dtype)
        if replicated:
            P.add_param(layer, "weight_scale", "ChannelQuantScaleParameter", scale, weight_loader,
                        dtypes=P.FLOAT_DTYPES, layout=SCALE, output_dim=0)
        else:
            P.add_param(layer, "weight_scale", "GroupQuantScaleParameter", scale, weight_loader,
                        dtypes=P.FLOAT_DTYPES, layout=SCALE, output_dim=0, input_dim=1)
        # symmetric: true has no zero points; the parameter still receives any the checkpoint
        # has, so that to_canonical can name the mismatch (vLLM's loader would only say that
        # the model has no such parameter). Its shape needs every shard's N % 8 == 0.
        if not scheme.sym or not any(s % 8 for s in part.output_sizes):
            zp = torch.empty(n // 8, g, dtype=torch.int32)
            if replicated:
                P.add_param(layer, "weight_zero_point", "PackedColumnParameter", zp, weight_loader,
                            dtypes=P.INT32, layout=ZERO_POINT, output_dim=0, packed_dim=0, packed_factor=8)
            else:
                P.add_param(layer, "weight_zero_point", "PackedvLLMParameter", zp, weight_loader,
                            dtypes=P.INT32, layout=ZERO_POINT,
                            input_dim=1, output_dim=0, packed_dim=0, packed_factor=8)
        if scheme.act_order:
            P.add_param(layer, "weight_g_idx", "RowvLLMParameter", torch.empty(k, dtype=torch.int32),
                        weight_loader, dtypes=P.INDEX_DTYPES, layout=G_IDX, same_across_shards=True,
                        input_dim=0)
        P.add_param(layer, "weight_shape", "BasevLLMParameter", torch.empty(2, dtype=torch.int64),
                    weight_loader, dtypes=P.INDEX_DTYPES, layout=SHAPE, whole_per_shard=True)

    def to_canonical(self, layer: torch.nn.Module, scheme: LayerScheme, part: Partition,
                     where: str) -> CanonicalW4:
        P.check_partition(scheme, part, where, packed_k=True, packed_n=not scheme.sym)
        g, k, n = P.num_groups(scheme, part), part.k, part.n
        checks = P.Checks()
        packed = P.read(layer, "weight_packed", part, (n, k // 8), P.INT32, where, PACKED)
        scale = P.read(layer, "weight_scale", part, (n, g), P.FLOAT_DTYPES, where, SCALE)
        P.check_finite(checks, scale, "weight_scale", part, where, SCALE, n_dim=0)
        zeros = None
        if not scheme.sym:
            fix = "Fix: symmetric: false needs weight_zero_point; check the config's 'symmetric'."
            zp = P.read(layer, "weight_zero_point", part, (n // 8, g), P.INT32, where, ZERO_POINT, fix)
            zeros = unpack_int4(zp, dim=0).t().contiguous()
        else:
            zp = P.read_optional(layer, "weight_zero_point", part, (n // 8, g), P.INT32, where, ZERO_POINT)
            if zp is not None:
                _check_symmetric_zero_points(checks, zp, where)
        g_idx = None
        if scheme.act_order:
            fix = "Fix: actorder: group needs weight_g_idx; use actorder: weight if it has none."
            g_idx = P.read(layer, "weight_g_idx", part, (k,), P.INDEX_DTYPES, where, G_IDX, fix).to(torch.int32)
            P.check_group_ids(checks, g_idx, g, where, "weight_g_idx")
        shape = P.read_optional(layer, "weight_shape", part, (2,), P.INDEX_DTYPES, where, SHAPE)
        if shape is not None:
            _check_weight_shape(checks, shape, part, where)
        checks.run()
        return CanonicalW4(codes=unpack_int4(packed, dim=1).t().contiguous(), scales=scale.t().contiguous(),
                           zeros=zeros, group_size=part.group_size(scheme), g_idx=g_idx).validate(where)

    @torch.no_grad()
    def fill_dummy(self, layer: torch.nn.Module, scheme: LayerScheme, part: Partition,
                   names: tuple[str, ...]) -> None:
        """As the base, but a symmetric layer's weight_zero_point stays unloaded (a symmetric
        checkpoint has none; create_weights registers it only to catch one)."""
        super().fill_dummy(layer, scheme, part, names)
        if scheme.sym and "weight_zero_point" in names:
            P.mark_loaded(layer.weight_zero_point, loaded=False)

    @staticmethod
    def pack(w: CanonicalW4, scheme: LayerScheme) -> dict[str, torch.Tensor]:
        """What compressed-tensors' PackedQuantizationCompressor writes (scales keep w's dtype)."""
        P.check_pack(w, scheme)
        out = {"weight_packed": pack_int4(w.codes.t(), dim=1), "weight_scale": w.scales.t().clone(memory_format=torch.contiguous_format)}
        if not scheme.sym:
            zeros = w.zeros if w.zeros is not None else torch.full_like(w.scales, SYMMETRIC_ZERO, dtype=torch.uint8)
            out["weight_zero_point"] = pack_int4(zeros.t(), dim=0)
        if scheme.act_order:
            g_idx = w.g_idx if w.g_idx is not None else torch.arange(w.k, device=w.codes.device) // w.group_size
            out["weight_g_idx"] = g_idx.to(torch.int32, copy=True)
        out["weight_shape"] = torch.tensor([w.n, w.k], dtype=torch.int64)
        return out

    @staticmethod
    def quantization_config(scheme: LayerScheme, ignore: tuple = ("lm_head",), **kw) -> dict:
        """llm-compressor's quantization_config for one W4A16 group targeting all Linear layers."""
        channel = scheme.group_size == -1
        weights = {"num_bits": scheme.bits, "type": "int", "symmetric": scheme.sym,
                   "group_size": None if channel else scheme.group_size,
                   "strategy": "channel" if channel else "group", "block_structure": None,
                   "dynamic": False, "actorder": "group" if scheme.act_order else None,
                   "scale_dtype": None, "zp_dtype": None if scheme.sym else "torch.int8",
                   "observer": "minmax", "observer_kwargs": {}}
        return {"quant_method": "compressed-tensors", "format": "pack-quantized",
                "quantization_status": "compressed", "global_compression_ratio": None,
                "ignore": list(ignore), "kv_cache_scheme": None,
                "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                              "input_activations": None, "output_activations": None,
                                              "format": None}}}
