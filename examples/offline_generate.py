"""Generate text with vLLM through our `machete` quantization method.

  python examples/offline_generate.py                 # tiny demo checkpoint, built on the fly
  python examples/offline_generate.py ./Llama-GPTQ    # a GPTQ / AWQ / compressed-tensors / AutoRound W4A16 model

The demo checkpoint is a 2-layer Llama with random weights, quantized and packed as
GPTQ by our own code, so its text is gibberish; what it shows is the whole path
(plugin -> loader -> repack -> our kernels) running. Without a CUDA GPU vLLM cannot
run, so the demo then runs the pure-PyTorch reference path instead: the same
checkpoint, unpacked by our loader, dequantized, and run with transformers on the CPU.
"""
import argparse
import tempfile
from pathlib import Path

PROMPTS = ["The quick brown fox", "Once upon a time", "Quantized models are"]


def generate_vllm(model: str, prompts: list[str], max_tokens: int, dtype: str, enforce_eager: bool):
    import os

    # Building the demo checkpoint ran multi-threaded torch (OpenMP) in this process; an
    # engine process forked from it can hang on its first OpenMP region, so start it fresh.
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, quantization="machete", dtype=dtype, enforce_eager=enforce_eager,
              max_model_len=1024, gpu_memory_utilization=0.5)
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens))
    return [o.outputs[0].text for o in outs]


def generate_cpu_reference(model: Path, prompts: list[str], max_tokens: int):
    """The demo checkpoint through our loader + reference dequant, run by transformers."""
    import json

    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from vllm_machete_plugin.canonical import dequantize
    from vllm_machete_plugin.testing.tiny import read_tiny_linears

    cfg = json.loads((model / "config.json").read_text())
    cfg.pop("quantization_config")
    hf = LlamaForCausalLM(LlamaConfig(**cfg)).float().eval()
    state = {k: v.float() for k, v in load_file(str(model / "model.safetensors")).items()
             if k.endswith(("embed_tokens.weight", "norm.weight", "layernorm.weight", "lm_head.weight"))}
    for name, w in read_tiny_linears(model).items():
        state[f"{name}.weight"] = dequantize(w).t()  # torch Linear layout [N, K]
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    tok = AutoTokenizer.from_pretrained(str(model))
    texts = []
    for p in prompts:
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            out = hf.generate(ids, max_new_tokens=max_tokens, do_sample=False,
                              pad_token_id=tok.eos_token_id)
        texts.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return texts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="model directory (default: build the tiny demo checkpoint)")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs / torch.compile")
    args = ap.parse_args()

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from vllm_machete_plugin.testing import build_tiny_checkpoint
            model = str(build_tiny_checkpoint(Path(tmp) / "tiny-llama-gptq", "gptq", dtype=args.dtype))
            print(f"built the tiny demo checkpoint (GPTQ, random weights) at {model}")
        if torch.cuda.is_available():
            texts = generate_vllm(model, PROMPTS, args.max_tokens, args.dtype, args.enforce_eager)
            how = f"vLLM --quantization machete on {torch.cuda.get_device_name()}"
        elif args.model is None:
            print("no CUDA GPU: vLLM cannot run here; running the CPU reference path instead")
            texts = generate_cpu_reference(Path(model), PROMPTS, args.max_tokens)
            how = "CPU reference path (our loader + dequant, transformers)"
        else:
            raise SystemExit("vLLM needs a CUDA GPU (sm_80 or newer) to serve a model; none was found.")
    print(f"--- {how}")
    for p, t in zip(PROMPTS, texts):
        print(f"{p!r} -> {t!r}")


if __name__ == "__main__":
    main()
