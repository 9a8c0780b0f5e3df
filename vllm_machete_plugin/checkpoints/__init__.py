"""Checkpoint formats: one module per on-disk format, all producing CanonicalW4."""
from __future__ import annotations

from .auto_round import AutoRoundFormat
from .awq import AWQFormat
from .base import CheckpointError, CheckpointFormat
from .compressed_tensors import CompressedTensorsFormat
from .gptq import GPTQFormat

FORMATS: dict[str, type[CheckpointFormat]] = {
    "gptq": GPTQFormat,
    "awq": AWQFormat,
    "compressed-tensors": CompressedTensorsFormat,
    "auto-round": AutoRoundFormat,
}


def format_for(raw_quant_config: dict) -> CheckpointFormat:
    """The format object for a config.json quantization_config dict."""
    method = str(raw_quant_config.get("quant_method", "")).lower().replace("_", "-")
    if method not in FORMATS:
        raise CheckpointError(
            f"quantization_config quant_method={raw_quant_config.get('quant_method')!r} is not "
            f"supported; supported formats: {', '.join(FORMATS)} (4-bit weights, 16-bit activations).")
    return FORMATS[method].for_config(raw_quant_config)
