"""vllm-machete-plugin: a vLLM quantization method `machete` running our own W4A16
kernels (Machete on Hopper, Marlin on Ampere and newer) for GPTQ, AWQ and
compressed-tensors checkpoints.

Importing this package does not import vLLM; vLLM calls `register()` through the
`vllm.general_plugins` entry point in every process it starts.
"""
__version__ = "0.1.0"

QUANTIZATION_NAME = "machete"


def register() -> None:
    """Register the `machete` quantization config with vLLM. Idempotent.

    vLLM's torch.compile cache (AOT-compiled graphs loaded from disk without re-tracing)
    is keyed on vLLM's own settings only, so a graph compiled under other VMP_* kernel
    settings would be reused. When any is set, the cache is turned off for this run
    (VLLM_DISABLE_COMPILE_CACHE=1, inherited by the processes vLLM starts).

    With VMP_STARTUP_PHASES=1 (set by `bench soak` for every side) the engine start's
    phases are timed and logged (bench/startup.py)."""
    import os

    from .backends import kernel_env
    from .config import register_config

    register_config()
    if kernel_env() and "VLLM_DISABLE_COMPILE_CACHE" not in os.environ:
        os.environ["VLLM_DISABLE_COMPILE_CACHE"] = "1"
    global _phases_logged
    from .bench import startup
    if os.environ.get(startup.ENV) == "1" and not _phases_logged:
        startup.install(startup.log_sink(), dynamo_from_log=False)
        _phases_logged = True


_phases_logged = False  # register() installed the startup-phase timers in this process
