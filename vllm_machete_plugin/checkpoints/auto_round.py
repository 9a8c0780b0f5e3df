"""AutoRound checkpoints (intel/auto-round), quant_method "auto-round": 4-bit integer weights in GPTQ's
or AWQ's tensors, by packing_format, under AutoRound's own config.

  packing_format "auto_round:auto_gptq" (the default): GPTQ v1's tensors (gptq.py: qweight packed
      along K, qzeros storing z - 1 as AutoRound's GPTQ packer writes them, scales, g_idx). A
      symmetric module's zero points (8) are stored as 7; stored as 8 they are accepted too, where
      every stored zero point of the module agrees. sym=false is served as GPTQ asym is (vLLM 0.26.0
      refuses it for this packing on CUDA).
  packing_format "auto_round:auto_awq": AutoAWQ's GEMM tensors (awq.py), whose zero points are
      always stored (8 for a symmetric module), so every module is served with them.
The config, for both:
  bits, group_size, sym, data_type ("int")  the default of every quantized module
  extra_config {module: {bits, group_size, sym, data_type}}
                                           per-module overrides; a key is a module name (also
                                           matched with a "model." prefix) or a regular expression
                                           (matched with re.search); bits >= 16 leaves the module
                                           unquantized
  block_name_to_quantize / to_quant_block_names
                                           only modules under these prefixes are quantized
Refused with the reason: other packing formats, data types other than "int", a quantized lm_head.
"""
from __future__ import annotations

import re
from typing import Optional

import torch

from ..canonical import SYMMETRIC_ZERO, CanonicalW4
from . import params as P
from .awq import AWQFormat
from .base import CheckpointError, LayerScheme
from .gptq import GPTQFormat
from .naming import is_lm_head

GPTQ_PACKING = "auto_round:auto_gptq"
AWQ_PACKING = "auto_round:auto_awq"
_REGEX_CHARS = set(r"*+?^$()[]{}|\\")
_WHERE = "AutoRound quantization_config"


class _AutoRoundRules:
    """AutoRound's per-module rules over the packing's default scheme (self.bits,
    self.group_size, self.sym), shared by both packings."""

    def _read_rules(self, raw: dict) -> None:
        blocks = raw.get("block_name_to_quantize", raw.get("to_quant_block_names"))
        blocks = blocks.split(",") if isinstance(blocks, str) else list(blocks or [])
        # Older exports list one list of block names per model part.
        self.blocks = [b for x in blocks for b in (x if isinstance(x, (list, tuple)) else [x])]
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

    def _rules_scheme(self, name: str) -> Optional[LayerScheme]:
        """The module's scheme by the rules, or None where they leave it unquantized. Outside
        block_name_to_quantize a module is unquantized unless an extra_config rule gives it bits
        (AutoRound's exporter writes one for every module it quantized there); such a rule's
        defaults are then a channelwise, symmetric quantization, as vLLM reads them."""
        if is_lm_head(name):
            return None
        in_blocks = not self.blocks or any(name.startswith(b) for b in self.blocks)
        key, rule = self._rule_of(name)
        bits = int(rule.get("bits", self.bits if in_blocks else 16))
        if bits >= 16:
            return None
        where = name if key is None else f"{name} (AutoRound extra_config {key!r})"
        _check_data_type(rule, where)
        scheme = self._packed_scheme(bits, int(rule.get("group_size", self.group_size if in_blocks else -1)),
                                     bool(rule.get("sym", self.sym if in_blocks else True)))
        P.check_bits(scheme.bits, where)
        P.check_group_size(scheme.group_size, where)
        return scheme


