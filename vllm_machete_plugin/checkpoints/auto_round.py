"""AutoRound checkpoints (intel/auto-round), quant_method "auto-round" with packing_format
"auto_round:auto_gptq": 4-bit integer weights in GPTQ's tensors under AutoRound's own config.

The tensors are GPTQ v1's (gptq.py: qweight packed along K, qzeros storing z - 1 as AutoRound's GPTQ
packer writes them, scales, g_idx); the config differs:
  bits, group_size, sym, data_type ("int")  the default of every quantized module
  extra_config {module: {bits, group_size, sym, data_type}}
                                           per-module overrides; a key is a module name (also
                                           matched with a "model." prefix) or a regular expression
                                           (matched with re.search); bits >= 16 leaves the module
                                           unquantized
  block_name_to_quantize / to_quant_block_names
                                           only modules under these prefixes are quantized
A symmetric module's zero points are 8, stored as 7; stored as 8 (no - 1) they are accepted too,
where every stored zero point of the module agrees. sym=false is served as GPTQ asym is (vLLM 0.26.0
refuses it for this packing on CUDA). Refused with the reason: other packing formats, data types
other than "int", and a quantized lm_head.
"""
from __future__ import annotations

import re
from typing import Optional

import torch

from ..canonical import SYMMETRIC_ZERO
from . import params as P
from .base import CheckpointError, LayerScheme
from .gptq import GPTQFormat
from .naming import is_lm_head

GPTQ_PACKING = "auto_round:auto_gptq"
_REGEX_CHARS = set(r"*+?^$()[]{}|\\")
_WHERE = "AutoRound quantization_config"


class AutoRoundFormat(GPTQFormat):
    name = "auto-round"

    def __init__(self, raw: dict):
        packing = raw.get("packing_format", GPTQ_PACKING)
        if packing != GPTQ_PACKING:
            raise CheckpointError(
                f"{_WHERE}: packing_format={packing!r} is not supported; only {GPTQ_PACKING!r} (GPTQ's "
                f"layout) is. Fix: export with AutoRound's auto_round format and GPTQ packing, or serve "
                f"this checkpoint without --quantization machete.")
        _check_data_type(raw, _WHERE)
        missing = [key for key in ("bits", "group_size") if key not in raw]
        if missing:
            raise CheckpointError(f"{_WHERE}: required keys {missing} are missing.")
        super().__init__({"bits": raw["bits"], "group_size": raw["group_size"], "sym": bool(raw.get("sym", True)),
                          "desc_act": bool(raw.get("desc_act", False)), "checkpoint_format": "gptq"})
        blocks = raw.get("block_name_to_quantize", raw.get("to_quant_block_names"))
        self.blocks = blocks.split(",") if isinstance(blocks, str) else list(blocks or [])
        self.extra = dict(raw.get("extra_config") or {})
        for key, rule in self.extra.items():
            if _is_regex(key):
                try:
                    re.compile(key)
                except re.error as e:
                    raise CheckpointError(f"{_WHERE}: extra_config key {key!r} is not a valid regex: {e}") from e
            if is_lm_head(key) and int((rule or {}).get("bits", 16)) < 16:
                raise CheckpointError(
                    f"{_WHERE}: extra_config quantizes {key!r} to {rule.get('bits')} bits; a quantized "
                    f"lm_head is not supported, we serve it unquantized. Fix: export with lm_head left "
                    f"in 16 bits.")

    def apply_vllm_mapper(self, hf_to_vllm_mapper) -> None:
        super().apply_vllm_mapper(hf_to_vllm_mapper)
        self.blocks = hf_to_vllm_mapper.apply_list(self.blocks)
        self.extra = hf_to_vllm_mapper.apply_dict(self.extra)

    def _rule_of(self, name: str) -> tuple[Optional[str], dict]:
        """(extra_config key, its overrides) for module `name`: an exact key first, then the
        first regular expression that matches; (None, {}) when none does."""
        for key in (name, f"model.{name}"):
            if key in self.extra:
                return key, dict(self.extra[key] or {})
        for key, rule in self.extra.items():
            if _is_regex(key) and re.search(key, name):
                return key, dict(rule or {})
        return None, {}

    def _scheme_of_module(self, name: str) -> Optional[LayerScheme]:
        if is_lm_head(name):
            return None
        if self.modules_in_block and not any(m in name for m in self.modules_in_block):
            return None  # the checkpoint holds no integer tensors for it (GPTQFormat.observe_checkpoint)
        if self.blocks and not any(name.startswith(b) for b in self.blocks):
            return None
        key, rule = self._rule_of(name)
        bits = int(rule.get("bits", self.bits))
        if bits >= 16:
            return None
        where = name if key is None else f"{name} (AutoRound extra_config {key!r})"
        _check_data_type(rule, where)
        scheme = self._scheme(bits, int(rule.get("group_size", self.group_size)), bool(rule.get("sym", self.sym)),
                              self.desc_act)
        P.check_bits(scheme.bits, where)
        P.check_group_size(scheme.group_size, where)
        return scheme

    def _zero_points(self, checks: P.Checks, stored: torch.Tensor, scheme: LayerScheme,
                     where: str) -> Optional[torch.Tensor]:
        """sym: the stored zero points must all be 7 (8 in GPTQ v1's encoding) or all be 8; returns
        None (no zeros tensor). Otherwise GPTQ v1's zero points (stored z - 1)."""
        if not scheme.sym:
            return super()._zero_points(checks, stored, scheme, where)

        def fail() -> None:
            found = sorted(torch.unique(stored).tolist())
            raise CheckpointError(
                f"{where}: the AutoRound config says sym=true, but 'qzeros' hold zero points {found} "
                f"(expected all {SYMMETRIC_ZERO - 1} or all {SYMMETRIC_ZERO}, the symmetric zero point as "
                f"GPTQ v1 stores it or as is). The checkpoint is asymmetric or corrupt; re-export it.")
        first = stored.flatten()[:1]
        checks.add((stored == first).all() & ((first == SYMMETRIC_ZERO - 1) | (first == SYMMETRIC_ZERO)).all(),
                   fail)
        return None

    @staticmethod
    def quantization_config(scheme: LayerScheme, extra_config: Optional[dict] = None, **kw) -> dict:
        """AutoRound's quantization_config for its auto_round format with GPTQ packing."""
        out = {"quant_method": "auto-round", "packing_format": GPTQ_PACKING, "bits": scheme.bits,
               "group_size": scheme.group_size, "sym": scheme.sym, "data_type": "int"}
        if extra_config:
            out["extra_config"] = extra_config
        return out


def _is_regex(key: str) -> bool:
    return any(c in _REGEX_CHARS for c in key)


def _check_data_type(rule: dict, where: str) -> None:
    """The data type of a config, or of one extra_config rule: integers only."""
    data_type = rule.get("data_type", "int")
    if data_type != "int":
        raise CheckpointError(
            f"{where}: data_type={data_type!r} is not supported; --quantization machete serves 4-bit "
            f"integer weights (data_type 'int'). Fix: serve this checkpoint without --quantization machete.")
