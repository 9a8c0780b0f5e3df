"""MacheteLinearMethod: create the checkpoint's parameters, repack them once after
loading into the chosen backend's layout, and run the backend every forward."""
from __future__ import annotations

from typing import Optional

import torch
from vllm.logger import init_logger
from vllm.model_executor.layers.linear import (LinearMethodBase,
                                               register_weight_loader_v2_supported_method)

from . import backends, offload
from .act_order import sort_by_group
from .backends.base import LayerSpec
from .checkpoints.base import CheckpointError, LayerScheme, Partition

logger = init_logger(f"vllm.{__name__}")  # under "vllm" so vLLM's log handler shows it
_PREFIX = "vmp_"  # prepared tensors are registered on the layer as vmp_<name>
# vLLM's LoRA layers put their adapters on the device of the base layer's weight, which they
# find by name (vllm/lora/layers/utils.py, _get_lora_device: weight, weight_packed, qweight, ...);
# without one, --enable-lora fails at engine start. `qweight` names a layer's prepared weight
# there: the same Parameter registered under a second name (named_parameters lists it once).
# Registered, not a plain attribute: vLLM's weight reload re-registers the checkpoint's
# parameters, GPTQ's and AWQ's `qweight` among them, and a plain attribute of that name would
# make that fail. Not `weight`: vLLM reads a layer's `weight` as its dense matrix (MLA's kv_b_proj).
LORA_DEVICE_ATTR = "qweight"
# vLLM's loaders of pre-sharded state dicts that an engine saved after process_weights_after_loading
# (ShardedStateLoader.save_model): they look the saved names up in a fresh model's state_dict,
# which holds our checkpoint-layout parameters, not the vmp_* tensors saved.
_KERNEL_FORMAT_LOADERS = ("sharded_state", "runai_streamer_sharded")
_announced: set[str] = set()  # backends already logged in this process


