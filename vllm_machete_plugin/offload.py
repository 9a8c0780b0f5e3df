"""vLLM's CPU weight offloading (`--cpu-offload-gb`) for our prepared layers.

vLLM's UVA offloader moves a decoder layer's parameters, as created, into pinned host memory and
leaves CUDA views of them in place (`_vllm_is_uva_offloaded`); the kernels then read those weights
over the bus. After process_weights_after_loading vLLM offloads again only parameters of the
names it offloaded before (vllm/model_executor/model_loader/utils.py, device_loading_context),
and ours have new names (vmp_<name>): without this module a layer of ours kept its weight on the
GPU, so the flag freed no GPU memory. Contract: a layer whose checkpoint parameters were
offloaded gets its backend's weight tensors (Backend.host_offloadable) offloaded the same way;
scratch tensors (Marlin's reduction locks) stay on the GPU.
"""
from __future__ import annotations

import torch

FLAG = "_vllm_is_uva_offloaded"  # vLLM's mark on a parameter whose data is a view of host memory


def is_offloaded(p: torch.Tensor) -> bool:
    return bool(getattr(p, FLAG, False))


def to_host(p: torch.nn.Parameter) -> None:
    """Moves p's data into (pinned, where vLLM pins) host memory and leaves a device view of it,
    as vLLM's UVA offloader does."""
    from vllm.model_executor.offloader.base import should_pin_memory
    from vllm.utils.torch_utils import get_accelerator_view_from_cpu_tensor

    cpu = p.data.to("cpu")
    if should_pin_memory():
        cpu = cpu.pin_memory()
    p.data = get_accelerator_view_from_cpu_tensor(cpu)
    setattr(p, FLAG, True)


def prefetch_offloading() -> bool:
    """Whether vLLM's other offloader, the prefetching one (--offload-group-size), is on. It
    tracks parameters by the names they had before loading, so it cannot move ours."""
    from vllm.config.vllm import get_current_vllm_config_or_none

    config = get_current_vllm_config_or_none()  # None in vLLM's weight reload, which runs outside one
    if config is None:
        return False
    oc = config.offload_config
    return oc.offload_backend == "prefetch" or (oc.offload_backend == "auto" and oc.prefetch.offload_group_size > 0)
