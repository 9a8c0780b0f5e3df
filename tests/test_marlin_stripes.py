"""The Marlin stripe map (kernels/marlin/marlin_stripes.h), through the host-only op
vmp::marlin_stripe_map: which block does which units, and which blocks share a slice. Host
code only: runs without a GPU wherever the Marlin extension was built (CI builds it)."""
from __future__ import annotations

import pytest
import torch

from vllm_machete_plugin import ops

pytestmark = pytest.mark.skipif(not (ops.kernels_available() and ops.has_op("marlin_stripe_map")),
                                reason="the Marlin extension was not built (needs nvcc)")

H200_SLOTS = 132  # one block per SM from 17 tokens up
# (chunks, n_tiles, k_tiles): Llama-3.1-70B layers (N / 256, K / 128) at 64-row chunks, and odd ones
SHAPES = [(4, 224, 64), (2, 224, 64), (16, 32, 224), (8, 40, 64), (5, 32, 32), (3, 7, 5), (1, 224, 64),
          (1, 32, 64), (64, 40, 64), (132, 2, 3), (7, 1, 1)]


def stripe_map(chunks, n_tiles, k_tiles, slots, chunk_major, with_order=False):
    """chunk_major: True / False force an order (plan order=1 / 0), None takes the default."""
    order = -1 if chunk_major is None else int(chunk_major)
    flat = torch.ops.vmp.marlin_stripe_map(chunks, n_tiles, k_tiles, slots, order)
    n_slices = chunks * n_tiles
    blocks, slices = flat[1:len(flat) - 2 * n_slices], flat[len(flat) - 2 * n_slices:]
    out = list(zip(blocks[::2], blocks[1::2])), list(zip(slices[::2], slices[1::2]))
    return (*out, bool(flat[0])) if with_order else out


@pytest.mark.parametrize("chunk_major", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_stripes_cover_every_unit_once_and_name_each_slices_blocks(shape, chunk_major):
    chunks, n_tiles, k_tiles = shape
    if chunk_major and chunks > H200_SLOTS:
        pytest.skip("chunk-major needs chunks <= slots")
    blocks, slices = stripe_map(chunks, n_tiles, k_tiles, H200_SLOTS, chunk_major)
    total = chunks * n_tiles * k_tiles
    assert 1 <= len(blocks) <= H200_SLOTS
    assert blocks[0][0] == 0 and blocks[-1][1] == total and all(b < e for b, e in blocks)
    assert all(blocks[i][1] == blocks[i + 1][0] for i in range(len(blocks) - 1))  # a partition, in order
    span = n_tiles * k_tiles if chunk_major else total
    assert all(b // span == (e - 1) // span for b, e in blocks)  # a stripe never leaves its span
    for s, (first, last) in enumerate(slices):
        lo, hi = s * k_tiles, (s + 1) * k_tiles
        owners = [i for i, (b, e) in enumerate(blocks) if b < hi and e > lo]
        assert owners == list(range(first, last + 1)), s
    split = [sum(1 for f, l in slices if f != l and f <= i <= l) for i in range(len(blocks))]
    assert max(split) <= 2  # the kernel's two reduction slots per block


def test_n_major_is_the_even_split_of_all_units():
    blocks, _ = stripe_map(4, 224, 64, H200_SLOTS, False)
    per = -(-4 * 224 * 64 // H200_SLOTS)
    assert blocks[:3] == [(0, per), (per, 2 * per), (2 * per, 3 * per)] and len(blocks) == -(-4 * 224 * 64 // per)


@pytest.mark.parametrize("chunks,slots,idle", [(4, 132, 0), (16, 132, 4), (5, 132, 2), (8, 108, 4)])
def test_chunk_major_walks_every_chunk_in_step(chunks, slots, idle):
    """Block g of every chunk's group owns the same (n-tile, k-tile) units of its chunk, so
    the chunks' blocks fetch each weight tile at the same time (slots % chunks stay idle)."""
    n_tiles, k_tiles = 224, 64
    blocks, _ = stripe_map(chunks, n_tiles, k_tiles, slots, True)
    span, groups = n_tiles * k_tiles, len(blocks) // chunks
    assert len(blocks) == slots - idle and len(blocks) % chunks == 0
    for c in range(chunks):
        assert [(b - c * span, e - c * span) for b, e in blocks[c * groups:(c + 1) * groups]] == \
            [(b, e) for b, e in blocks[:groups]]


@pytest.mark.parametrize("chunks,slots,want", [
    (1, 132, False), (2, 132, True), (8, 132, True), (16, 132, True), (64, 132, True),
    (100, 132, False),  # 32 of 132 slots would idle
    (200, 132, False),  # more chunks than slots
    (9, 132, True),     # 6 idle <= 132 / 16
    (20, 132, False),   # 12 idle > 132 / 16
    (8, 108, True),     # A100: 4 idle <= 108 / 16
])
def test_default_order_is_chunk_major_where_few_slots_idle(chunks, slots, want):
    """The planner's default (order -1, StripeMap::plan): chunk-major for 2..slots
    chunks when at most slots / 16 slots idle, n-major otherwise; order=0 / 1 force an order
    (1 only where chunk-major can be)."""
    blocks, _, chunk_major = stripe_map(chunks, 40, 64, slots, None, with_order=True)
    assert chunk_major == want
    forced = stripe_map(chunks, 40, 64, slots, want, with_order=True)
    assert forced[2] == want and forced[0] == blocks
    assert stripe_map(chunks, 40, 64, slots, False, with_order=True)[2] is False
    assert stripe_map(chunks, 40, 64, slots, True, with_order=True)[2] is (2 <= chunks <= slots)


def test_bad_arguments_are_named():
    with pytest.raises(RuntimeError, match="order -1, 0 or 1"):
        torch.ops.vmp.marlin_stripe_map(4, 4, 4, 132, 2)
    with pytest.raises(RuntimeError, match="marlin_stripe_map"):
        torch.ops.vmp.marlin_stripe_map(0, 4, 4, 132, 0)
