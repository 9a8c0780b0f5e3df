"""Module-name helpers shared by the format modules: vLLM fuses checkpoint modules
(q_proj, k_proj, v_proj -> qkv_proj) and every format's skip / target rules are written
against the checkpoint's names, so rules are evaluated per shard and must agree."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from .base import CheckpointError, LayerScheme


def shard_names(prefix: str, packed_modules_mapping: Mapping[str, list[str]]) -> list[str]:
    """Checkpoint module names behind a vLLM layer: ...qkv_proj -> ...q_proj, ...k_proj, ...v_proj."""
    head, _, last = prefix.rpartition(".")
    shards = packed_modules_mapping.get(last)
    if not shards:
        return [prefix]
    return [f"{head}.{s}" if head else s for s in shards]


def same_for_all_shards(prefix: str, names: list[str],
                        schemes: list[Optional[LayerScheme]]) -> Optional[LayerScheme]:
    """The one scheme of a fused layer; CheckpointError when its shards disagree."""
    if any(s != schemes[0] for s in schemes[1:]):
        detail = ", ".join(f"{n}: {s if s else 'unquantized'}" for n, s in zip(names, schemes))
        raise CheckpointError(
            f"{prefix}: vLLM fuses {names} into one layer, but the checkpoint quantizes them "
            f"differently ({detail}). A fused layer needs one scheme for all its shards.")
    return schemes[0]


def is_lm_head(name: str) -> bool:
    return name.rpartition(".")[2] == "lm_head"


@dataclass(frozen=True)
class CheckpointModules:
    """The checkpoint's modules as its safetensors headers list them (no tensor is read):
    `quantized` hold integer tensors (qweight, qzeros, ...), `with_weight` a `.weight`.
    A linear module in neither is missing from the checkpoint."""
    quantized: frozenset
    with_weight: frozenset

    @classmethod
    def from_dtypes(cls, dtypes: Mapping[str, str]) -> "CheckpointModules":
        """From {tensor name: safetensors dtype ('I32', 'F16', ...)}."""
        return cls(frozenset(n.rsplit(".", 1)[0] for n, d in dtypes.items() if d.startswith(("I", "U"))),
                   frozenset(n.rsplit(".", 1)[0] for n in dtypes if n.endswith(".weight")))

    def mapped(self, hf_to_vllm_mapper) -> "CheckpointModules":
        """The same modules under vLLM's names (the model's WeightsMapper, as its loader applies it)."""
        return CheckpointModules(frozenset(hf_to_vllm_mapper.apply_list(sorted(self.quantized))),
                                 frozenset(hf_to_vllm_mapper.apply_list(sorted(self.with_weight))))

    def holds(self, name: str) -> bool:
        """Whether vLLM module `name`, or a dot-suffix of it (vLLM may nest the checkpoint's
        modules deeper), has integer tensors or a .weight in the checkpoint."""
        parts = name.split(".")
        return any(tail in self.quantized or tail in self.with_weight
                   for tail in (".".join(parts[i:]) for i in range(len(parts))))

    def check_present(self, prefix: str, names: list[str]) -> None:
        """CheckpointError when a checkpoint module behind vLLM layer `prefix` (its shards
        `names`) has no tensors: vLLM would run the layer on a weight nothing filled."""
        missing = [n for n in names if not self.holds(n)]
        if not missing:
            return
        present = [n for n in names if n not in missing]
        fused = f" vLLM fuses {names} into {prefix}; the checkpoint has tensors for {present} only." if present else ""
        raise CheckpointError(
            f"{prefix}: the checkpoint has no tensors for {', '.join(missing)}: neither integer "
            f"(quantized) tensors such as '{missing[0]}.qweight' nor an unquantized "
            f"'{missing[0]}.weight'.{fused} The checkpoint is incomplete (a safetensors file is "
            f"missing, or tensors were dropped when it was written or converted). Fix: re-download "
            f"or re-export the checkpoint.")
