"""Reloading weights in place (vLLM's layerwise reload: `LLM.collective_rpc("reload_weights")`,
the weight updates of RLHF trainers, and the reload after sleep level 2), on the CPU: vLLM's own
reload functions over vLLM's linear layers driven by our method with the reference backend. The
layers must come out computing with the new checkpoint, in the same tensors as before (CUDA graphs
captured before the reload read those addresses). The engine-level
run is tests/gpu/test_vllm_e2e.py::test_sleep_level_2_and_reload_weights."""

import pytest
import torch

from ckpt_harness import llama_linears, load_llama_linears, machete_config, tiny_files
from vllm_machete_plugin.linear_method import LORA_DEVICE_ATTR

# compressed-tensors sym: the layer's weight_zero_point is never loaded, so vLLM processes it only
# when the reload is finalized (its loaded-element count never reaches the layer's size).
FORMATS = [("gptq", dict(group_size=128, sym=False)), ("gptq", dict(group_size=64, sym=True, act_order=True)),
           ("awq", dict(group_size=64)), ("compressed-tensors", dict(group_size=128, sym=False, act_order=True)),
           ("compressed-tensors", dict(group_size=128, sym=True)), ("auto-round", dict(group_size=128))]


def _checkpoint(path, fmt, opts, seed):
    from vllm_machete_plugin.testing import build_tiny_checkpoint

    return tiny_files(build_tiny_checkpoint(path, fmt, dtype="float16", seed=seed, **opts))


def _model(cfg):
    """One decoder layer's linears as vLLM builds a model: metadata for reloading is recorded at
    construction (vllm.model_executor.model_loader.utils.initialize_model)."""
    from vllm.model_executor.model_loader.reload import record_metadata_for_reloading

    model = torch.nn.ModuleDict(llama_linears(machete_config(cfg), cfg, torch.float16))
    record_metadata_for_reloading(model)
    return model


def _loaded(cfg, tensors):
    model = _model(cfg)
    load_llama_linears(model, tensors)
    for layer in model.values():
        layer.quant_method.process_weights_after_loading(layer)
    return model


def _reload(model, tensors, reverse=False):
    """What GPUModelRunner.reload_weights does with checkpoint-format weights, outside vLLM's
    current-config context as it runs there (a GPU run found that). reverse: in the
    opposite of the file's (sorted) order, so that fused shards other than the first bring the
    last tensors, as a trainer's state_dict order can (qweight, qzeros, scales, g_idx per module)."""
    import vllm.config.vllm as vllm_config
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

    current, vllm_config._current_vllm_config = vllm_config._current_vllm_config, None  # it runs outside one
    try:
        initialize_layerwise_reload(model)
        load_llama_linears(model, dict(reversed(tensors.items())) if reverse else tensors)
        finalize_layerwise_reload(model, None)
    finally:
        vllm_config._current_vllm_config = current


def _outputs(model, x):
    return {name: layer(x[name])[0] for name, layer in model.items()}


@pytest.mark.parametrize("fmt,opts", FORMATS)
def test_reload_computes_with_the_new_weights_in_the_same_tensors(vllm_tp1, tmp_path, monkeypatch, fmt, opts):
    monkeypatch.setenv("VMP_BACKEND", "reference")
    cfg, first = _checkpoint(tmp_path / "a", fmt, opts, seed=0)
    _, second = _checkpoint(tmp_path / "b", fmt, opts, seed=1)
    model = _loaded(cfg, first)
    fresh = _loaded(cfg, second)
    gen = torch.Generator().manual_seed(0)
    x = {name: torch.randn(5, layer.input_size, generator=gen).half() for name, layer in model.items()}
    before = _outputs(model, x)
    params = {n: (p, p.data_ptr()) for n, p in model.named_parameters()}

    _reload(model, second)

    after, want = _outputs(model, x), _outputs(fresh, x)
    for name in model:
        torch.testing.assert_close(after[name], want[name], rtol=0, atol=0, msg=f"{name}: not the new weights")
        assert not torch.equal(after[name], before[name]), f"{name}: the reload changed nothing"
    now = dict(model.named_parameters())
    assert set(now) == set(params)
    for n, (p, ptr) in params.items():
        assert now[n] is p and p.data_ptr() == ptr, f"{n}: a new tensor; captured CUDA graphs would read the old one"
    for name, layer in model.items():  # vLLM's LoRA layers read their device from this alias
        assert getattr(layer, LORA_DEVICE_ATTR) is getattr(layer, "vmp_" + layer.vmp_weight_names[0]), name
    # Twice: the reload leaves the layers as loading did; in the other order of tensors, the last
    # to arrive are the k, v and up shards' (whole per shard: g_idx, weight_shape, weight_g_idx).
    _reload(model, first, reverse=True)
    for name, y in _outputs(model, x).items():
        torch.testing.assert_close(y, before[name], rtol=0, atol=0, msg=f"{name}: second reload")


