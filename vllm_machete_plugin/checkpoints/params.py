"""Shared plumbing for the checkpoint format modules:
- partition geometry checks (bits, group size vs K and the tensor-parallel split, packing),
- vLLM parameters whose weight_loader is wrapped to track what was loaded (vLLM does not
  report parameters the checkpoint never filled), to reject wrong dtypes before vLLM's
  silent copy_ converts them, and to turn vLLM's bare shape asserts into CheckpointErrors,
- validated reads of the loaded tensors for to_canonical, and value checks of them that
  cost one host synchronisation per layer (Checks).
vLLM is imported lazily so that packing/unpacking works without it."""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

from ..canonical import PACK_FACTOR, CanonicalW4
from .base import CheckpointError, LayerScheme, Partition

FLOAT_DTYPES = (torch.float16, torch.bfloat16)
INT32 = (torch.int32,)
INDEX_DTYPES = (torch.int32, torch.int64)
SUPPORTED_GROUP_SIZES = (-1, 32, 64, 128)
_ALL_SHARDS = "all"
_FIRST_SHARDS = frozenset({"q", 0})  # vLLM's first shard id of a fused qkv / gate_up layer


def _names(dtypes: Iterable[torch.dtype]) -> str:
    return "/".join(str(d).removeprefix("torch.") for d in dtypes)


def layer_name(layer: torch.nn.Module) -> str:
    return getattr(layer, "prefix", "") or type(layer).__name__


def check_bits(bits: int, where: str) -> None:
    if bits != 4:
        raise CheckpointError(
            f"{where}: bits={bits} is not supported. This plugin serves 4-bit weights with "
            f"16-bit activations (W4A16) only; 3-bit and 8-bit checkpoints need kernels we do "
            f"not have yet. Serve this checkpoint without --quantization machete.")


def check_group_size(group_size: int, where: str) -> None:
    if group_size not in SUPPORTED_GROUP_SIZES:
        raise CheckpointError(
            f"{where}: group_size={group_size} is not supported; supported group sizes are "
            f"{list(SUPPORTED_GROUP_SIZES)} (-1 = one group per output channel).")


def replicated_scales(scheme: LayerScheme, part: Partition) -> bool:
    """vLLM's row-parallel convention: with act-order, or channelwise on a split K, every
    rank holds the FULL K-group table (ChannelQuantScaleParameter, not narrowed along K)."""
    return scheme.act_order or (scheme.group_size == -1 and part.k_split)


def num_groups(scheme: LayerScheme, part: Partition) -> int:
    """Rows of this partition's scale table."""
    if scheme.group_size == -1:
        return 1
    k = part.k_full if replicated_scales(scheme, part) else part.k
    return k // scheme.group_size


