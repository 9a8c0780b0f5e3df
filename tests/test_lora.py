"""LoRA adapters on our quantized layers (`--enable-lora`), on the CPU: vLLM's own LoRA wrappers
(chosen by vllm.lora.utils.from_layer, as its LoRA model manager does at engine start) around
vLLM's linear layers driven by our method with the reference backend, and vLLM's CPU punica
wrapper applying the adapters per token. The engine-level run is
tests/gpu/test_vllm_e2e.py::test_lora_adapter_matches_vllm_builtin."""

import pytest
import torch

from ckpt_harness import MAPPING, llama_linears, load_llama_linears, machete_config, tiny_files
from vllm_machete_plugin.backends.reference import reference_mm
from vllm_machete_plugin.testing import build_tiny_checkpoint
from vllm_machete_plugin.testing.tiny import read_tiny_linears

PARTS = {"qkv_proj": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "o_proj": ["self_attn.o_proj"],
         "gate_up_proj": ["mlp.gate_proj", "mlp.up_proj"], "down_proj": ["mlp.down_proj"]}
RANK = 8


def _prepared_layers(tmp_path, fmt, opts):
    path = build_tiny_checkpoint(tmp_path / "ckpt", fmt, dtype="float16", **opts)
    cfg, tensors = tiny_files(path)
    layers = llama_linears(machete_config(cfg), cfg, torch.float16)
    load_llama_linears(layers, tensors)
    for layer in layers.values():
        layer.quant_method.process_weights_after_loading(layer)
    return layers, read_tiny_linears(path)


@pytest.mark.parametrize("fmt,opts", [("gptq", dict(group_size=128, sym=True)),
                                      ("awq", dict(group_size=64)),
                                      ("compressed-tensors", dict(group_size=128, sym=False, act_order=True))])
def test_lora_adapters_apply_per_token_on_our_layers(vllm_tp1, tmp_path, monkeypatch, fmt, opts):
    from vllm.config.lora import LoRAConfig
    from vllm.lora.layers import BaseLayerWithLoRA, LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    from vllm.lora.utils import from_layer

    monkeypatch.setenv("VMP_BACKEND", "reference")
    # vLLM decides at import whether to pin host memory; a CPU-only machine has no driver to pin with.
    monkeypatch.setattr("vllm.utils.torch_utils.PIN_MEMORY", torch.cuda.is_available())
    layers, expected_w = _prepared_layers(tmp_path, fmt, opts)
    lora_config = LoRAConfig(max_lora_rank=RANK, max_loras=2, lora_dtype=torch.float16)
    m = 6
    # Tokens 0-2 run adapter 1 (slot 0), 3-5 adapter 2 (slot 1). (No token runs without one: vLLM's
    # CPU ops index the slots with -1 there, i.e. the last adapter.)
    punica = PunicaWrapperCPU(max_num_batched_tokens=64, max_batches=4, device="cpu")
    punica.update_metadata(LoRAMapping(index_mapping=(1, 1, 1, 2, 2, 2), prompt_mapping=(1, 2), is_prefill=False),
                           [1, 2], max_loras=2, vocab_size=32)
    gen = torch.Generator().manual_seed(0)
    for name, layer in layers.items():
        wrapped = from_layer(layer, 2, lora_config, MAPPING.get(name, [name]), None)
        assert isinstance(wrapped, BaseLayerWithLoRA), f"{name}: vLLM found no LoRA wrapper for our layer"
        assert wrapped.device.type == "cpu"
        slices = [expected_w["model.layers.0." + p] for p in PARTS[name]]
        sizes = [w.n for w in slices]
        adapters = []
        for slot in range(2):
            a = [torch.randn(RANK, layer.input_size, generator=gen).half() * 0.1 for _ in sizes]
            b = [torch.randn(n, RANK, generator=gen).half() * 0.1 for n in sizes]
            wrapped.set_lora(slot, a if len(sizes) > 1 else a[0], b if len(sizes) > 1 else b[0])
            adapters.append((a, b))
        wrapped.set_mapping(punica)
        x = torch.randn(m, layer.input_size, generator=gen).half()
        y = wrapped(x)[0].float()
        base = torch.cat([reference_mm(x, w).float() for w in slices], dim=1)
        delta = torch.zeros_like(base)
        for slot, rows in ((0, slice(0, 3)), (1, slice(3, 6))):
            a, b = adapters[slot]
            delta[rows] = torch.cat([(x[rows].float() @ ai.float().T) @ bi.float().T for ai, bi in zip(a, b)], dim=1)
        want = base + delta
        tol = 2e-2 * want.abs().max().item()
        assert (delta.abs().amax(1) > 10 * tol).all(), "the adapters must move every token's output"
        torch.testing.assert_close(y, want, rtol=2e-2, atol=tol, msg=f"{name}: base + per-token LoRA mismatch")


def test_lora_device_attribute_is_the_prepared_weight_listed_once(vllm_tp1, tmp_path, monkeypatch):
    """The tensor vLLM's LoRA layers read the device from is the prepared weight itself, the same
    Parameter under a second name: named_parameters (which vLLM walks) lists each tensor once.
    (Registered, not a plain attribute: tests/test_reload.py reloads a GPTQ model through it.)"""
    from vllm.lora.layers.utils import _get_lora_device

    from vllm_machete_plugin.linear_method import LORA_DEVICE_ATTR

    monkeypatch.setenv("VMP_BACKEND", "reference")
    layers, _ = _prepared_layers(tmp_path, "gptq", dict(group_size=128, sym=False))
    for name, layer in layers.items():
        alias = getattr(layer, LORA_DEVICE_ATTR)
        assert alias is getattr(layer, "vmp_" + layer.vmp_weight_names[0]), name
        assert _get_lora_device(layer) == alias.device
        assert layer._parameters[LORA_DEVICE_ATTR] is alias, "registered: vLLM's reload deletes and restores it"
        names = [n for n, _ in layer.named_parameters()]
        assert LORA_DEVICE_ATTR not in names, names  # listed once, under its vmp_ name (registered first)
        assert not hasattr(layer, "weight"), f"{name}: a `weight` would be read as a dense matrix by vLLM"


def test_tiny_adapter_loads_as_vllm_reads_peft_adapters(tmp_path, monkeypatch):
    """The adapter the GPU end-to-end test serves: vLLM's PEFT reader takes every module of it,
    with the shapes and scaling build_tiny_lora documents."""
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper

    from vllm_machete_plugin.testing import build_tiny_lora
    from vllm_machete_plugin.testing.tiny import LAYERS, LINEARS

    monkeypatch.setattr("vllm.lora.lora_model.PIN_MEMORY", torch.cuda.is_available())
    path = build_tiny_lora(tmp_path / "adapter", rank=RANK)
    helper = PEFTHelper.from_local_dir(str(path), max_position_embeddings=2048)
    assert (helper.r, helper.lora_alpha) == (RANK, RANK)
    modules = {name.split(".")[-1] for name in LINEARS}
    lora = LoRAModel.from_local_checkpoint(str(path), modules, helper, lora_model_id=1, device="cpu",
                                           dtype=torch.float16)
    want = {f"model.layers.{i}.{name}": kn for i in range(LAYERS) for name, kn in LINEARS.items()}
    assert set(lora.loras) == set(want)
    for name, (k, n, _) in want.items():
        w = lora.loras[name]
        assert w.lora_a.shape == (RANK, k) and w.lora_b.shape == (n, RANK), name
        ba = (w.lora_b.float() @ w.lora_a.float()) * w.scaling
        assert 0.25 / k ** 0.5 < ba.std() < 1.0 / k ** 0.5, (name, ba.std().item())
