"""Shared fixtures. GPU tests (@pytest.mark.gpu) skip with a reason when there is no
CUDA GPU or the kernels were not built; everything else runs on the CPU in CI."""
import os
import random
import socket
import zlib

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        from vllm_machete_plugin.ops import _load
        err = _load()
        reason = f"kernels not built: {err}" if err else ""
    else:
        reason = "no CUDA GPU on this machine (GPU tests run on the device machine)"
    if not reason:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seeded(request):
    """Every test draws its random data from a seed of its own node id, so a failure on random
    data reproduces when that test runs alone; VMP_TEST_SEED=<s> shifts every test's seed (to
    fuzz over other data). torch.manual_seed seeds the CUDA generators too."""
    seed = zlib.crc32(f"{os.environ.get('VMP_TEST_SEED', '0')}/{request.node.nodeid}".encode())
    random.seed(seed)
    torch.manual_seed(seed)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_tp1():
    """A real vLLM tensor-parallel world of size 1 on the CPU (gloo), inside a
    current VllmConfig, so vLLM's linear layers can be built and run in tests."""
    from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel

    cfg = VllmConfig(device_config=DeviceConfig(device="cpu"))
    with set_current_vllm_config(cfg):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=f"tcp://127.0.0.1:{_free_port()}")
        initialize_model_parallel(1)
        yield cfg


@pytest.fixture
def register_plugin():
    import vllm_machete_plugin
    vllm_machete_plugin.register()
