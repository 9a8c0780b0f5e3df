"""Greedy generation in a fresh process, for end-to-end comparisons of our method with
vLLM's built-in one on the same checkpoint. Prints one JSON object on the last line:
{"outputs": [{"token_ids": [...], "logprobs": [...], "top2": [[[id, lp], [id, lp]], ...]}, ...]}:
the chosen tokens, their logprobs, and the two most likely tokens of every step.

  python -m vllm_machete_plugin.testing.generate MODEL --quantization machete|builtin [--lora ADAPTER]
      [--reload-from MODEL2]

--reload-from: generate once on MODEL, then put the engine to sleep at level 2 (weights and KV
cache discarded), wake it and reload the weights of MODEL2 in place (vLLM's reload_weights, as
RLHF trainers do); the printed outputs are those of the reloaded engine, plus "before": the first.
With --load-format dummy, which vLLM cannot reload from a path, each worker reads MODEL2's
safetensors itself and reloads from them as an iterator, as weight-transfer engines do.
"""
import argparse
import json
import os

PROMPTS = [
    "The capital of France is", "Once upon a time there was", "In a galaxy far away",
    "The best way to learn", "def fibonacci(n):", "Water boils at", "My favourite colour is",
    "Quantized language models", "The stock market today", "A recipe for pancakes:",
    "Dear hiring manager,", "The theory of relativity", "Roses are red,",
    "Breaking news:", "import torch\n", "The weather tomorrow will be",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--quantization", default="machete", help="'builtin' = vLLM's own method")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--vary-batch", action="store_true",
                    help="afterwards, also generate for 1, 3 and 7 prompts (other graph sizes)")
    ap.add_argument("--lora", help="a PEFT LoRA adapter: the engine serves LoRA, and the even-numbered "
                                   "prompts run this adapter while the odd ones run the base model, in one batch")
    ap.add_argument("--cpu-offload-gb", type=float, default=0.0, help="vLLM's CPU weight offloading")
    ap.add_argument("--reload-from", help="a checkpoint of MODEL's architecture and quantization: see above")
    ap.add_argument("--load-format", default="auto", help="vLLM's load_format of the first load (dummy: random "
                                                          "weights, as RLHF engines start before their first reload)")
    args = ap.parse_args()

    if args.reload_from and args.load_format == "dummy":
        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # collective_rpc of _reload_from_files
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    lora_kw, requests = {}, None
    if args.lora:
        with open(f"{args.lora}/adapter_config.json") as f:
            lora_kw = dict(enable_lora=True, max_loras=1, max_lora_rank=json.load(f)["r"])
        adapter = LoRARequest("adapter", 1, args.lora)
        requests = [adapter if i % 2 == 0 else None for i in range(len(PROMPTS))]
    llm = LLM(model=args.model, dtype=args.dtype, enforce_eager=args.enforce_eager,
              quantization=None if args.quantization == "builtin" else args.quantization,
              tensor_parallel_size=args.tensor_parallel_size, max_model_len=512,
              gpu_memory_utilization=0.3, seed=0, cpu_offload_gb=args.cpu_offload_gb,
              enable_sleep_mode=bool(args.reload_from), load_format=args.load_format, **lora_kw)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, logprobs=2, ignore_eos=True)
    result = {"outputs": _outputs(llm.generate(PROMPTS, params, lora_request=requests))}
    if args.reload_from:
        llm.sleep(level=2)
        llm.wake_up()
        if args.load_format == "dummy":
            llm.collective_rpc(_reload_from_files, args=(args.reload_from,))
        else:
            llm.collective_rpc("reload_weights", kwargs={"weights_path": args.reload_from})
        result = {"outputs": _outputs(llm.generate(PROMPTS, params, lora_request=requests)),
                  "before": result["outputs"]}
    if args.vary_batch:
        for n in (1, 3, 7):
            llm.generate(PROMPTS[:n], params, lora_request=requests[:n] if requests else None)
    print(json.dumps(result))


def _reload_from_files(worker, path: str) -> None:
    """Runs in each worker: reload its model from the safetensors files under `path`."""
    from pathlib import Path

    from safetensors.torch import load_file

    weights = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        weights.update(load_file(str(f)))
    worker.model_runner.reload_weights(weights_iterator=iter(weights.items()))


def _outputs(outs) -> list[dict]:
    result = []
    for o in outs:
        c = o.outputs[0]
        result.append({"token_ids": list(c.token_ids),
                       "logprobs": [lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)],
                       # vLLM lists the sampled token first; the stable sort keeps it first on an exact tie
                       "top2": [sorted(([tok, v.logprob] for tok, v in lp.items()), key=lambda e: -e[1])[:2]
                                for lp in c.logprobs]})
    return result


if __name__ == "__main__":
    main()
