"""Backend selection and the not-built error (CPU: capabilities are passed explicitly)."""
import pytest
import torch

from vllm_machete_plugin import backends, ops
from vllm_machete_plugin.backends import NoBackendError, select
from vllm_machete_plugin.backends.base import LayerSpec

SPEC = LayerSpec(k=8192, n=10240, group_size=128, has_zeros=False, act_dtype=torch.float16)


def test_gpu_below_sm80_is_refused_with_every_reason():
    with pytest.raises(NoBackendError) as e:
        select(SPEC, "model.layers.0.self_attn.qkv_proj", capability=75)
    msg = str(e.value)
    assert "model.layers.0.self_attn.qkv_proj" in msg and "K=8192 N=10240" in msg
    assert "marlin: needs sm_80 or newer, this is sm_75" in msg
    assert "machete: needs sm_90" in msg
    assert "Fix:" in msg


def test_no_gpu_is_named():
    with pytest.raises(NoBackendError, match="marlin: needs sm_80 or newer, this is no CUDA GPU"):
        select(SPEC, "layer", capability=-1)


def test_forced_and_disabled_backends(monkeypatch):
    monkeypatch.setenv(backends.ENV_FORCE, "reference")
    assert select(SPEC, "layer", capability=-1).name == "reference"
    monkeypatch.setenv(backends.ENV_FORCE, "turbo")
    with pytest.raises(NoBackendError, match="VMP_BACKEND='turbo' is not a backend"):
        select(SPEC, "layer", capability=90)
    monkeypatch.delenv(backends.ENV_FORCE)
    monkeypatch.setenv(backends.ENV_DISABLE, "marlin,machete")
    with pytest.raises(NoBackendError, match="every backend is disabled by VMP_DISABLED_BACKENDS"):
        select(SPEC, "layer", capability=90)


def test_reference_is_never_a_serving_candidate():
    assert all(b.serving for b in backends.SERVING_BACKENDS)
    assert "reference" not in [b.name for b in backends.SERVING_BACKENDS]
    assert [b.name for b in backends.SERVING_BACKENDS] == ["machete", "marlin"]


def test_ops_raise_clear_error_when_kernels_are_not_built(monkeypatch):
    monkeypatch.setattr(ops, "_load", lambda: "No module named 'vllm_machete_plugin._C'")
    with pytest.raises(ops.KernelsNotBuiltError, match=r"marlin_gemm needs the compiled CUDA kernels.*"
                                                        r"pip install --no-build-isolation"):
        ops.require_kernels("marlin_gemm")
    assert not ops.kernels_available()


@pytest.fixture
def kernels_everywhere(monkeypatch):
    """Pretend both kernel families were built (selection logic only; CPU)."""
    from vllm_machete_plugin.backends import machete, marlin
    monkeypatch.setattr(machete, "kernels_built", lambda: True)
    monkeypatch.setattr(marlin, "kernels_available", lambda: True)
    monkeypatch.setattr(ops, "build_info", lambda: "archs=80,86,89,90")


def test_hopper_default_is_machete_only(kernels_everywhere):
    assert select(SPEC, "layer", capability=90).name == "machete"
    assert select(SPEC, "layer", capability=89).name == "marlin"


@pytest.mark.parametrize("archs,cap,runs", [
    ("80,86,89,90", 86, True), ("80,86,89,90", 87, True), ("80", 89, True), ("90", 86, False),
    ("80,86,89,90", 100, False), ("80,86,89,90", 120, False), ("120", 121, True), ("90a", 90, True),
    ("120a", 121, False), ("120a", 120, True), ("90,100f", 103, True), ("90,100f", 120, False),
    ("unknown", 120, True)])
def test_machine_code_runs_within_its_major_version(monkeypatch, archs, cap, runs):
    monkeypatch.setattr(ops, "build_info", lambda: f"archs={archs}")
    assert ops.runs_on(cap) is runs


def test_a_gpu_newer_than_the_build_is_refused_with_the_fix(kernels_everywhere):
    """Blackwell (sm_100, sm_120) has no machine code in a default build, and it carries no PTX: the
    first kernel launch would fail deep in CUDA. Refused when the model loads, with the rebuild."""
    with pytest.raises(NoBackendError) as e:
        select(SPEC, "model.layers.0.mlp.down_proj", capability=120)
    msg = str(e.value)
    assert "model.layers.0.mlp.down_proj" in msg and "machete: needs sm_90 to sm_99, this is sm_120" in msg
    assert ("marlin: the kernels were built for sm_80, sm_86, sm_89, sm_90, none of which runs on sm_120" in msg
            and 'VMP_CUDA_ARCHS="120" pip install' in msg), msg


def test_hopper_group_32_falls_back_to_marlin(kernels_everywhere):
    g32 = LayerSpec(k=8192, n=10240, group_size=32, has_zeros=False, act_dtype=torch.float16)
    assert select(g32, "layer", capability=90).name == "marlin"  # Machete has no group 32


