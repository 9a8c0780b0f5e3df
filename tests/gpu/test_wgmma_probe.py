"""The wgmma probe op runs on Hopper, its time grows with the work, bad arguments are refused."""
import pytest
import torch

from vllm_machete_plugin import ops

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.get_device_capability(0) == (9, 0)
         and ops.kernels_available() and ops.has_op("wgmma_probe")),
    reason="needs a Hopper GPU and _machete_C built for sm_90a")


@pytest.mark.parametrize("n,rs", [(64, True), (128, False), (256, True)])
def test_time_grows_with_iterations(n, rs):
    short = min(torch.ops.vmp.wgmma_probe(n, rs, 2, 2, 2000) for _ in range(3))
    long = min(torch.ops.vmp.wgmma_probe(n, rs, 2, 2, 8000) for _ in range(3))
    assert 0 < short < long
    assert 2.5 < long / short < 5.0  # 4x the k-blocks, minus a fixed launch cost


@pytest.mark.parametrize("rs,depth", [(True, 2), (False, 2), (True, 3)])
@pytest.mark.parametrize("n", [64, 128])
def test_upconversion_rounds_take_time(n, rs, depth):
    """The ALU-only variant runs (its work survived ptxas) and two rounds cost more than one;
    with the wgmmas the k-blocks take at least as long as the wgmmas alone."""
    one = min(torch.ops.vmp.wgmma_probe(n, rs, 2, depth, 4000, 1, False) for _ in range(3))
    two = min(torch.ops.vmp.wgmma_probe(n, rs, 2, depth, 4000, 2, False) for _ in range(3))
    mma = min(torch.ops.vmp.wgmma_probe(n, rs, 2, depth, 4000) for _ in range(3))
    both = min(torch.ops.vmp.wgmma_probe(n, rs, 2, depth, 4000, 1, True) for _ in range(3))
    assert 0.1 * mma < one < two  # one round is ~75 instructions per k-block and warp: far from free
    assert both >= 0.95 * mma


def test_three_groups_in_flight_with_an_odd_count_of_k_blocks():
    """Three register sets run iters % 3 != 0 k-blocks too (a tail in set order): time grows with iters."""
    short = min(torch.ops.vmp.wgmma_probe(64, True, 2, 3, 3002, 1, True) for _ in range(3))
    long = min(torch.ops.vmp.wgmma_probe(64, True, 2, 3, 12004, 1, True) for _ in range(3))
    assert 2.5 < long / short < 5.0


@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("n", [64, 128])
def test_split_transform_warpgroups_take_time(n, split):
    """Upconversion in 2 transform warpgroups beside 2 wgmma warpgroups: alone it runs (two rounds
    cost more than one), and with the wgmmas it takes at least as long as the wgmmas alone."""
    one = min(torch.ops.vmp.wgmma_probe(n, False, 4, 2, 4000, 1, False, split) for _ in range(3))
    two = min(torch.ops.vmp.wgmma_probe(n, False, 4, 2, 4000, 2, False, split) for _ in range(3))
    mma = min(torch.ops.vmp.wgmma_probe(n, False, 2, 2, 4000) for _ in range(3))
    both = min(torch.ops.vmp.wgmma_probe(n, False, 4, 2, 4000, 1, True, split) for _ in range(3))
    assert 0.1 * mma < one < two
    assert both >= 0.95 * mma
    short = min(torch.ops.vmp.wgmma_probe(n, False, 4, 2, 2000, 1, True, split) for _ in range(3))
    assert 1.3 < both / short < 2.5  # twice the k-blocks, minus a fixed launch cost


def test_bad_arguments_are_named():
    with pytest.raises(RuntimeError, match="n must be 64/128/256"):
        torch.ops.vmp.wgmma_probe(96, True, 1, 1, 100)
    with pytest.raises(RuntimeError, match="warpgroups=3"):
        torch.ops.vmp.wgmma_probe(64, True, 3, 1, 100)
    with pytest.raises(RuntimeError, match="dq=1 rs=false in_flight=3"):
        torch.ops.vmp.wgmma_probe(64, False, 2, 3, 100, 1, True)
    with pytest.raises(RuntimeError, match="dq=1 rs=true in_flight=1"):
        torch.ops.vmp.wgmma_probe(64, True, 2, 1, 100, 1, True)
    with pytest.raises(RuntimeError, match="iters even"):
        torch.ops.vmp.wgmma_probe(64, True, 2, 2, 101)
    with pytest.raises(RuntimeError, match="split=1 warpgroups=2"):
        torch.ops.vmp.wgmma_probe(64, False, 2, 2, 100, 1, True, 1)
    with pytest.raises(RuntimeError, match="split=2 warpgroups=4 dq=0"):
        torch.ops.vmp.wgmma_probe(64, False, 4, 2, 100, 0, True, 2)
    with pytest.raises(RuntimeError, match="rs=true"):
        torch.ops.vmp.wgmma_probe(64, True, 4, 2, 100, 1, True, 1)
    with pytest.raises(RuntimeError, match="split=3"):
        torch.ops.vmp.wgmma_probe(64, False, 4, 2, 100, 1, True, 3)
    with pytest.raises(RuntimeError, match="warpgroups=4"):  # 4 warpgroups only with split
        torch.ops.vmp.wgmma_probe(64, False, 4, 2, 100, 1, True)
