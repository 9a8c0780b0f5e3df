"""Compiled-kernel contracts read from the built extensions with cuobjdump (no GPU needed).

Our hand-written kernels (Marlin's gemm_kernel, the small-M Machete kernel) lay out their
pipelines in dynamic shared memory and assume it starts on a 128-byte line: the activation
swizzle and the 16-byte async copies do. Dynamic shared memory begins after the kernel's
static __shared__ variables (and, on sm_90, the 1 KB the driver reserves), so any static
variable whose size is not a multiple of 128 shifts every stage. A 16-byte flag did exactly
that to Marlin until 2026-12-03 and cost every copy 2x its L2 sectors (docs/profile_h200.md,
"The 16-byte offset"). cuobjdump's SHARED column is that static size, reserved part included.

The wgmma probe's ALU-only variants (dq rounds, no wgmma) must keep their upconversion: PTX has
no volatile, so ptxas deletes work whose results reach nothing, and a run of 2026-12-04 timed
an empty kernel so (0.3 ns per k-block).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "vllm_machete_plugin"
OUR_KERNELS = re.compile(r"vmp.*(gemm_kernel|small_m_kernel)")


def _cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    candidates = [Path(cuda_home) / "bin" / "cuobjdump"]
    try:  # triton (a vLLM dependency) ships one
        import triton

        candidates.append(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    except ImportError:
        pass
    return next((str(c) for c in candidates if c.is_file()), None)


def static_shared_bytes(res_usage: str) -> dict[str, list[int]]:
    """cuobjdump -res-usage text -> {function name: [SHARED bytes per cubin]}."""
    out: dict[str, list[int]] = {}
    name = None
    for line in res_usage.splitlines():
        m = re.match(r"\s*Function (\S+):\s*$", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(r"\bSHARED:(\d+)", line)
        if m and name is not None:
            out.setdefault(name, []).append(int(m.group(1)))
            name = None
    return out


def local_bytes(res_usage: str) -> dict[tuple[str, str], int]:
    """cuobjdump -res-usage text -> {(arch, function name): LOCAL bytes}: the per-thread local
    memory ptxas gave the kernel, spills included."""
    out: dict[tuple[str, str], int] = {}
    arch = name = None
    for line in res_usage.splitlines():
        if m := re.match(r"\s*arch = (\S+)", line):
            arch = m.group(1)
        elif m := re.match(r"\s*Function (\S+):\s*$", line):
            name = m.group(1)
        elif (m := re.search(r"\bLOCAL:(\d+)", line)) and name is not None:
            out[(arch or "?", name)] = int(m.group(1))
            name = None
    return out


def test_parser_reads_functions_and_shared_sizes():
    text = (" Function _ZN3vmp6marlin11gemm_kernelEv:\n"
            "  REG:255 STACK:0 SHARED:1040 LOCAL:0 CONSTANT[0]:440\n"
            " Function other:\n  REG:10 STACK:0 SHARED:0 LOCAL:0\n")
    assert static_shared_bytes(text) == {"_ZN3vmp6marlin11gemm_kernelEv": [1040], "other": [0]}
    two = "arch = sm_80\n" + text.replace("LOCAL:0 C", "LOCAL:8 C") + "arch = sm_90\n" + text
    assert local_bytes(two) == {("sm_80", "_ZN3vmp6marlin11gemm_kernelEv"): 8, ("sm_80", "other"): 0,
                                ("sm_90", "_ZN3vmp6marlin11gemm_kernelEv"): 0, ("sm_90", "other"): 0}


def _lib_and_tool(lib: str) -> tuple[Path, str]:
    """The built extension `lib` and a cuobjdump; skips the test when either is missing."""
    sos = sorted(PKG.glob(f"{lib}*.so"))
    if not sos:
        pytest.skip(f"{lib} is not built here (pip install --no-build-isolation -e . builds it)")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump on PATH, in $CUDA_HOME/bin or in triton's package")
    return sos[0], tool


@pytest.mark.parametrize("lib", ["_C", "_machete_C"])
def test_our_kernels_dynamic_shared_memory_starts_128_byte_aligned(lib):
    so, tool = _lib_and_tool(lib)
    text = subprocess.run([tool, "-res-usage", str(so)], check=True, capture_output=True, text=True).stdout
    sizes = {n: s for n, s in static_shared_bytes(text).items() if OUR_KERNELS.search(n)}
    assert sizes, f"no gemm_kernel / small_m_kernel found in {so.name}"
    bad = {n: s for n, s in sizes.items() if any(b % 128 for b in s)}
    assert not bad, (f"{len(bad)} kernels of {so.name} have static shared memory that is not a multiple of "
                     f"128 bytes, so their dynamic shared memory starts off a 128-byte line: "
                     f"{dict(list(bad.items())[:3])}; fix: move the __shared__ variable into the dynamic region")


@pytest.mark.parametrize("lib", ["_C", "_machete_C"])
def test_no_kernel_spills_on_any_architecture(lib):
    """Every kernel of ours, in every architecture the extension was built for (CI builds all of
    VMP_CUDA_ARCHS: Marlin for sm_80/86/89/90), keeps its registers: no local memory. Ampere and
    Ada have never run here, so a spill there would otherwise show only on a user's GPU."""
    so, tool = _lib_and_tool(lib)
    text = subprocess.run([tool, "-res-usage", str(so)], check=True, capture_output=True, text=True).stdout
    found = local_bytes(text)
    assert found, f"cuobjdump found no kernel in {so.name}"
    bad = {f"{arch} {name}": b for (arch, name), b in found.items() if b}
    assert not bad, (f"{len(bad)} kernels of {so.name} use local memory (register spills or a local array): "
                     f"{dict(list(bad.items())[:3])}; fix: lower the kernel's live registers (fewer values in "
                     f"flight, a smaller tile) or its __launch_bounds__ minimum blocks, and check cuobjdump "
                     f"-res-usage again")