@pytest.mark.skipif(not (ops.kernels_available() and ops.has_op("machete_mm")),
                    reason="the Machete extension was not built (needs nvcc and VMP_CUDA_ARCHS with 90)")
def test_machete_mm_fake_takes_the_layer_locks():
    """What torch.compile traces in vLLM: the op with the prepared per-layer lock buffer
    (small-M kernel) gives [M, N] for any M without touching a kernel, and the buffer the
    backend allocates covers the kernel's lock slots (8 warps x 2 blocks per SM) on up to
    256 SMs."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    assert torch.ops.vmp.machete_small_m_locks() >= 8 * 2 * 256
    assert {"64x8", "64x16"} <= set(torch.ops.vmp.machete_schedules())
    with FakeTensorMode():
        w = torch.empty(4096 // 8, 1024, dtype=torch.int32)
        s = torch.empty(32, 1024, dtype=torch.bfloat16)
        locks = torch.empty(torch.ops.vmp.machete_small_m_locks(), dtype=torch.int32)
        for m in (1, 5, 300):
            y = torch.ops.vmp.machete_mm(torch.empty(m, 4096, dtype=torch.bfloat16), w, s, None, 128, None, locks)
            assert y.shape == (m, 1024) and y.dtype == torch.bfloat16


def test_machete_weight_records_its_kind_and_the_fake_checks_it():
    """vmp::machete_prepack's dtype records the kind it packed (uint32: u4 codes q for zero
    points, int32: u4b8 codes q-8). The machete_mm fake, what torch.compile traces, refuses
    the other kind as the op does (machete_bindings.cpp), so the mistake is never silent."""
    from vllm_machete_plugin.backends import machete
    codes = torch.empty(256, 128, dtype=torch.uint8, device="meta")
    w_u4b8, w_u4 = machete._prepack_fake(codes, False), machete._prepack_fake(codes, True)
    assert (w_u4b8.dtype, w_u4.dtype) == (torch.int32, torch.uint32) and w_u4.shape == (32, 128)
    x = torch.empty(3, 256, dtype=torch.float16, device="meta")
    s = torch.empty(2, 128, dtype=torch.float16, device="meta")
    assert machete._mm_fake(x, w_u4b8, s, None, 128).shape == machete._mm_fake(x, w_u4, s, s, 128).shape == (3, 128)
    with pytest.raises(RuntimeError, match=r"w \(torch.int32\) was prepacked for u4b8 .* but the call passes zeros; "
                                           r"fix: prepack the codes with has_zeros=True, or drop the zeros"):
        machete._mm_fake(x, w_u4b8, s, s, 128)
    with pytest.raises(RuntimeError, match=r"w \(torch.uint32\) was prepacked for u4 with zero points .* passes no "
                                           r"zeros; fix: prepack the codes with has_zeros=False, or pass the zeros"):
        machete._mm_fake(x, w_u4, s, None, 128)
    with pytest.raises(RuntimeError, match=r"w must be the int32 or uint32 \[K/8, N\] tensor .* got torch.float32"):
        machete._mm_fake(x, w_u4b8.float(), s, None, 128)


def test_machete_apply_reads_no_environment(monkeypatch):
    """apply() runs under torch.compile: it must not read os.environ (Dynamo would trace the
    `os` module into vLLM's compile-cache key); the forced schedule is read at import."""
    from types import SimpleNamespace

    from vllm_machete_plugin.backends import machete

    class NoReads(dict):
        def __getitem__(self, key):
            raise AssertionError(f"os.environ[{key!r}] read in apply()")

        def get(self, key, default=None):
            raise AssertionError(f"os.environ.get({key!r}) in apply()")

    calls = []
    monkeypatch.setattr(machete.os, "environ", NoReads())
    monkeypatch.setattr(machete.torch, "ops", SimpleNamespace(vmp=SimpleNamespace(machete_mm=lambda *a: calls.append(a))))
    monkeypatch.setattr(machete, "FORCED_SCHEDULE", "128x16")
    spec = LayerSpec(k=256, n=128, group_size=128, has_zeros=False, act_dtype=torch.float16)
    machete.MacheteBackend.apply(spec, {"w": "W", "scales": "S", "locks": "L"}, "X")
    assert calls == [("X", "W", "S", None, 128, "128x16", "L")]


def test_fp16_machete_refuses_scales_its_16x_rows_would_overflow():
    """machete_mid_m.cu holds fragment rows row + 8 as 16x the weight in fp16, so a scale of
    256+ (weights up to 3840) would overflow to Inf: refused at prepare, with the fix."""
    from vllm_machete_plugin.backends.machete import check_fp16_scale_range
    check_fp16_scale_range(torch.full((4, 8), 255.0, dtype=torch.float16))
    s = torch.full((4, 8), 0.01, dtype=torch.float16)
    s[2, 5] = -300.0
    with pytest.raises(ValueError, match=r"scales of shape \(4, 8\) reach 300.*\|scale\| < 256.*--dtype bfloat16"):
        check_fp16_scale_range(s)
