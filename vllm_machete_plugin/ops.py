"""Python side of the `vmp` op namespace: loading the compiled kernels, the clear
error when they were not built, and the fake (meta) implementation of every op so
torch.compile and CUDA graphs in vLLM can trace them. Schemas live in C++
(kernels/torch_bindings.cpp and each family's *_bindings.cpp)."""
from __future__ import annotations

import functools

import torch

NAMESPACE = "vmp"


class KernelsNotBuiltError(RuntimeError):
    pass


@functools.lru_cache(maxsize=1)
def _load() -> str:
    """Import the extensions once; return '' on success or the import error text.
    _C (bindings + Marlin, sm_80..sm_90) is required; _machete_C (sm_90a only) is
    built only when the build targets Hopper, and its absence is reported by the
    Machete backend's can_implement instead."""
    try:
        from . import _C  # noqa: F401  (registers torch.ops.vmp.*)
    except ImportError as e:
        return str(e)
    try:
        from . import _machete_C  # noqa: F401
    except ImportError:
        pass
    _register_fakes()
    return ""


def has_op(name: str) -> bool:
    """Whether vmp::<name> is registered (call after kernels_available())."""
    try:
        torch._C._dispatch_find_schema_or_throw(f"{NAMESPACE}::{name}", "")
    except RuntimeError:
        return False
    return True


def kernels_available() -> bool:
    return _load() == ""


def require_kernels(what: str) -> None:
    err = _load()
    if err:
        raise KernelsNotBuiltError(
            f"{what} needs the compiled CUDA kernels of vllm-machete-plugin, but they were not "
            f"built (import of vllm_machete_plugin._C failed: {err}). The package was installed "
            f"without nvcc or without a CUDA-enabled torch. Fix: on a machine with nvcc 13.0 and "
            f"torch 2.11.0+cu130, reinstall with `pip install --no-build-isolation -e .` (see README).")


def build_info() -> str:
    require_kernels("build_info")
    return torch.ops.vmp.build_info()


def built_archs() -> tuple[str, ...]:
    """The architectures _C was compiled for (machine code only, no PTX), e.g. ("80", "86", "89",
    "90"), from build_info's "archs=80,86,89,90"; () when the build does not say. An "a" suffix
    (sm_90a) marks code for that exact GPU, an "f" suffix (sm_100f) code for its family."""
    listed = (a.strip() for a in build_info().partition("archs=")[2].split(","))
    return tuple(a for a in listed if a.rstrip("af").isdigit())


def runs_on(capability: int) -> bool:
    """Whether _C has machine code this GPU runs: code for sm_XY (or sm_XYf) runs on sm_XZ with
    Z >= Y and on no other major version, so a GPU newer than the build (sm_100, sm_120 under the
    default build) has none; code for sm_XYa runs on sm_XY only."""
    archs = built_archs()

    def runs(arch: str) -> bool:
        n = int(arch.rstrip("af"))
        return n == capability if arch.endswith("a") else n // 10 == capability // 10 and n <= capability
    return not archs or any(runs(a) for a in archs)


_FAKES: list = []


def fake_impl(op_name: str):
    """Decorator: record a fake impl for vmp::<op_name>, registered when _C loads."""
    def deco(fn):
        _FAKES.append((f"{NAMESPACE}::{op_name}", fn))
        return fn
    return deco


def _register_fakes() -> None:
    # Importing the backends module fills _FAKES with each family's fakes.
    from . import backends  # noqa: F401
    for qualname, fn in _FAKES:
        if has_op(qualname.split("::")[1]):  # an extension that was not built has no ops
            torch.library.register_fake(qualname)(fn)