def _probe_sass(mangled: str, what: str) -> tuple[str, str]:
    """The SASS of the one wgmma probe kernel whose mangled name holds `mangled` (its template
    arguments), and that name; fails naming `what` when the built _machete_C lacks it."""
    so, tool = _lib_and_tool("_machete_C")
    usage = subprocess.run([tool, "-res-usage", str(so)], check=True, capture_output=True, text=True).stdout
    names = [f for f in static_shared_bytes(usage) if f"probe_kernel{mangled}" in f]
    assert names, f"the probe's {what} is not in {so.name}"
    sass = subprocess.run([tool, "-sass", "-fun", names[0], str(so)], check=True, capture_output=True,
                          text=True).stdout
    return names[0], sass


@pytest.mark.parametrize("rs,depth", [(1, 2), (0, 2), (1, 3)])
@pytest.mark.parametrize("n,rounds", [(64, 1), (64, 2), (128, 1), (128, 2)])
def test_wgmma_probe_alu_only_variant_keeps_its_upconversion(n, rounds, rs, depth):
    # probe_kernel<N, rs, in_flight = depth, dq = rounds, mma = false, split = 0>
    name, sass = _probe_sass(f"ILi{n}ELb{rs}ELi{depth}ELi{rounds}ELb0ELi0EE",
                             f"ALU-only kernel (N={n}, {rounds} rounds, rs={rs}, {depth} in flight)")
    hadd2 = len(re.findall(r"\bHADD2\b", sass))
    # 16 A registers per k-block, one HADD2 each per round (the loop holds 2 or 3 k-blocks).
    assert hadd2 >= 16 * rounds, (f"{name} has {hadd2} HADD2: ptxas dropped the upconversion whose "
                                  f"results reach no output; fix: fold the registers into the sink")


@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("mma", [0, 1])
@pytest.mark.parametrize("n,rounds", [(64, 1), (64, 2), (128, 1), (128, 2)])
def test_wgmma_probe_split_variant_keeps_its_transform_work(n, rounds, mma, split):
    """The transform warpgroups' upconversion survives ptxas (its HADD2), split = 1 stores each k-block
    (4 STS.128 per k-block, besides the one of the shared-memory fill) and split = 2 stores nothing."""
    # probe_kernel<N, rs = false, in_flight = 2, dq = rounds, mma, split>
    name, sass = _probe_sass(f"ILi{n}ELb0ELi2ELi{rounds}ELb{mma}ELi{split}EE",
                             f"split kernel (N={n}, {rounds} rounds, mma={mma}, split={split})")
    hadd2, sts = len(re.findall(r"\bHADD2\b", sass)), len(re.findall(r"\bSTS\.128\b", sass))
    assert hadd2 >= 16 * rounds, f"{name} has {hadd2} HADD2: ptxas dropped the transform warpgroups' work"
    assert (sts >= 5) if split == 1 else (sts == 1), f"{name} has {sts} STS.128 (split={split})"
