"""Plugin registration and config selection, with the real vLLM 0.26.0 installed."""
import importlib.metadata
import os
import pickle

import pytest

from ckpt_harness import engine_quant_config
from vllm_machete_plugin import QUANTIZATION_NAME
from vllm_machete_plugin.testing import build_tiny_checkpoint

FORMATS = ["gptq", "awq", "compressed-tensors", "auto-round"]


def test_entry_point_declared():
    eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    ours = [ep for ep in eps if ep.name == QUANTIZATION_NAME]
    assert len(ours) == 1, "is the package installed (pip install -e .)?"
    assert ours[0].value == "vllm_machete_plugin:register"


def test_vllm_loads_plugin_through_entry_points(monkeypatch):
    import vllm.plugins as plugins
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, get_quantization_config

    from vllm_machete_plugin.config import MacheteConfig

    monkeypatch.setattr(plugins, "plugins_loaded", False)
    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    plugins.load_general_plugins()
    assert QUANTIZATION_NAME in QUANTIZATION_METHODS
    assert get_quantization_config(QUANTIZATION_NAME) is MacheteConfig


def test_register_is_idempotent(register_plugin):
    import vllm_machete_plugin
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    vllm_machete_plugin.register()
    vllm_machete_plugin.register()
    assert QUANTIZATION_METHODS.count(QUANTIZATION_NAME) == 1


@pytest.mark.parametrize("knob", ["VMP_BACKEND", "VMP_MACHETE_SCHEDULE", "VMP_DISABLED_BACKENDS"])
def test_kernel_settings_turn_off_vllms_compile_cache(monkeypatch, knob):
    """vLLM would otherwise reload a graph compiled under other kernel settings."""
    import vllm_machete_plugin
    for k in ("VMP_BACKEND", "VMP_MACHETE_SCHEDULE", "VMP_DISABLED_BACKENDS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("VLLM_DISABLE_COMPILE_CACHE", raising=False)
    vllm_machete_plugin.register()
    assert "VLLM_DISABLE_COMPILE_CACHE" not in os.environ
    monkeypatch.setenv(knob, "16")
    vllm_machete_plugin.register()
    assert os.environ["VLLM_DISABLE_COMPILE_CACHE"] == "1"


@pytest.mark.parametrize("fmt", FORMATS)
def test_engine_config_resolves_to_machete(tmp_path, fmt):
    from vllm_machete_plugin.config import MacheteConfig

    path = build_tiny_checkpoint(tmp_path / fmt, fmt)
    mc, qc = engine_quant_config(path, QUANTIZATION_NAME)
    assert mc.quantization == QUANTIZATION_NAME
    assert isinstance(qc, MacheteConfig)
    assert qc.fmt.name == fmt
    clone = pickle.loads(pickle.dumps(qc))  # shipped to engine/worker processes
    assert isinstance(clone, MacheteConfig) and clone.fmt.name == fmt


@pytest.mark.parametrize("fmt", FORMATS)
def test_never_claims_without_being_asked(tmp_path, fmt, register_plugin):
    from vllm_machete_plugin.config import MacheteConfig

    path = build_tiny_checkpoint(tmp_path / fmt, fmt)
    mc, qc = engine_quant_config(path, None)
    assert mc.quantization != QUANTIZATION_NAME
    assert not isinstance(qc, MacheteConfig)
    assert MacheteConfig.override_quantization_method(qc and mc.hf_config.quantization_config,
                                                      None) is None


def test_rejects_non_w4a16_quant_method(tmp_path, register_plugin):
    from vllm_machete_plugin.checkpoints.base import CheckpointError
    from vllm_machete_plugin.config import MacheteConfig

    with pytest.raises(CheckpointError, match="quant_method is 'fp8'.*drop --quantization machete"):
        MacheteConfig.override_quantization_method({"quant_method": "fp8"}, QUANTIZATION_NAME)


def test_legacy_quantize_config_without_quant_method():
    from vllm_machete_plugin.config import normalize_quant_config

    assert normalize_quant_config({"bits": 4, "group_size": 128, "desc_act": False})["quant_method"] == "gptq"
    assert normalize_quant_config({"w_bit": 4, "q_group_size": 128, "zero_point": True,
                                   "version": "GEMM"})["quant_method"] == "awq"
    assert normalize_quant_config({"quant_method": "compressed_tensors"})["quant_method"] == "compressed-tensors"


def test_package_imports_without_vllm_side_effects():
    import subprocess
    import sys

    code = ("import sys, vllm_machete_plugin, vllm_machete_plugin.canonical, "
            "vllm_machete_plugin.ops, vllm_machete_plugin.backends; "
            "assert 'vllm' not in sys.modules, sorted(m for m in sys.modules if m.startswith('vllm.'))")
    subprocess.run([sys.executable, "-c", code], check=True)
