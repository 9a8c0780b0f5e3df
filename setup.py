"""Builds the CUDA kernels in kernels/ as vllm_machete_plugin._C when nvcc and a
CUDA-enabled torch are present; otherwise installs the pure-Python package and
every op raises KernelsNotBuiltError (see vllm_machete_plugin/ops.py).

Environment:
  VMP_CUDA_ARCHS   semicolon list of SM numbers for the Marlin kernels
                   (default "80;86;89;90"); "90" builds fastest on a Hopper box.
  VMP_SKIP_KERNELS=1  build no kernels.
  MAX_JOBS         parallel nvcc jobs; unset: chosen from the cores and the available
                   memory (build_jobs.py), and the choice printed.
  PYTORCH_NVCC     compiler launcher, e.g. "ccache nvcc".
  CUTLASS_DIR      CUTLASS source tree (a dir with include/ and tools/util/include/)
                   for the Machete extension; default: the nvidia-cutlass wheel's
                   cutlass_library/source.

Both extensions are built against the stable CPython ABI (Py_LIMITED_API, *.abi3.so).
A second extension, vllm_machete_plugin._machete_C (Machete, sm_90a only), is built
when VMP_CUDA_ARCHS contains 90 or 90a. Its compiles run through
kernels/machete/nvcc_guard.py, which fails the build if ptxas serializes a wgmma
pipeline (C7509..C7515).
"""
import glob
import importlib.util
import os
import sys
import sysconfig

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)  # build_jobs.py: PEP 517 backends do not put the project on sys.path
import build_jobs  # noqa: E402


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


def _pip_cuda_includes():
    """Headers of the CUDA libraries torch was installed with (cusparse.h, cublas...):
    torch's ATen/cuda headers include them, and a bare toolkit may lack them."""
    import importlib.util
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    found = []
    for base in spec.submodule_search_locations:
        found += sorted(glob.glob(os.path.join(base, "cu1*", "include")))
    return found


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
    # Searched after the toolkit's own headers, so they only fill what it lacks.
    late_includes = [f for d in _pip_cuda_includes() for f in ("-idirafter", d)]
    ext = CUDAExtension(
        name="vllm_machete_plugin._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "kernels")],
        define_macros=define,
        extra_compile_args={
            "cxx": ["-O3", "-std=c++17", *late_includes],
            "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo",
                     "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                     "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__",
                     "-Werror=all-warnings", *gencode],
        },
        py_limited_api=True,
    )
    print(build_jobs.configure())
    exts = [ext]
    if any(a in ("90", "90a") for a in archs):
        exts.append(_machete_extension(CUDAExtension, rel, late_includes))
    return exts, {"build_ext": _build_ext(BuildExtension).with_options(use_ninja=True)}


def _cutlass_dirs():
    root = os.environ.get("CUTLASS_DIR")
    if not root:
        spec = importlib.util.find_spec("cutlass_library")
        if spec is None or spec.origin is None:
            raise RuntimeError(
                "[vllm-machete-plugin] the Machete kernels (sm_90a) need CUTLASS 4.2 headers: "
                "`pip install nvidia-cutlass==4.2.0.0`, or set CUTLASS_DIR to a CUTLASS tree, or build "
                "without Hopper (VMP_CUDA_ARCHS without 90).")
        root = os.path.join(os.path.dirname(spec.origin), "source")
    root = os.path.abspath(os.path.join(ROOT, root))
    dirs = [os.path.join(root, "include"), os.path.join(root, "tools", "util", "include")]
    missing = [d for d in dirs if not os.path.isdir(d)]
    if missing:
        raise RuntimeError(f"[vllm-machete-plugin] CUTLASS headers not found: {missing} (CUTLASS_DIR={root})")
    return dirs


def _machete_extension(CUDAExtension, rel, late_includes):
    sources = rel("kernels/machete/*.cpp") + rel("kernels/machete/*.cu") + rel("kernels/machete/tiles/*.cu")
    return CUDAExtension(
        name="vllm_machete_plugin._machete_C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "kernels", "machete")] + _cutlass_dirs(),
        extra_compile_args={
            "cxx": ["-O3", "-std=c++17", *late_includes],
            "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-DNDEBUG", "-lineinfo",
                     # griddepcontrol.wait in the CUTLASS kernels' producers, so they may be launched
                     # with PDL (kernels/launch.h). Not CUTLASS_ENABLE_GDC_FOR_SM90: its early trigger
                     # does not compile with CUTLASS 4.2's Stream-K scheduler (is_last_tile() const
                     # binds a member to a non-const reference), so these kernels trigger at exit.
                     "-DCUTLASS_GDC_ENABLED",
                     "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                     "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__",
                     "-gencode=arch=compute_90a,code=sm_90a"],
        },
        py_limited_api=True,
    )


def _build_ext(BuildExtension):
    """BuildExtension that compiles in build/temp.* also for pip's editable installs (they
    would use a new temporary directory each time), so ninja recompiles only what changed
    and ccache (CCACHE_BASEDIR) sees the same relative paths from every clone; and whose
    nvcc, for _machete_C only, runs through nvcc_guard.py."""
    guard = os.path.join(ROOT, "kernels", "machete", "nvcc_guard.py")

    class Build(BuildExtension):
        def finalize_options(self):
            super().finalize_options()
            tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
            self.build_temp = os.path.join(ROOT, "build", f"temp.{tag}")

        def build_extension(self, ext):
            if not ext.name.endswith("._machete_C"):
                return super().build_extension(ext)
            from torch.utils.cpp_extension import CUDA_HOME
            before = os.environ.get("PYTORCH_NVCC")
            inner = before or os.path.join(CUDA_HOME, "bin", "nvcc")
            os.environ["PYTORCH_NVCC"] = f"{sys.executable} {guard} {inner}"
            try:
                return super().build_extension(ext)
            finally:
                if before is None:
                    os.environ.pop("PYTORCH_NVCC", None)
                else:
                    os.environ["PYTORCH_NVCC"] = before

    return Build


ext_modules, cmdclass = _ext_modules()
# The extensions use only the stable CPython ABI (their module init) and libtorch's
# dispatcher, so one build (_C.abi3.so) loads on every CPython >= 3.10.
setup(ext_modules=ext_modules, cmdclass=cmdclass,
      options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {})
