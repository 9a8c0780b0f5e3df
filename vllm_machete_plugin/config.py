"""The `machete` QuantizationConfig: claims GPTQ / AWQ / compressed-tensors / AutoRound W4A16
checkpoints, but only when the user asked for `--quantization machete`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from vllm.model_executor.layers.quantization import (get_quantization_config,
                                                     register_quantization_config)
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig

from . import QUANTIZATION_NAME
from .checkpoints import FORMATS, files, format_for
from .checkpoints.base import CheckpointError, CheckpointFormat
from .checkpoints.naming import CheckpointModules

LEGACY_CONFIG_FILES = ("quantize_config.json", "quant_config.json")  # AutoGPTQ, AutoAWQ


def normalize_quant_config(raw: dict) -> dict:
    """Fill in quant_method for legacy files that lack it (quantize_config.json of
    AutoGPTQ, quant_config.json of AutoAWQ) and normalise its spelling."""
    raw = dict(raw)
    qm = str(raw.get("quant_method", "")).lower().replace("compressed_tensors", "compressed-tensors")
    if not qm:
        if "w_bit" in raw or "zero_point" in raw or "version" in raw:
            qm = "awq"
        elif "bits" in raw:
            qm = "gptq"
    raw["quant_method"] = qm
    return raw


class MacheteConfig(QuantizationConfig):
    """One per model. Holds the raw quantization_config and the parsed format
    (both picklable: vLLM ships this object to engine and worker processes)."""

    def __init__(self, raw: Optional[dict] = None):
        super().__init__()
        # raw None: config.json has no quantization_config, and vLLM, finding no
        # get_config_filenames(), calls MacheteConfig(); maybe_update_config, which knows the
        # model, then reads a legacy config file or refuses the checkpoint.
        self.raw = None if raw is None else normalize_quant_config(raw)
        self.fmt: Optional[CheckpointFormat] = None if raw is None else format_for(self.raw)

    def __repr__(self) -> str:
        return f"MacheteConfig(format={self.fmt.name if self.fmt else None})"

    def get_name(self) -> str:
        return QUANTIZATION_NAME

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.float16, torch.bfloat16]

    @classmethod
    def get_min_capability(cls) -> int:
        return 80

    @staticmethod
    def get_config_filenames() -> list[str]:
        # Consulted by vLLM only when config.json has no quantization_config. Empty, so vLLM
        # builds MacheteConfig() instead of failing with "Cannot find the config file";
        # maybe_update_config reads LEGACY_CONFIG_FILES itself (old GPTQ/AWQ repos).
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "MacheteConfig":
        return cls(config)

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg, user_quant, hf_config=None) -> Optional[str]:
        """Claim the checkpoint only when the user asked for `machete`; then refuse
        unsupported checkpoints here, at config time, with the reason."""
        if user_quant != QUANTIZATION_NAME:
            return None
        _checked_format(normalize_quant_config(hf_quant_cfg or {}))
        return QUANTIZATION_NAME

    def maybe_update_config(self, model_name: str, hf_config=None, revision: Optional[str] = None) -> None:
        """vLLM calls this once the config exists, before any weight is read:
        - without a quantization_config in config.json, read a legacy config file or refuse;
        - a local checkpoint's safetensors files are checked (checkpoints/files.py);
        - when the format's config leaves the quantized modules implicit (GPTQ without
          modules_in_block_to_quantize), tell it the checkpoint's modules, from the headers."""
        if self.fmt is None:
            self.raw = _legacy_config(model_name, revision)
            self.fmt = _checked_format(self.raw)
        local = Path(model_name).is_dir()
        dtypes = files.checked_tensor_dtypes(Path(model_name)) if local else None
        if not self.fmt.needs_checkpoint_scan():
            return
        if dtypes is None:
            from vllm.transformers_utils.config import get_safetensors_params_metadata
            dtypes = {name: str(info.get("dtype", ""))
                      for name, info in get_safetensors_params_metadata(model_name, revision=revision).items()}
        if dtypes:
            self.fmt.observe_checkpoint(CheckpointModules.from_dtypes(dtypes))

    def apply_vllm_mapper(self, hf_to_vllm_mapper) -> None:
        self.fmt.apply_vllm_mapper(hf_to_vllm_mapper)

    def get_quant_method(self, layer: torch.nn.Module, prefix: str):
        if isinstance(layer, LinearBase):
            scheme = self.fmt.scheme_for(prefix, self.packed_modules_mapping)
            if scheme is None:
                return UnquantizedLinearMethod()
            from .linear_method import MacheteLinearMethod
            return MacheteLinearMethod(self, scheme, prefix)
        if _is_moe(layer):
            raise CheckpointError(
                f"{prefix}: mixture-of-experts layers are not supported by --quantization "
                f"{QUANTIZATION_NAME} yet. Fix: serve this model with vLLM's built-in method "
                f"(drop --quantization {QUANTIZATION_NAME}).")
        return None  # embeddings, lm_head, attention: vLLM's unquantized defaults


def _checked_format(raw: dict) -> CheckpointFormat:
    """The format of a normalised quantization config; CheckpointError naming what is
    unsupported (format_for validates the whole config)."""
    if raw["quant_method"] not in FORMATS:
        raise CheckpointError(
            f"--quantization {QUANTIZATION_NAME} serves {', '.join(sorted(FORMATS))} W4A16 "
            f"checkpoints; this checkpoint's quant_method is {raw['quant_method'] or 'missing'!r}. "
            f"Fix: drop --quantization {QUANTIZATION_NAME} to use vLLM's own method for it.")
    return format_for(raw)


def _legacy_config(model_name: str, revision: Optional[str]) -> dict:
    """The quantization config of a checkpoint whose config.json has none: AutoGPTQ's
    quantize_config.json or AutoAWQ's quant_config.json, else CheckpointError."""
    from vllm.transformers_utils.repo_utils import get_hf_file_to_dict
    for name in LEGACY_CONFIG_FILES:
        raw = get_hf_file_to_dict(name, model_name, revision or "main")
        if raw is not None:
            return normalize_quant_config(raw)
    raise CheckpointError(
        f"{model_name}: --quantization {QUANTIZATION_NAME} needs a quantized checkpoint, but its "
        f"config.json has no quantization_config (nor compression_config) and there is no "
        f"{' or '.join(LEGACY_CONFIG_FILES)}: this looks like an unquantized model. Fix: drop "
        f"--quantization {QUANTIZATION_NAME} to serve it unquantized, or point vLLM at the GPTQ, "
        f"AWQ or compressed-tensors checkpoint.")


def _is_moe(layer: torch.nn.Module) -> bool:
    try:
        from vllm.model_executor.layers.fused_moe import RoutedExperts
    except ImportError:  # pragma: no cover - layout of other vLLM versions
        return False
    return isinstance(layer, RoutedExperts)


def register_config() -> None:
    """Idempotent: vLLM loads plugins once per process, but tests and users may call
    register() again; re-registering would only log, but we skip it entirely."""
    try:
        registered = get_quantization_config(QUANTIZATION_NAME) is MacheteConfig
    except ValueError:  # name unknown to vLLM yet
        registered = False
    if not registered:
        register_quantization_config(QUANTIZATION_NAME)(MacheteConfig)
