"""Tensor parallelism with vLLM's real layers and collectives: two CPU processes (gloo),
each holding its TP=2 shard of a tiny checkpoint's layers, loaded by vLLM's weight
loaders through our method (reference backend forced). Row-parallel outputs are
all-reduced by vLLM; column-parallel shards are compared slice by slice."""
import json
import socket

import torch
import torch.multiprocessing as mp

from vllm_machete_plugin.backends.reference import reference_mm
from vllm_machete_plugin.testing import build_tiny_checkpoint
from vllm_machete_plugin.testing.tiny import read_tiny_linears

CASES = {
    "gptq-asym-g128": ("gptq", dict(group_size=128, sym=False)),
    "gptq-actorder-g32": ("gptq", dict(group_size=32, act_order=True)),
    "awq-g64": ("awq", dict(group_size=64)),
    "ct-asym-channel": ("compressed-tensors", dict(group_size=-1, sym=False)),
}
TP = 2
M = 3


def _x(k: int) -> torch.Tensor:
    return torch.randn(M, k, generator=torch.Generator().manual_seed(k)).half()


def _worker(rank: int, port: int, ckpts: dict, out: str) -> None:
    import os
    os.environ["VMP_BACKEND"] = "reference"
    from safetensors.torch import load_file
    from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear

    from vllm_machete_plugin.config import MacheteConfig

    with set_current_vllm_config(VllmConfig(device_config=DeviceConfig(device="cpu"))):
        init_distributed_environment(world_size=TP, rank=rank, local_rank=rank, backend="gloo",
                                     distributed_init_method=f"tcp://127.0.0.1:{port}")
        initialize_model_parallel(TP)
        results = {}
        for name, path in ckpts.items():
            cfg = json.load(open(f"{path}/config.json"))
            qc = MacheteConfig.from_config(cfg["quantization_config"])
            qc.packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
            tensors = load_file(f"{path}/model.safetensors")
            kw = dict(bias=False, params_dtype=torch.float16, quant_config=qc)
            pre = "model.layers.0"
            down = RowParallelLinear(768, 256, prefix=f"{pre}.mlp.down_proj", **kw)
            qkv = QKVParallelLinear(256, 64, 4, 2, prefix=f"{pre}.self_attn.qkv_proj", **kw)
            for key, t in tensors.items():
                module, suffix = key.split(".")[-2:]
                if not key.startswith(pre + "."):
                    continue
                if module == "down_proj":
                    p = getattr(down, suffix)
                    p.weight_loader(p, t)
                elif module in ("q_proj", "k_proj", "v_proj"):
                    p = getattr(qkv, suffix)
                    p.weight_loader(p, t, module[0])
            for layer in (down, qkv):
                layer.quant_method.process_weights_after_loading(layer)
            half = 768 // TP
            results[name] = {"down": down(_x(768)[:, rank * half:(rank + 1) * half])[0],
                             "qkv": qkv(_x(256))[0]}
        torch.save(results, f"{out}/rank{rank}.pt")


def test_tp2_matches_the_whole_layer(tmp_path):
    ckpts = {name: str(build_tiny_checkpoint(tmp_path / name, fmt, **opts)) for name, (fmt, opts) in CASES.items()}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, ckpts, str(tmp_path)), nprocs=TP)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(TP)]
    for name, path in ckpts.items():
        w = read_tiny_linears(path)
        pre = "model.layers.0"
        down = reference_mm(_x(768), w[f"{pre}.mlp.down_proj"]).float()
        q, k, v = (reference_mm(_x(256), w[f"{pre}.self_attn.{p}_proj"]).float() for p in "qkv")
        for r, res in enumerate(ranks):
            # Row-parallel: each rank holds the all-reduced sum of the K halves.
            torch.testing.assert_close(res[name]["down"].float(), down, rtol=2e-3, atol=4e-3 * down.abs().max().item(),
                                       msg=f"{name}: down_proj on rank {r}")
            want_qkv = torch.cat([q[:, r * 128:(r + 1) * 128], k[:, r * 64:(r + 1) * 64], v[:, r * 64:(r + 1) * 64]], 1)
            torch.testing.assert_close(res[name]["qkv"].float(), want_qkv, rtol=2e-3,
                                       atol=4e-3 * want_qkv.abs().max().item(), msg=f"{name}: qkv_proj on rank {r}")
