"""Module-name helpers shared by the format modules: vLLM fuses checkpoint modules
(q_proj, k_proj, v_proj -> qkv_proj) and every format's skip / target rules are written
against the checkpoint's names, so rules are evaluated per shard and must agree."""
from __future__ import annotations

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