@register_weight_loader_v2_supported_method
class MacheteLinearMethod(LinearMethodBase):
    def __init__(self, config, scheme: LayerScheme, prefix: str):
        self.config = config
        self.scheme = scheme
        self.prefix = prefix

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype, **extra_weight_attrs):
        load_format = _load_format()
        if load_format in _KERNEL_FORMAT_LOADERS:
            raise CheckpointError(
                f"{self.prefix}: load_format={load_format!r} loads the tensors an engine saved after "
                f"repacking, but --quantization machete repacks the checkpoint at load time into a layout "
                f"chosen for this GPU and version, and has no loader for saved kernel-format tensors. "
                f"Fix: load the original quantized checkpoint (load_format 'auto').")
        part = Partition(k=input_size_per_partition, output_sizes=tuple(output_partition_sizes),
                         k_full=input_size, n_full=output_size)
        before = set(layer._parameters)
        self.config.fmt.create_weights(layer, self.scheme, part, params_dtype,
                                       extra_weight_attrs["weight_loader"])
        layer.vmp_checkpoint_params = tuple(n for n in layer._parameters if n not in before)
        layer.vmp_partition = part
        layer.vmp_params_dtype = params_dtype
        layer.vmp_dummy = load_format == "dummy"

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Repacks the loaded checkpoint parameters into the backend's tensors, registered as
        vmp_<name>. Runs again on vLLM's in-place weight reload (`reload_weights`, RLHF weight
        updates, sleep level 2): vLLM then copies the new tensors into the old ones, which
        CUDA graphs captured, so the layout may not change."""
        part: Partition = layer.vmp_partition
        reloading = hasattr(layer, "vmp_spec")
        if layer.vmp_dummy and not reloading:  # a reload after a dummy load brings real weights
            self.config.fmt.fill_dummy(layer, self.scheme, part, layer.vmp_checkpoint_params)
        w = self.config.fmt.to_canonical(layer, self.scheme, part, where=self.prefix)
        perm: Optional[torch.Tensor] = None
        k_checkpoint = w.k
        if w.g_idx is not None:  # act-order: sort rows by group once, permute X per call
            w, perm = sort_by_group(w, where=self.prefix)
            if w.k != k_checkpoint and "regroup" not in _announced:
                _announced.add("regroup")
                logger.info("vllm-machete-plugin: act-order groups straddle tensor-parallel ranks; "
                            "regrouped into %d-row groups (first: %s, K %d -> %d)", w.group_size,
                            self.prefix, k_checkpoint, w.k)
        spec = LayerSpec(k=w.k, n=part.n, group_size=w.group_size, has_zeros=w.zeros is not None,
                         act_dtype=layer.vmp_params_dtype, act_order=perm is not None,
                         k_split=part.k_split)
        backend = backends.select(spec, self.prefix)
        if reloading and (spec, backend) != (layer.vmp_spec, layer.vmp_backend):
            why = ""
            if layer.vmp_spec.act_order and layer.vmp_spec.k_split:
                why = (" This row-parallel act-order layer's groups straddle tensor-parallel ranks, so its "
                       "regrouped K follows the checkpoint's g_idx: in place it takes only weights with the "
                       "same g_idx (the same checkpoint, e.g. after sleep level 2), not those of another "
                       "act-order checkpoint nor after a load_format=dummy start.")
            raise ValueError(
                f"{self.prefix}: the reloaded weights need the {backend.name} backend with {spec.describe()}, "
                f"but the engine was built for the {layer.vmp_backend.name} backend with "
                f"{layer.vmp_spec.describe()}; an in-place reload keeps the tensors the engine was built "
                f"with.{why} Fix: start a new engine on the new weights.")
        if backend.name not in _announced:
            _announced.add(backend.name)
            logger.info("vllm-machete-plugin: quantized linear layers run on the %s backend "
                        "(first: %s, %s)", backend.name, self.prefix, spec.describe())
        if w.scales.dtype != spec.act_dtype:
            w.scales = w.scales.to(spec.act_dtype)
        try:
            prepared = backend.prepare(spec, w)
        except ValueError as e:  # name the layer (the backends do not know it)
            raise ValueError(f"{self.prefix}: {e}") from e
        offloaded = any(offload.is_offloaded(getattr(layer, n)) for n in layer.vmp_checkpoint_params)
        # Drop the checkpoint-layout parameters before keeping the repacked ones, so a
        # layer never holds both longer than this call (peak = one layer's extra copy).
        for name in layer.vmp_checkpoint_params:
            delattr(layer, name)
        del w
        for name, t in prepared.items():
            layer.register_parameter(_PREFIX + name, torch.nn.Parameter(t, requires_grad=False))
            if offloaded and name in backend.host_offloadable:
                offload.to_host(getattr(layer, _PREFIX + name))
        if "prefetch-offload" not in _announced and offload.prefetch_offloading():
            _announced.add("prefetch-offload")
            logger.warning("vllm-machete-plugin: vLLM's prefetching weight offloader (--offload-group-size) "
                           "cannot move the repacked weights of --quantization machete layers: they stay on "
                           "the GPU (first: %s). Fix: offload with --cpu-offload-gb instead, which they follow.",
                           self.prefix)
        if offloaded and "offload" not in _announced:
            _announced.add("offload")
            logger.info("vllm-machete-plugin: the prepared weights of layers vLLM offloaded to the CPU "
                        "(--cpu-offload-gb) stay in host memory (first: %s)", self.prefix)
        if perm is not None:
            layer.register_parameter(_PREFIX + "perm", torch.nn.Parameter(perm, requires_grad=False))
        layer.register_parameter(LORA_DEVICE_ATTR, getattr(layer, _PREFIX + next(iter(prepared))))
        layer.vmp_backend = backend
        layer.vmp_spec = spec
        layer.vmp_weight_names = tuple(prepared)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        spec: LayerSpec = layer.vmp_spec
        x2 = x.reshape(-1, x.shape[-1])
        perm = getattr(layer, _PREFIX + "perm", None)
        if perm is not None:
            x2 = x2.index_select(1, perm)
        y = layer.vmp_backend.apply(spec, _prepared(layer), x2.contiguous())
        if bias is not None:
            y = y + bias
        return y.reshape(*x.shape[:-1], spec.n)


def _prepared(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A layer's tensors from its backend's prepare (registered as vmp_<name>)."""
    return {n: getattr(layer, _PREFIX + n) for n in layer.vmp_weight_names}


def _load_format() -> str:
    from vllm.config.vllm import get_current_vllm_config_or_none

    config = get_current_vllm_config_or_none()  # None: a layer built outside vLLM's loader
    return "" if config is None else str(config.load_config.load_format)