class AutoRoundFormat(_AutoRoundRules, GPTQFormat):
    """GPTQ packing; format_for builds AutoRoundAWQFormat for AWQ packing."""
    name = "auto-round"

    def __init__(self, raw: dict):
        _check_config(raw, GPTQ_PACKING)
        super().__init__({"bits": raw["bits"], "group_size": raw["group_size"], "sym": bool(raw.get("sym", True)),
                          "desc_act": bool(raw.get("desc_act", False)), "checkpoint_format": "gptq"})
        self._read_rules(raw)

    @classmethod
    def for_config(cls, raw: dict) -> "AutoRoundFormat | AutoRoundAWQFormat":
        packing = raw.get("packing_format", GPTQ_PACKING)
        return AutoRoundAWQFormat(raw) if packing == AWQ_PACKING else cls(raw)

    def _packed_scheme(self, bits: int, group_size: int, sym: bool) -> LayerScheme:
        return self._scheme(bits, group_size, sym, self.desc_act)

    def _scheme_of_module(self, name: str) -> Optional[LayerScheme]:
        if self.modules_in_block and not any(m in name for m in self.modules_in_block):
            return None  # the checkpoint holds no integer tensors for it (GPTQFormat.observe_checkpoint)
        return self._rules_scheme(name)

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
    def pack(w: CanonicalW4, scheme: LayerScheme, packing_format: str = GPTQ_PACKING, **kw) -> dict:
        """The tensors AutoRound writes for this packing (GPTQ v1's, or AutoAWQ's GEMM ones)."""
        if packing_format == AWQ_PACKING:
            return AWQFormat.pack(w, scheme)
        return GPTQFormat.pack(w, scheme, checkpoint_format="gptq")

    @staticmethod
    def quantization_config(scheme: LayerScheme, packing_format: str = GPTQ_PACKING,
                            extra_config: Optional[dict] = None, **kw) -> dict:
        """AutoRound's quantization_config for its auto_round format."""
        out = {"quant_method": "auto-round", "packing_format": packing_format, "bits": scheme.bits,
               "group_size": scheme.group_size, "sym": scheme.sym, "data_type": "int"}
        if extra_config:
            out["extra_config"] = extra_config
        return out


class AutoRoundAWQFormat(_AutoRoundRules, AWQFormat):
    """AWQ packing: AutoAWQ's GEMM tensors, zero points always stored."""
    name = "auto-round"

    def __init__(self, raw: dict):
        _check_config(raw, AWQ_PACKING)
        super().__init__({"bits": raw["bits"], "group_size": raw["group_size"], "zero_point": True,
                          "version": "gemm"})
        self.bits, self.group_size, self.sym = int(raw["bits"]), int(raw["group_size"]), bool(raw.get("sym", True))
        self._read_rules(raw)

    def _packed_scheme(self, bits: int, group_size: int, sym: bool) -> LayerScheme:
        return LayerScheme(bits=bits, group_size=group_size, sym=False, act_order=False)

    def _scheme_of_module(self, name: str) -> Optional[LayerScheme]:
        return self._rules_scheme(name)


def _is_regex(key: str) -> bool:
    return any(c in _REGEX_CHARS for c in key)


def _check_config(raw: dict, packing: str) -> None:
    """What both packings require of the config, beyond their base format's checks."""
    found = raw.get("packing_format", GPTQ_PACKING)
    if found != packing:
        raise CheckpointError(
            f"{_WHERE}: packing_format={found!r} is not supported; supported: {GPTQ_PACKING!r} and "
            f"{AWQ_PACKING!r}. Fix: export with AutoRound's auto_round format and one of them, or serve "
            f"this checkpoint without --quantization machete.")
    _check_data_type(raw, _WHERE)
    missing = [key for key in ("bits", "group_size") if key not in raw]
    if missing:
        raise CheckpointError(f"{_WHERE}: required keys {missing} are missing.")


def _check_data_type(rule: dict, where: str) -> None:
    """The data type of a config, or of one extra_config rule: integers only."""
    data_type = rule.get("data_type", "int")
    if data_type != "int":
        raise CheckpointError(
            f"{where}: data_type={data_type!r} is not supported; --quantization machete serves 4-bit "
            f"integer weights (data_type 'int'). Fix: serve this checkpoint without --quantization machete.")
