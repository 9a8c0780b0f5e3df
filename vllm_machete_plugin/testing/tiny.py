"""Tiny quantized Llama checkpoints for end-to-end tests, written offline in the exact
on-disk layout of each format's own tool (AutoGPTQ, AutoAWQ, llm-compressor).

Every linear layer inside the decoder layers is RTN-quantized and packed by our format
module's pack(); embeddings, norms and lm_head stay unquantized in `dtype`. Sizes are
small but kernel friendly (N % 128 == 0 for every layer, K % 128 == 0 also at tp=2)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch

from ..canonical import CanonicalW4
from ..checkpoints import FORMATS, format_for
from ..checkpoints.base import LayerScheme, Partition
from .quantize import act_order_g_idx, quantize_rtn
from .tokenizer import BOS, EOS, build_tokenizer, save_tokenizer

HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 256, 768, 2, 4, 2, 64
MAX_POSITIONS = 2048
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}

# linear module -> (in_features K, out_features N, modules sharing its input / act-order g_idx)
LINEARS = {
    "self_attn.q_proj": (HIDDEN, HEADS * HEAD_DIM, "attn_in"),
    "self_attn.k_proj": (HIDDEN, KV_HEADS * HEAD_DIM, "attn_in"),
    "self_attn.v_proj": (HIDDEN, KV_HEADS * HEAD_DIM, "attn_in"),
    "self_attn.o_proj": (HEADS * HEAD_DIM, HIDDEN, "attn_out"),
    "mlp.gate_proj": (HIDDEN, INTERMEDIATE, "mlp_in"),
    "mlp.up_proj": (HIDDEN, INTERMEDIATE, "mlp_in"),
    "mlp.down_proj": (INTERMEDIATE, HIDDEN, "mlp_out"),
}


def tiny_scheme(fmt: str, group_size: int = 128, sym: bool = True, act_order: bool = False) -> LayerScheme:
    """The LayerScheme the tiny checkpoint of `fmt` is written with. AWQ always stores zero
    points (sym=True then means symmetric codes stored with zero point 8) and has no act-order."""
    if fmt == "awq" and act_order:
        raise ValueError("AWQ checkpoints have no act-order")
    return LayerScheme(bits=4, group_size=group_size, sym=sym and fmt != "awq",
                       act_order=act_order and group_size != -1)


def vocab_size_for(n_tokens: int) -> int:
    return -(-n_tokens // 64) * 64


def tiny_weights(vocab_size: int, group_size: int = 128, sym: bool = True, act_order: bool = False,
                 dtype: str = "float16", seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, CanonicalW4]]:
    """(unquantized tensors in `dtype` by HF name, RTN-quantized linears by HF module name).
    Deterministic in all arguments. Init: unit-gain linears (std 1/sqrt(K)) so attention and
    MLP shape the residual stream and greedy decoding is not stuck on one token."""
    gen = torch.Generator().manual_seed(seed)
    tdtype = DTYPES[dtype]
    plain = {"model.embed_tokens.weight": torch.randn(vocab_size, HIDDEN, generator=gen),
             "model.norm.weight": torch.ones(HIDDEN),
             "lm_head.weight": torch.randn(vocab_size, HIDDEN, generator=gen) * (2.0 / HIDDEN ** 0.5)}
    quantized = {}
    for layer in range(LAYERS):
        pre = f"model.layers.{layer}"
        plain[f"{pre}.input_layernorm.weight"] = torch.ones(HIDDEN)
        plain[f"{pre}.post_attention_layernorm.weight"] = torch.ones(HIDDEN)
        shared_g_idx = {}
        for name, (k, n, group) in LINEARS.items():
            w = torch.randn(n, k, generator=gen) / k ** 0.5
            g_idx = None
            if act_order and group_size != -1:
                if group not in shared_g_idx:
                    shared_g_idx[group] = act_order_g_idx(k, group_size, gen)
                g_idx = shared_g_idx[group]
            quantized[f"{pre}.{name}"] = quantize_rtn(w, group_size, sym, act_order, tdtype, g_idx=g_idx)
    return {k: v.to(tdtype).contiguous() for k, v in plain.items()}, quantized


def build_tiny_checkpoint(path: Union[str, Path], fmt: str, group_size: int = 128, sym: bool = True,
                          act_order: bool = False, dtype: str = "float16", seed: int = 0,
                          **format_kw) -> Path:
    """Write a tiny LlamaForCausalLM in HF layout to `path` and return it. `format_kw`
    goes to the format's pack() / quantization_config() (e.g. checkpoint_format="gptq_v2")."""
    from safetensors.torch import save_file

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {list(FORMATS)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    save_tokenizer(tok, path, MAX_POSITIONS)
    vocab = vocab_size_for(tok.get_vocab_size())
    scheme = tiny_scheme(fmt, group_size, sym, act_order)
    cls = FORMATS[fmt]
    tensors, quantized = tiny_weights(vocab, group_size, sym, act_order, dtype, seed)
    for name, w in quantized.items():
        for suffix, t in cls.pack(w, scheme, **format_kw).items():
            tensors[f"{name}.{suffix}"] = t
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
        "vocab_size": vocab, "max_position_embeddings": MAX_POSITIONS, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": False, "bos_token_id": bos, "eos_token_id": eos,
        "initializer_range": 0.02, "use_cache": True, "torch_dtype": dtype,
        "quantization_config": cls.quantization_config(scheme, **format_kw),
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"_from_model_config": True, "bos_token_id": bos, "eos_token_id": eos}
    (path / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return path


def read_tiny_linears(path: Union[str, Path]) -> dict[str, CanonicalW4]:
    """Unpack every quantized linear of a tiny checkpoint with our format module (no vLLM)."""
    from safetensors.torch import load_file

    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    fmt = format_for(config["quantization_config"])
    tensors = load_file(str(path / "model.safetensors"))
    out = {}
    for layer in range(config["num_hidden_layers"]):
        for name, (k, n, _) in LINEARS.items():
            prefix = f"model.layers.{layer}.{name}"
            holder = torch.nn.Module()
            for key, t in tensors.items():
                if key.startswith(prefix + "."):
                    holder.register_buffer(key[len(prefix) + 1:], t)
            scheme = fmt.scheme_for(prefix, {})
            out[prefix] = fmt.to_canonical(holder, scheme, Partition(k=k, output_sizes=(n,), k_full=k, n_full=n),
                                           where=prefix)
    return out


def build_tiny_lora(path: Union[str, Path], rank: int = 8, dtype: str = "float16", seed: int = 1,
                    strength: float = 0.5) -> Path:
    """Write a PEFT LoRA adapter for the tiny checkpoints to `path` (adapter_config.json and
    adapter_model.safetensors, as PEFT saves them) and return it. Every linear of LINEARS in every
    layer gets lora_A [rank, K] and lora_B [N, rank] with lora_alpha == rank (scaling 1); B @ A has
    entries of std strength / sqrt(K), `strength` times the base weights', so the adapter changes
    greedy tokens."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(LAYERS):
        for name, (k, n, _) in LINEARS.items():
            pre = f"base_model.model.model.layers.{layer}.{name}"
            tensors[f"{pre}.lora_A.weight"] = torch.randn(rank, k, generator=gen) / k ** 0.5
            tensors[f"{pre}.lora_B.weight"] = torch.randn(n, rank, generator=gen) * (strength / rank ** 0.5)
    save_file({key: t.to(DTYPES[dtype]).contiguous() for key, t in tensors.items()},
              str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank, "lora_dropout": 0.0,
              "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
              "target_modules": sorted({name.split(".")[-1] for name in LINEARS}), "modules_to_save": None}
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return path
