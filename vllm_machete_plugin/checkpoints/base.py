"""The contract every checkpoint format module implements (gptq.py, awq.py,
compressed_tensors.py). A format module owns everything about its on-disk layout:
parsing/validating config.json's quantization_config, which layers are quantized,
the vLLM parameters that receive the tensors (so vLLM's weight loaders do the
merged-qkv/gate_up and tensor-parallel slicing), the exact unpacking into
CanonicalW4, and the exact packing from CanonicalW4 (used by the tiny checkpoint
builder and by round-trip tests)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Mapping, Optional

import torch

from ..canonical import CanonicalW4

if TYPE_CHECKING:
    from .naming import CheckpointModules


class CheckpointError(ValueError):
    """A checkpoint or config we cannot serve. Messages name the layer/tensor,
    the expected and actual value, and the fix."""


@dataclass(frozen=True)
class LayerScheme:
    """How one linear layer is quantized, resolved from the format's config."""
    bits: int
    group_size: int      # as in the checkpoint: -1 means channelwise
    sym: bool            # True: codes are u4b8 (zero point 8), no zeros tensor used
    act_order: bool      # a g_idx tensor is loaded and used


@dataclass(frozen=True)
class Partition:
    """Geometry of one layer partition, as vLLM hands it to create_weights."""
    k: int                          # input_size_per_partition
    output_sizes: tuple[int, ...]   # output_partition_sizes (per logical shard)
    k_full: int                     # input_size (whole layer)
    n_full: int                     # output_size (whole layer)

    @property
    def n(self) -> int:
        return sum(self.output_sizes)

    @property
    def k_split(self) -> bool:
        """Row-parallel layer whose K is split across tensor-parallel ranks."""
        return self.k != self.k_full

    def group_size(self, scheme: LayerScheme) -> int:
        """Canonical group size of this partition (channelwise -> K of the partition)."""
        return self.k if scheme.group_size == -1 else scheme.group_size


class CheckpointFormat:
    """One instance per model, built from the raw quantization_config dict. Must be
    picklable (it travels inside vLLM's config to engine and worker processes)."""
    name: ClassVar[str]              # the quant_method in config.json
    # The checkpoint's modules, when a scan of its headers decides which layers are
    # quantized (observe_checkpoint); every layer's modules must then be in it.
    scanned: Optional["CheckpointModules"] = None

    def __init__(self, raw: dict):
        raise NotImplementedError

    @classmethod
    def for_config(cls, raw: dict) -> "CheckpointFormat":
        """The format object for this quant_method's config (a format whose on-disk layout
        depends on the config returns the class for that layout)."""
        return cls(raw)

    def scheme_for(self, prefix: str, packed_modules_mapping: Mapping[str, list[str]]) -> Optional[LayerScheme]:
        """The scheme for the linear layer at `prefix` (vLLM module name), or None when
        the checkpoint leaves it unquantized. Fused layers (qkv_proj, gate_up_proj) are
        expanded through packed_modules_mapping; shards that disagree raise CheckpointError,
        and so do shards missing from a scanned checkpoint."""
        from .naming import same_for_all_shards, shard_names
        names = shard_names(prefix, packed_modules_mapping)
        if self.scanned is not None:
            self.scanned.check_present(prefix, names)
        return same_for_all_shards(prefix, names, [self._scheme_of_module(n) for n in names])

    def needs_checkpoint_scan(self) -> bool:
        """Whether the config leaves the quantized modules implicit, so that
        observe_checkpoint should be called (reading safetensors headers)."""
        return False

    def observe_checkpoint(self, modules: "CheckpointModules") -> None:
        """Called once with the checkpoint's modules (from the safetensors headers) when
        needs_checkpoint_scan(); not called when there are none (dummy weights)."""

    def apply_vllm_mapper(self, hf_to_vllm_mapper) -> None:
        """vLLM's model renames checkpoint modules (WeightsMapper): rename what the scan
        learned, so it is compared with vLLM's layer names."""
        if self.scanned is not None:
            self.scanned = self.scanned.mapped(hf_to_vllm_mapper)

    def _scheme_of_module(self, name: str) -> Optional[LayerScheme]:
        """The scheme of one checkpoint module (an unfused name like ...q_proj), or None."""
        raise NotImplementedError

    def create_weights(self, layer: torch.nn.Module, scheme: LayerScheme, part: Partition,
                       params_dtype: torch.dtype, weight_loader: Callable) -> None:
        """Register the checkpoint's tensors for this layer as vLLM parameters."""
        raise NotImplementedError

    def to_canonical(self, layer: torch.nn.Module, scheme: LayerScheme, part: Partition,
                     where: str) -> CanonicalW4:
        """Read the loaded parameters into CanonicalW4 (on their device). Raises
        CheckpointError naming `where` when a tensor is missing or malformed."""
        raise NotImplementedError

    @torch.no_grad()
    def fill_dummy(self, layer: torch.nn.Module, scheme: LayerScheme, part: Partition,
                   names: tuple[str, ...]) -> None:
        """load_format="dummy": vLLM filled float tensors with small random values and left
        integer ones uninitialised (any int32 is a valid word of 4-bit codes). Make the index
        tensors valid (g_idx [K]: a seeded act-order permutation, or k // g; weight_shape [2]:
        the layer's [N, K]) and mark every tensor loaded, so a model is fully quantized from
        config.json alone, act-order path included. Formats with more rules extend this."""
        from .params import mark_loaded

        g = part.group_size(scheme)
        gen = torch.Generator().manual_seed(part.k * 131 + part.n)
        for name in names:
            p = getattr(layer, name)
            if not p.dtype.is_floating_point and p.dim() == 1 and p.numel() == part.k:
                rows = torch.randperm(part.k, generator=gen) if scheme.act_order else torch.arange(part.k)
                g_idx = torch.empty(part.k, dtype=torch.int64)
                g_idx[rows] = torch.arange(part.k) // g
                p.data.copy_(g_idx.to(p.dtype))
            elif not p.dtype.is_floating_point and p.dim() == 1 and p.numel() == 2:
                p.data.copy_(torch.tensor([part.n_full, part.k_full], dtype=p.dtype))
            if hasattr(p, "vmp_loaded"):
                mark_loaded(p)

    @staticmethod
    def pack(w: CanonicalW4, scheme: LayerScheme, **kw) -> dict[str, torch.Tensor]:
        """Inverse of to_canonical for a whole (unpartitioned) layer: the tensors exactly
        as the format's own tool writes them (suffixes like 'qweight', 'scales')."""
        raise NotImplementedError

    @staticmethod
    def quantization_config(scheme: LayerScheme, **kw) -> dict:
        """The config.json quantization_config this format's tool writes for `scheme`."""
        raise NotImplementedError
