"""vLLM's CPU weight offloading (`--cpu-offload-gb`) on our layers, on the CPU: a layer whose
checkpoint parameters vLLM's UVA offloader had moved to host memory keeps its prepared weights
there (vllm_machete_plugin.offload), its scratch stays on the device, and its output is unchanged.
The host-memory view is vLLM's own on a GPU; here it is stood in
for by a recorder. GPU runs: tests/gpu/test_vllm_e2e.py::test_cpu_offload_keeps_tokens_and_weights_in_host_memory."""

import pytest
import torch

from ckpt_harness import llama_linears, load_llama_linears, machete_config, tiny_files
from vllm_machete_plugin import offload
from vllm_machete_plugin.backends import MarlinBackend, ReferenceBackend
from vllm_machete_plugin.backends.machete import MacheteBackend
from vllm_machete_plugin.testing import build_tiny_checkpoint


def _layers(tmp_path):
    cfg, tensors = tiny_files(build_tiny_checkpoint(tmp_path / "ckpt", "gptq", dtype="float16", group_size=128,
                                                    sym=False))
    layers = llama_linears(machete_config(cfg), cfg, torch.float16)
    load_llama_linears(layers, tensors)
    return layers


def test_offloaded_layers_keep_their_prepared_weights_in_host_memory(vllm_tp1, tmp_path, monkeypatch):
    monkeypatch.setenv("VMP_BACKEND", "reference")
    moved = []

    def view(cpu):  # stands in for vLLM's UVA view (a device tensor over host memory)
        moved.append(cpu)
        return cpu.clone()

    monkeypatch.setattr("vllm.utils.torch_utils.get_accelerator_view_from_cpu_tensor", view)
    monkeypatch.setattr("vllm.model_executor.offloader.base.should_pin_memory", lambda: False)
    plain, offl = _layers(tmp_path / "a"), _layers(tmp_path / "b")
    # vLLM's offloader marked o_proj and gate_up_proj (say its budget began at o_proj and ran out there).
    for name in ("o_proj", "gate_up_proj"):
        for p in offl[name].parameters():
            setattr(p, offload.FLAG, True)
    for layers in (plain, offl):
        for layer in layers.values():
            layer.quant_method.process_weights_after_loading(layer)
    assert len(moved) == 2, "one weight tensor each of the two offloaded layers"
    for name, layer in offl.items():
        w = layer.vmp_w_fp32
        assert offload.is_offloaded(w) == (name in ("o_proj", "gate_up_proj")), name
        assert not offload.is_offloaded(plain[name].vmp_w_fp32)
        x = torch.randn(3, layer.input_size, dtype=torch.float16)
        torch.testing.assert_close(layer(x)[0], plain[name](x)[0], rtol=0, atol=0)


def test_only_weights_are_offloadable():
    """Scratch tensors stay on the device: Marlin's workspace holds the locks its blocks take with
    atomics, which host memory behind the bus would serve slowly at best."""
    assert MarlinBackend.host_offloadable == ("qweight", "scales", "zeros")
    assert MacheteBackend.host_offloadable == ("w", "scales", "zeros")
    assert ReferenceBackend.host_offloadable == ("w_fp32",)
    for backend in (MarlinBackend, MacheteBackend):
        assert "workspace" not in backend.host_offloadable


@pytest.mark.parametrize("flags,want", [((), False), ((False, False), False), ((False, True), True)])
def test_offloaded_layers_are_found_by_vllms_mark(flags, want):
    params = []
    for f in flags:
        p = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        setattr(p, offload.FLAG, f)
        params.append(p)
    assert any(offload.is_offloaded(p) for p in params) is want


def test_prefetching_offloader_is_named_as_unable_to_move_our_layers(vllm_tp1, tmp_path, monkeypatch, caplog):
    from vllm_machete_plugin import linear_method

    monkeypatch.setenv("VMP_BACKEND", "reference")
    monkeypatch.setattr(linear_method, "_announced", set())
    layers = _layers(tmp_path)
    layers["qkv_proj"].quant_method.process_weights_after_loading(layers["qkv_proj"])
    assert "--offload-group-size" not in caplog.text
    monkeypatch.setattr(vllm_tp1.offload_config.prefetch, "offload_group_size", 4)
    layers["o_proj"].quant_method.process_weights_after_loading(layers["o_proj"])
    assert "(--offload-group-size) cannot move" in caplog.text and "first: model.layers.0.self_attn.o_proj" in caplog.text
    assert "Fix: offload with --cpu-offload-gb" in caplog.text