def _tp_choices(k_full: int, group_size: int) -> list[int]:
    return [t for t in (1, 2, 4, 8, 16) if k_full % t == 0 and (k_full // t) % group_size == 0
            and (k_full // t) % PACK_FACTOR == 0]


def check_act_dtype(params_dtype: torch.dtype, where: str) -> None:
    if params_dtype not in FLOAT_DTYPES:
        raise CheckpointError(f"{where}: activation dtype {params_dtype} is not supported; "
                              f"use --dtype float16 or bfloat16.")


def check_partition(scheme: LayerScheme, part: Partition, where: str,
                    *, packed_k: bool, packed_n: bool) -> None:
    """Raise CheckpointError when this layer partition cannot be loaded exactly.
    packed_k / packed_n: some tensor of the format packs 8 values along K / along N."""
    check_bits(scheme.bits, where)
    check_group_size(scheme.group_size, where)
    g = scheme.group_size
    tp = part.k_full // part.k if part.k_split else 1
    if g != -1 and part.k_full % g:
        raise CheckpointError(f"{where}: group_size={g} does not divide the layer's K={part.k_full}.")
    if g != -1 and not replicated_scales(scheme, part) and part.k % g:
        raise CheckpointError(
            f"{where}: K={part.k_full} split over tensor_parallel_size={tp} gives K={part.k} per "
            f"rank, which is not a multiple of group_size={g}, so a quantization group would "
            f"straddle two ranks. Fix: use a tensor_parallel_size t with (K / t) % {g} == 0 "
            f"(for this layer: {_tp_choices(part.k_full, g)}).")
    if packed_k and part.k % PACK_FACTOR:
        raise CheckpointError(
            f"{where}: K per rank = {part.k} (K={part.k_full}, tensor_parallel_size={tp}) is not a "
            f"multiple of {PACK_FACTOR}, but this format packs {PACK_FACTOR} values per int32 along K. "
            f"Fix: use a tensor_parallel_size that keeps K per rank a multiple of {PACK_FACTOR}.")
    if packed_n and any(s % PACK_FACTOR for s in part.output_sizes):
        raise CheckpointError(
            f"{where}: output shard sizes per rank {list(part.output_sizes)} are not all multiples "
            f"of {PACK_FACTOR}, but this format packs {PACK_FACTOR} values per int32 along N. "
            f"Fix: use a smaller tensor_parallel_size.")


# ---- tracked vLLM parameters -------------------------------------------------

def _shard_keys(args: tuple, kwargs: dict) -> set:
    shard = args[0] if args else kwargs.get("loaded_shard_id")
    if shard is None:
        return {_ALL_SHARDS}
    return set(shard) if isinstance(shard, tuple) else {shard}


def _tracked(weight_loader: Callable, name: str, where: str, dtypes: tuple, layout: str,
             same_across_shards: bool, whole_per_shard: bool) -> Callable:
    """`param.vmp_loaded` is a frozenset, replaced on each load, never mutated: vLLM's layerwise
    reload (model_loader/reload) restores a layer's parameters from copies of their `__dict__`
    taken at model construction, which must keep the empty set of that time.
    A meta parameter is that reload counting the elements each load copies, to process the
    layer once the count reaches the layer's size; the real load into the materialized
    parameter follows. It is passed through untracked, except that a parameter every shard of a
    fused layer fills whole (whole_per_shard) counts for its first shard only: counted per shard,
    the layer would be processed before its last tensors arrive. Its other shards may then arrive
    after the layer was processed (vLLM drops them), so is_loaded asks one shard of it."""
    def load(param, loaded_weight: torch.Tensor, *args, **kwargs):
        keys = _shard_keys(args, kwargs)
        if param.is_meta:
            if whole_per_shard and _ALL_SHARDS not in keys and not keys & _FIRST_SHARDS:
                return None
            return weight_loader(param, loaded_weight, *args, **kwargs)
        shard = "" if keys == {_ALL_SHARDS} else f" (shard {sorted(map(str, keys))})"
        if loaded_weight.dtype not in dtypes:
            raise CheckpointError(
                f"{where}: checkpoint tensor '{name}'{shard} has dtype "
                f"{str(loaded_weight.dtype).removeprefix('torch.')}, expected {_names(dtypes)} "
                f"({layout}). The checkpoint was not written by the tool its quantization_config "
                f"names, or was converted incorrectly; re-export it.")
        before = param.data.clone() if same_across_shards and param.vmp_loaded else None
        try:
            weight_loader(param, loaded_weight, *args, **kwargs)
        except (AssertionError, RuntimeError, IndexError) as e:
            raise CheckpointError(
                f"{where}: checkpoint tensor '{name}'{shard} has shape {tuple(loaded_weight.shape)}, "
                f"which does not fit this rank's parameter of shape {tuple(param.data.shape)} "
                f"(tp rank {param.tp_rank} of {param.tp_size}; layout {layout}). The checkpoint's "
                f"tensors do not match its quantization_config (bits / group_size / desc_act) "
                f"or the model's config.json sizes.") from e
        if before is not None and not torch.equal(before, param.data):
            raise CheckpointError(
                f"{where}: the fused shards carry different '{name}' tensors; vLLM serves them as "
                f"one fused layer, which needs one shared act-order g_idx (shards quantized from "
                f"the same input always have one).")
        param.vmp_loaded = param.vmp_loaded | keys
    return load


def add_param(layer: torch.nn.Module, name: str, cls_name: str, data: torch.Tensor,
              weight_loader: Callable, *, dtypes: tuple, layout: str,
              same_across_shards: bool = False, whole_per_shard: bool = False, **dims) -> None:
    """Register `name` as vLLM parameter class `cls_name` (from vllm.model_executor.parameter)
    with a tracked weight_loader; `dims` are the class's input_dim/output_dim/packed_* args.
    same_across_shards: every shard of a fused layer loads the same tensor (checked).
    whole_per_shard: every shard loads the whole parameter (implied by same_across_shards)."""
    from vllm.model_executor import parameter as vp

    where = layer_name(layer)
    loader = _tracked(weight_loader, name, where, dtypes, layout, same_across_shards,
                      whole_per_shard or same_across_shards)
    param = getattr(vp, cls_name)(data=data, weight_loader=loader, **dims)
    param.vmp_loaded = frozenset()
    param.vmp_same_across_shards = same_across_shards
    layer.register_parameter(name, param)


def add_group_params(layer: torch.nn.Module, scheme: LayerScheme, part: Partition,
                     params_dtype: torch.dtype, weight_loader: Callable, scales_layout: str,
                     qzeros_layout: str) -> None:
    """GPTQ/AWQ `scales` [G, N] and `qzeros` [G, N/8] (packed along N). Split along K with
    the layer, or the full group table on every rank when replicated_scales()."""
    g, n = num_groups(scheme, part), part.n
    scales = torch.empty(g, n, dtype=params_dtype)
    qzeros = torch.empty(g, n // 8, dtype=torch.int32)
    if replicated_scales(scheme, part):
        add_param(layer, "scales", "ChannelQuantScaleParameter", scales, weight_loader,
                  dtypes=FLOAT_DTYPES, layout=scales_layout, output_dim=1)
        add_param(layer, "qzeros", "PackedColumnParameter", qzeros, weight_loader,
                  dtypes=INT32, layout=qzeros_layout, output_dim=1, packed_dim=1, packed_factor=8)
    else:
        add_param(layer, "scales", "GroupQuantScaleParameter", scales, weight_loader,
                  dtypes=FLOAT_DTYPES, layout=scales_layout, input_dim=0, output_dim=1)
        add_param(layer, "qzeros", "PackedvLLMParameter", qzeros, weight_loader,
                  dtypes=INT32, layout=qzeros_layout, input_dim=0, output_dim=1, packed_dim=1, packed_factor=8)


def mark_loaded(param: torch.nn.Parameter, loaded: bool = True) -> None:
    """Count `param` as filled for every shard, or (loaded=False) as never filled; used for
    load_format="dummy"."""
    param.vmp_loaded = frozenset({_ALL_SHARDS}) if loaded else frozenset()


def is_loaded(layer: torch.nn.Module, name: str, part: Partition) -> bool:
    """True when every output shard of `name` was filled; for a tensor every shard loads the
    same of (same_across_shards), when one was: vLLM's layerwise reload may process the layer
    before the other shards' copies arrive (_tracked counts it once). A plain tensor attribute
    (not created by add_param, e.g. tensors read straight from a file) counts as loaded."""
    t = getattr(layer, name, None)
    if t is None:
        return False
    loaded = getattr(t, "vmp_loaded", None)
    if loaded is None:
        return True
    if loaded and getattr(t, "vmp_same_across_shards", False):
        return True
    return _ALL_SHARDS in loaded or len(loaded) >= len(part.output_sizes)


def read(layer: torch.nn.Module, name: str, part: Partition, shape: tuple, dtypes: tuple,
         where: str, layout: str, fix: str = "") -> torch.Tensor:
    """The loaded tensor `name`, checked for presence, dtype and shape."""
    t = getattr(layer, name, None)
    if not is_loaded(layer, name, part):
        got = sorted(map(str, getattr(t, "vmp_loaded", ()) or ()))
        detail = f" (shards loaded: {got} of {len(part.output_sizes)})" if got else ""
        raise CheckpointError(
            f"{where}: tensor '{name}' ({layout}) was never loaded from the checkpoint{detail}. "
            f"The checkpoint lacks '{where}.{name}' or its quantization_config does not describe "
            f"its tensors. {fix}".rstrip())
    if t.dtype not in dtypes:
        raise CheckpointError(f"{where}: tensor '{name}' has dtype {str(t.dtype).removeprefix('torch.')}, "
                              f"expected {_names(dtypes)} ({layout}).")
    if tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"{where}: tensor '{name}' has shape {tuple(t.shape)}, expected "
                              f"{tuple(shape)} ({layout}).")
    return t.detach()


def read_optional(layer: torch.nn.Module, name: str, part: Partition, shape: tuple, dtypes: tuple,
                  where: str, layout: str) -> Optional[torch.Tensor]:
    if not is_loaded(layer, name, part):
        return None
    return read(layer, name, part, shape, dtypes, where, layout)


# ---- value checks: one host synchronisation per layer ----------------------------

class Checks:
    """Value checks of one layer's loaded tensors. Each check is a 0-d bool reduction on the
    tensors' device; run() reads them all back with one host synchronisation, however many
    checks the format adds. A failed check's handler runs only then (it raises its
    CheckpointError, or warns), so the error path may read tensors freely."""

    def __init__(self) -> None:
        self._checks: list[tuple[torch.Tensor, Callable[[], None]]] = []

    def add(self, ok: torch.Tensor, on_failure: Callable[[], None]) -> None:
        self._checks.append((ok, on_failure))

    def run(self) -> None:
        if not self._checks:
            return
        passed = torch.stack([ok for ok, _ in self._checks]).tolist()  # the one synchronisation
        for ok, (_, on_failure) in zip(passed, self._checks):
            if not ok:
                on_failure()


def check_finite(checks: Checks, t: torch.Tensor, name: str, part: Partition, where: str, layout: str,
                 n_dim: int) -> None:
    """Scales must be finite: one NaN/Inf scale makes every output of its column NaN/Inf.
    n_dim: the dimension of `t` along N (names the fused shard in the error)."""
    def fail() -> None:
        nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        first = [int(i) for i in (~torch.isfinite(t)).nonzero()[0]]
        shard = ""
        if len(part.output_sizes) > 1:
            ends = torch.tensor(part.output_sizes).cumsum(0)
            shard = (f", in shard {int((ends <= first[n_dim]).sum())} (from 0) of the "
                     f"{len(part.output_sizes)} this layer fuses")
        raise CheckpointError(
            f"{where}: checkpoint tensor '{name}' ({layout}) of shape {tuple(t.shape)} holds {nan} NaN and "
            f"{inf} Inf values (first at index {first}{shard}); the layer would output NaN/Inf. The "
            f"checkpoint file is corrupt or its quantization diverged. Fix: re-download the checkpoint, "
            f"or re-quantize the model.")
    checks.add(torch.isfinite(t).all(), fail)


def check_group_ids(checks: Checks, g_idx: torch.Tensor, groups: int, where: str, name: str) -> None:
    def fail() -> None:
        bad = (g_idx < 0) | (g_idx >= groups)
        raise CheckpointError(f"{where}: '{name}' holds group ids outside 0..{groups - 1} "
                              f"(e.g. {int(g_idx[bad][0])}); it does not match group_size.")
    checks.add(((g_idx >= 0) & (g_idx < groups)).all(), fail)


def check_trivial_g_idx(checks: Checks, g_idx: torch.Tensor, group_size: int, where: str, name: str) -> None:
    """Without act-order, row k of this partition must be in group (offset + k) // group_size."""
    def fail() -> None:
        raise CheckpointError(
            f"{where}: '{name}' is not k // group_size although the config has no act-order; "
            f"the checkpoint looks act-ordered. Fix: set desc_act=true (GPTQ) or actorder: group "
            f"(compressed-tensors) in quantization_config.")
    k = torch.arange(g_idx.numel(), device=g_idx.device)
    checks.add(((g_idx.to(torch.int64) - g_idx[0].to(torch.int64)) == k // group_size).all(), fail)


def check_pack(w: CanonicalW4, scheme: LayerScheme) -> None:
    """pack() writes a whole layer in the layout `scheme` describes."""
    check_bits(scheme.bits, "pack")
    if scheme.sym and w.zeros is not None:
        raise ValueError("pack: scheme is symmetric but the weight has zero points")
    if w.g_idx is not None and not scheme.act_order:
        raise ValueError("pack: the weight has an act-order g_idx but the scheme has no act-order")
    expected = w.k if scheme.group_size == -1 else scheme.group_size
    if w.group_size != expected:
        raise ValueError(f"pack: weight group size {w.group_size} != scheme's {expected}")
