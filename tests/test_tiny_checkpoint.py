"""Tiny HF-layout checkpoints: they load with transformers' AutoConfig / AutoTokenizer,
hold exactly the tensors each tool writes, unpack to the RTN-quantized weights, and the
dequantized model generates varied greedy tokens."""
import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from vllm_machete_plugin.canonical import dequantize
from vllm_machete_plugin.checkpoints import format_for
from vllm_machete_plugin.testing import build_tiny_checkpoint, read_tiny_linears, tiny_weights
from vllm_machete_plugin.testing.tiny import LINEARS, tiny_scheme

CASES = [
    ("gptq", dict(group_size=128, sym=True)),
    ("gptq", dict(group_size=32, sym=False, act_order=True)),
    ("gptq", dict(group_size=64, sym=False, dtype="bfloat16", checkpoint_format="gptq_v2")),
    ("gptq", dict(group_size=-1, sym=True, act_order=True)),
    ("awq", dict(group_size=128, sym=False)),
    ("awq", dict(group_size=64, sym=True, dtype="bfloat16")),
    ("awq", dict(group_size=-1, sym=False)),
    ("compressed-tensors", dict(group_size=128, sym=True)),
    ("compressed-tensors", dict(group_size=64, sym=False, act_order=True, dtype="bfloat16")),
    ("compressed-tensors", dict(group_size=-1, sym=False)),
]
IDS = [f"{f}-" + "-".join(f"{k}={v}" for k, v in o.items()) for f, o in CASES]
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def built(request, tmp_path_factory):
    fmt, opts = request.param
    path = build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), fmt, seed=3, **opts)
    return fmt, opts, path


