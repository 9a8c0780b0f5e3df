"""Builds the CUDA kernels in kernels/ as vllm_machete_plugin._C when nvcc and a
CUDA-enabled torch are present; otherwise installs the pure-Python package and
every op raises KernelsNotBuiltError (see vllm_machete_plugin/ops.py).

Environment:
  VMP_CUDA_ARCHS   semicolon list of SM numbers for the Marlin kernels
                   (default "80;86;89;90"); "90" builds fastest on a Hopper box.
  VMP_SKIP_KERNELS=1  build no kernels.
  MAX_JOBS         parallel nvcc jobs (torch's BuildExtension honours it).
  PYTORCH_NVCC     compiler launcher, e.g. "ccache nvcc".
"""
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_toolchain():
    if os.environ.get("VMP_SKIP_KERNELS") == "1":
        return None, "VMP_SKIP_KERNELS=1"
    # torch guesses CUDA_HOME from `which nvcc`, which is wrong when nvcc is a wrapper
    # script in /usr/local/bin; prefer the toolkit directory when nothing is set.
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and \
            os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        return None, "torch is not installed in the build environment"
    if torch.version.cuda is None:
        return None, f"torch {torch.__version__} has no CUDA"
    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return None, "nvcc not found (set CUDA_HOME)"
    return torch, ""


def _ext_modules():
    torch, why = _cuda_toolchain()
    if torch is None:
        print(f"[vllm-machete-plugin] building WITHOUT CUDA kernels: {why}")
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    archs = [a.strip() for a in os.environ.get("VMP_CUDA_ARCHS", "80;86;89;90").split(";") if a.strip()]
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = ["kernels/torch_bindings.cpp"] + rel("kernels/marlin/*.cpp") + rel("kernels/marlin/*.cu")
    define = [("VMP_CUDA_ARCHS", '"' + ",".join(archs) + '"')]
    ext = CUDAExtension(
        name="vllm_machete_plugin._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "kernels")],
        define_macros=define,
        extra_compile_args={
            "cxx": ["-O3", "-std=c++17"],
            "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo",
                     "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                     "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__",
                     "-Werror=all-warnings", *gencode],
        },
        py_limited_api=False,
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _ext_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
