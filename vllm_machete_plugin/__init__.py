"""vllm-machete-plugin: a vLLM quantization method `machete` running our own W4A16
kernels (Machete on Hopper, Marlin on Ampere and newer) for GPTQ, AWQ and
compressed-tensors checkpoints.

Importing this package does not import vLLM; vLLM calls `register()` through the
`vllm.general_plugins` entry point in every process it starts.
"""
__version__ = "0.1.0"

QUANTIZATION_NAME = "machete"


def register() -> None:
    """Register the `machete` quantization config with vLLM. Idempotent."""
    from .config import register_config

    register_config()