def test_reload_that_changes_the_layout_is_refused_with_the_fix(vllm_tp1, tmp_path, monkeypatch):
    """The reload copies the new tensors into those the engine was built with, so their layout must
    not change. It can, where act-order groups straddle tensor-parallel ranks: the regrouped K
    follows the checkpoint's g_idx (act_order.sort_by_group). Stood in for here by an engine whose
    o_proj was built for another K: the reload names the layer, both layouts and the fix."""
    from dataclasses import replace

    monkeypatch.setenv("VMP_BACKEND", "reference")
    cfg, first = _checkpoint(tmp_path / "a", "gptq", dict(group_size=128, sym=False), seed=0)
    model = _loaded(cfg, first)
    o = model["o_proj"]
    o.vmp_spec = replace(o.vmp_spec, k=o.vmp_spec.k + 32)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.o_proj: the reloaded weights need the "
                                         r"reference backend with K=256 .* built for the reference backend with "
                                         r"K=288 .* Fix: start a new engine on the new weights"):
        _reload(model, first)
    # Built for a regrouped act-order layer (row-parallel, TP >= 2): the message says why.
    model = _loaded(cfg, first)
    o = model["o_proj"]
    o.vmp_spec = replace(o.vmp_spec, k=o.vmp_spec.k + 32, act_order=True, k_split=True)
    with pytest.raises(ValueError, match=r"groups straddle tensor-parallel ranks, so its regrouped K follows the "
                                         r"checkpoint's g_idx: .*load_format=dummy start\. Fix: start a new engine"):
        _reload(model, first)


@pytest.mark.parametrize("fmt,opts", [("gptq", dict(group_size=64, sym=True, act_order=True)),
                                      ("compressed-tensors", dict(group_size=128, sym=False, act_order=True))])
def test_reload_after_a_dummy_load_serves_the_reloaded_weights(vllm_tp1, tmp_path, monkeypatch, fmt, opts):
    """RLHF engines start with load_format="dummy" and receive their weights by reload. The dummy
    load's stand-ins (a seeded act-order permutation for g_idx; every tensor counted as loaded)
    are for that first load only: the reloaded layers compute with the checkpoint's g_idx."""
    from vllm.model_executor.model_loader.weight_utils import initialize_dummy_weights

    monkeypatch.setenv("VMP_BACKEND", "reference")
    cfg, tensors = _checkpoint(tmp_path / "a", fmt, opts, seed=0)
    fresh = _loaded(cfg, tensors)
    monkeypatch.setattr(vllm_tp1.load_config, "load_format", "dummy")
    model = _model(cfg)
    monkeypatch.setattr(vllm_tp1.load_config, "load_format", "auto")
    initialize_dummy_weights(model, None)  # what vLLM's DummyModelLoader does
    for layer in model.values():
        assert layer.vmp_dummy
        layer.quant_method.process_weights_after_loading(layer)
    _reload(model, tensors)
    gen = torch.Generator().manual_seed(0)
    x = {name: torch.randn(5, layer.input_size, generator=gen).half() for name, layer in model.items()}
    want = _outputs(fresh, x)
    for name, y in _outputs(model, x).items():
        torch.testing.assert_close(y, want[name], rtol=0, atol=0, msg=f"{name}: not the reloaded weights")