def expected_linear_tensors(fmt, opts, k, n):
    """suffix -> (dtype, shape) as AutoGPTQ / AutoAWQ / llm-compressor write them."""
    g = k if opts["group_size"] == -1 else opts["group_size"]
    dtype = DTYPES[opts.get("dtype", "float16")]
    if fmt == "gptq":
        return {"qweight": (torch.int32, (k // 8, n)), "qzeros": (torch.int32, (k // g, n // 8)),
                "scales": (torch.float16, (k // g, n)), "g_idx": (torch.int32, (k,))}
    if fmt == "awq":
        return {"qweight": (torch.int32, (k, n // 8)), "qzeros": (torch.int32, (k // g, n // 8)),
                "scales": (torch.float16, (k // g, n))}
    out = {"weight_packed": (torch.int32, (n, k // 8)), "weight_scale": (dtype, (n, k // g)),
           "weight_shape": (torch.int64, (2,))}
    if not opts["sym"]:
        out["weight_zero_point"] = (torch.int32, (n // 8, k // g))
    if opts.get("act_order") and opts["group_size"] != -1:
        out["weight_g_idx"] = (torch.int32, (k,))
    return out


def test_config_and_tokenizer_load_with_transformers(built):
    fmt, opts, path = built
    config = AutoConfig.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert config.model_type == "llama" and config.architectures == ["LlamaForCausalLM"]
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (256, 768, 2)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 64)
    assert config.tie_word_embeddings is False
    assert config.vocab_size % 64 == 0 and len(tok) <= config.vocab_size < len(tok) + 64
    raw = json.loads((path / "config.json").read_text())
    assert raw["torch_dtype"] == opts.get("dtype", "float16")
    assert raw["quantization_config"]["quant_method"] == fmt
    ids = tok("The harbour town wakes before the sun.").input_ids
    assert ids[0] == tok.bos_token_id == config.bos_token_id
    assert tok.eos_token_id == config.eos_token_id and tok.eos_token == "</s>"
    assert tok.decode(ids, skip_special_tokens=True) == "The harbour town wakes before the sun."
    assert tok.decode(tok("Zebras & quokkas: 42!").input_ids[1:]) == "Zebras & quokkas: 42!"  # byte level
    generation = json.loads((path / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (config.bos_token_id, config.eos_token_id)


def test_safetensors_layout_is_the_tools(built):
    fmt, opts, path = built
    dtype = DTYPES[opts.get("dtype", "float16")]
    config = json.loads((path / "config.json").read_text())
    vocab, hidden = config["vocab_size"], config["hidden_size"]
    expected = {"model.embed_tokens.weight": (dtype, (vocab, hidden)), "model.norm.weight": (dtype, (hidden,)),
                "lm_head.weight": (dtype, (vocab, hidden))}
    for layer in range(2):
        pre = f"model.layers.{layer}"
        expected[f"{pre}.input_layernorm.weight"] = (dtype, (hidden,))
        expected[f"{pre}.post_attention_layernorm.weight"] = (dtype, (hidden,))
        for name, (k, n, _) in LINEARS.items():
            for suffix, spec in expected_linear_tensors(fmt, opts, k, n).items():
                expected[f"{pre}.{name}.{suffix}"] = spec
    with safe_open(path / "model.safetensors", "pt") as f:
        got = {key: (f.get_tensor(key).dtype, tuple(f.get_tensor(key).shape)) for key in f.keys()}
    assert got == expected


def test_unpacked_weights_equal_rtn(built):
    fmt, opts, path = built
    config = json.loads((path / "config.json").read_text())
    quant_opts = {k: v for k, v in opts.items() if k != "checkpoint_format"}
    _, want = tiny_weights(config["vocab_size"], seed=3, **quant_opts)
    got = read_tiny_linears(path)
    assert set(got) == set(want)
    for name, w in want.items():
        assert torch.equal(got[name].codes, w.codes), name
        assert torch.equal(dequantize(got[name]), dequantize(w)), name
    scheme = format_for(config["quantization_config"]).scheme_for("model.layers.0.self_attn.qkv_proj",
                                                                  {"qkv_proj": ["q_proj", "k_proj", "v_proj"]})
    assert scheme == tiny_scheme(fmt, opts["group_size"], opts["sym"], opts.get("act_order", False))


def test_build_is_deterministic(tmp_path):
    a = build_tiny_checkpoint(tmp_path / "a", "gptq", group_size=32, sym=False, act_order=True, seed=7)
    b = build_tiny_checkpoint(tmp_path / "b", "gptq", group_size=32, sym=False, act_order=True, seed=7)
    c = build_tiny_checkpoint(tmp_path / "c", "gptq", group_size=32, sym=False, act_order=True, seed=8)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_awq_act_order_is_refused(tmp_path):
    with pytest.raises(ValueError, match="AWQ checkpoints have no act-order"):
        build_tiny_checkpoint(tmp_path, "awq", act_order=True)


@pytest.mark.parametrize("fmt,opts", [("gptq", dict(sym=False, act_order=True, group_size=64)),
                                      ("awq", dict(sym=False)), ("compressed-tensors", dict(dtype="bfloat16"))])
def test_dequantized_model_generates_varied_tokens(tmp_path, fmt, opts):
    """The tiny model is random but not degenerate: greedy decoding does not repeat one token."""
    path = build_tiny_checkpoint(tmp_path, fmt, **opts)
    config = json.loads((path / "config.json").read_text())
    config.pop("quantization_config")
    model = LlamaForCausalLM(LlamaConfig(**config)).float().eval()
    state = {}
    with safe_open(path / "model.safetensors", "pt") as f:
        for key in f.keys():
            if not any(key.startswith(f"model.layers.{i}.{name}.") for i in range(2) for name in LINEARS):
                state[key] = f.get_tensor(key).float()
    for name, w in read_tiny_linears(path).items():
        state[f"{name}.weight"] = dequantize(w).t()
    model.load_state_dict(state, strict=True)
    tok = AutoTokenizer.from_pretrained(path)
    for prompt in ["Hello, my name is", "The capital of France is"]:
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.eos_token_id)
        new = out[0, ids.shape[1]:].tolist()
        assert len(set(new)) >= 8, (prompt, new)


@pytest.mark.parametrize("fmt,opts", [("gptq", dict(sym=True, act_order=True)), ("awq", dict(sym=False)),
                                      ("compressed-tensors", dict(sym=False, act_order=True, group_size=64))])
def test_vllm_builtin_configs_parse_the_written_quantization_config(tmp_path, fmt, opts):
    """The quantization_config is the tool's: vLLM's own GPTQ / AWQ / compressed-tensors
    configs read it (vLLM's dense GPTQ only takes sym=true)."""
    from vllm.model_executor.layers.quantization import get_quantization_config

    raw = json.loads((build_tiny_checkpoint(tmp_path, fmt, **opts) / "config.json").read_text())["quantization_config"]
    parsed = get_quantization_config(fmt).from_config(raw)
    if fmt == "compressed-tensors":
        args = parsed.target_scheme_map["Linear"]["weights"]
        assert (args.num_bits, args.group_size, args.symmetric, args.actorder) == (4, 64, False, "group")
    else:
        assert parsed.group_size == 128
        assert str(parsed.quant_type) == ("uint4b8" if fmt == "gptq" else "uint4")
