"""Backend registry and selection. Serving backends are tried in priority order; the
first whose can_implement() accepts the layer on this GPU wins, and when none does
the error lists every backend's reason. The reference backend is only used when
forced (VMP_BACKEND=reference), never as a silent fallback."""
from __future__ import annotations

import os

import torch

from .base import Backend, LayerSpec
from .reference import ReferenceBackend

# Priority order for serving (fastest first where both apply).
SERVING_BACKENDS: list[type[Backend]] = []
ALL_BACKENDS: dict[str, type[Backend]] = {"reference": ReferenceBackend}

ENV_FORCE = "VMP_BACKEND"            # force one backend by name
ENV_DISABLE = "VMP_DISABLED_BACKENDS"  # comma-separated names to skip


def add_backend(cls: type[Backend], priority: int | None = None) -> type[Backend]:
    """Register `cls`; serving backends go to position `priority` (default: last)."""
    ALL_BACKENDS[cls.name] = cls
    if cls.serving and cls not in SERVING_BACKENDS:
        SERVING_BACKENDS.insert(len(SERVING_BACKENDS) if priority is None else priority, cls)
    return cls


class NoBackendError(RuntimeError):
    pass


def device_capability() -> int:
    """major*10+minor of the current CUDA device, or -1 without one."""
    if not torch.cuda.is_available():
        return -1
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


def _describe_capability(cap: int) -> str:
    return "no CUDA GPU" if cap < 0 else f"sm_{cap}"


def select(spec: LayerSpec, where: str, capability: int | None = None) -> type[Backend]:
    cap = device_capability() if capability is None else capability
    forced = os.environ.get(ENV_FORCE, "").strip()
    if forced:
        if forced not in ALL_BACKENDS:
            raise NoBackendError(f"{ENV_FORCE}={forced!r} is not a backend; choose one of {sorted(ALL_BACKENDS)}")
        candidates = [ALL_BACKENDS[forced]]
    else:
        disabled = {s.strip() for s in os.environ.get(ENV_DISABLE, "").split(",") if s.strip()}
        candidates = [b for b in SERVING_BACKENDS if b.name not in disabled]
    reasons = []
    for b in candidates:
        if not (b.min_capability <= cap < b.max_capability) and b.min_capability > 0:
            reasons.append(f"{b.name}: needs sm_{b.min_capability}"
                           + (f" to sm_{b.max_capability - 1}" if b.max_capability < 10_000 else " or newer")
                           + f", this is {_describe_capability(cap)}")
            continue
        ok, why = b.can_implement(spec, cap)
        if ok:
            ok, why = b.built_for(cap)
        if ok:
            return b
        reasons.append(f"{b.name}: {why}")
    if not candidates:
        reasons.append(f"every backend is disabled by {ENV_DISABLE}")
    raise NoBackendError(
        f"vllm-machete-plugin has no kernel for layer {where} ({spec.describe()}) on "
        f"{_describe_capability(cap)}: " + "; ".join(reasons) +
        ". Fix: run on a supported GPU (sm_80+: Marlin, sm_90: Machete), use a supported "
        "checkpoint layout, or serve it with vLLM's built-in path (drop --quantization machete).")


def kernel_env() -> dict[str, str]:
    """The VMP_* settings that change which kernels a model runs (set and non-empty)."""
    from .machete import ENV_SCHEDULE
    names = (ENV_FORCE, ENV_DISABLE, ENV_SCHEDULE)
    return {n: os.environ[n] for n in names if os.environ.get(n, "").strip()}


# Backends register themselves with add_backend on import (after add_backend exists).
from .marlin import MarlinBackend  # noqa: E402,F401
from . import machete as _machete  # noqa: E402,F401
