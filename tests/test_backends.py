"""Backend selection and the not-built error (CPU: capabilities are passed explicitly)."""
import pytest
import torch

from vllm_machete_plugin import backends, ops
from vllm_machete_plugin.backends import NoBackendError, select
from vllm_machete_plugin.backends import dual
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
    monkeypatch.setenv(backends.ENV_DISABLE, "marlin,machete,machete+marlin")
    with pytest.raises(NoBackendError, match="every backend is disabled by VMP_DISABLED_BACKENDS"):
        select(SPEC, "layer", capability=90)


def test_reference_is_never_a_serving_candidate():
    assert all(b.serving for b in backends.SERVING_BACKENDS)
    assert "reference" not in [b.name for b in backends.SERVING_BACKENDS]
    assert {"marlin", "machete", "machete+marlin"} <= {b.name for b in backends.SERVING_BACKENDS}
    assert [b.name for b in backends.SERVING_BACKENDS][:2] == ["machete+marlin", "machete"]


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
    monkeypatch.delenv(dual.ENV_MAX_M, raising=False)


def test_hopper_default_is_machete_only(kernels_everywhere):
    assert select(SPEC, "layer", capability=90).name == "machete"
    assert select(SPEC, "layer", capability=89).name == "marlin"


def test_small_m_marlin_copy_is_opt_in(kernels_everywhere, monkeypatch):
    monkeypatch.setenv(dual.ENV_MAX_M, str(dual.CROSSOVER_M))
    assert select(SPEC, "layer", capability=90).name == "machete+marlin"
    assert select(SPEC, "layer", capability=86).name == "marlin"
    g32 = LayerSpec(k=8192, n=10240, group_size=32, has_zeros=False, act_dtype=torch.float16)
    assert select(g32, "layer", capability=90).name == "marlin"  # Machete has no group 32
    monkeypatch.setenv(dual.ENV_MAX_M, "0")
    assert select(SPEC, "layer", capability=90).name == "machete"
    monkeypatch.setenv(dual.ENV_MAX_M, "sixteen")
    with pytest.raises(ValueError, match="VMP_MARLIN_MAX_M='sixteen': expected a token count"):
        select(SPEC, "layer", capability=90)


@pytest.mark.parametrize("m,want", [(1, "marlin"), (16, "marlin"), (17, "machete"), (300, "machete")])
def test_dual_mm_dispatches_on_m(monkeypatch, m, want):
    """The choice happens inside one opaque op; each side gets its own tensors."""
    from vllm_machete_plugin.backends import machete, marlin
    calls = []

    def fake(name):
        def apply(spec, weights, x):
            calls.append((name, sorted(weights), spec.k, spec.n, spec.act_dtype))
            return x.new_zeros(x.shape[0], spec.n)
        return classmethod(lambda cls, spec, weights, x: apply(spec, weights, x))

    monkeypatch.setattr(machete.MacheteBackend, "apply", fake("machete"))
    monkeypatch.setattr(marlin.MarlinBackend, "apply", fake("marlin"))
    monkeypatch.setenv(dual.ENV_MAX_M, "16")
    spec = LayerSpec(k=64, n=128, group_size=64, has_zeros=True, act_dtype=torch.bfloat16)
    t = torch.zeros(1)
    weights = {"mt_w": t, "mt_scales": t, "mt_zeros": t, "ml_qweight": t, "ml_scales": t, "ml_zeros": t,
               "ml_workspace": t}
    y = dual.DualBackend.apply(spec, weights, torch.zeros(m, 64, dtype=torch.bfloat16))
    assert y.shape == (m, 128)
    keys = ["scales", "w", "zeros"] if want == "machete" else ["qweight", "scales", "workspace", "zeros"]
    assert calls == [(want, keys, 64, 128, torch.bfloat16)]


def test_dual_mm_fake_keeps_m_symbolic():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(5, 64, dtype=torch.float16)
        t = torch.empty(1)
        y = torch.ops.vmp.dual_mm(x, t, t, None, t, t, None, t, 64, 128, 64, 16)
    assert y.shape == (5, 128) and y.dtype == torch.float16


def test_dual_mm_compiles_once_for_every_m(monkeypatch):
    """Under torch.compile (fullgraph, dynamic M) the choice stays inside the op: one
    graph, no recompiles, and each M still reaches its kernel."""
    from torch._dynamo.utils import counters
    from vllm_machete_plugin.backends import machete, marlin
    monkeypatch.setattr(machete.MacheteBackend, "apply",
                        classmethod(lambda cls, spec, w, x: x.new_full((x.shape[0], spec.n), 2.0)))
    monkeypatch.setattr(marlin.MarlinBackend, "apply",
                        classmethod(lambda cls, spec, w, x: x.new_full((x.shape[0], spec.n), 1.0)))
    monkeypatch.setenv(dual.ENV_MAX_M, "16")
    spec = LayerSpec(k=64, n=128, group_size=64, has_zeros=False, act_dtype=torch.float16)
    t = torch.zeros(1)
    weights = {"mt_w": t, "mt_scales": t, "ml_qweight": t, "ml_scales": t, "ml_workspace": t}
    torch.compiler.reset()
    counters.clear()
    f = torch.compile(lambda x: dual.DualBackend.apply(spec, weights, x), fullgraph=True, dynamic=True,
                      backend="eager")
    # (sizes 0 and 1 are always specialized by dynamo; vLLM marks the batch dim itself)
    got = {m: float(f(torch.zeros(m, 64, dtype=torch.float16))[0, 0]) for m in (17, 2, 16, 64, 300)}
    assert got == {2: 1.0, 16: 1.0, 17: 2.0, 64: 2.0, 300: 2.0}
    assert counters["stats"]["unique_graphs"] == 1
    torch.compiler.reset()
