"""The small-M kernel's L2 prefetch of the next layer's weight (machete_small_m.cu,
prefetch_item), through the host-only op vmp::machete_prefetch_items: which bytes of the next
layer's prepacked weight and scales a call asks L2 for. Checked against the layout reference
(machete_layout_ref.py) and the next call's own reading order. Host code: no GPU needed."""
from __future__ import annotations

import pytest
import torch

from vllm_machete_plugin import ops
from vllm_machete_plugin.machete_layout_ref import prepacked_offsets

pytestmark = pytest.mark.skipif(not (ops.kernels_available() and ops.has_op("machete_prefetch_items")),
                                reason="the Machete extension was not built (needs nvcc and VMP_CUDA_ARCHS with 90)")

OCTET_ROWS = 512  # a small-M block unit: 8 warps x 64 rows, 128 k (two 64-deep K columns)


def items(tokens, sms, blocks, n, k, group, zeros, budget):
    flat = torch.ops.vmp.machete_prefetch_items(tokens, sms, blocks, n, k, group, zeros, budget)
    return [tuple(flat[i:i + 4]) for i in range(0, len(flat), 4)]


def next_call_heads(tokens, sms, n, k, zeros, budget):
    """(octet, K column) pairs the next call's blocks read first: its units (octet-major, 128-deep
    k blocks) cut into equal stripes over its resident blocks (2 per SM at 8 tokens, 1 at 16),
    and of each stripe as many 64-deep columns, in reading order, as the budget pays for
    (16 KB of codes and 1 KB of scales, 1 more of zeros, per column and stripe)."""
    octets, kb = -(-n // OCTET_ROWS), -(-k // 128)
    units = octets * kb
    slots = sms * (2 if tokens == 8 else 1)
    stripe = -(-units // slots)
    grid = -(-units // stripe)
    cols = min(budget // ((16384 + (2 if zeros else 1) * 1024) * grid), 2 * stripe)
    heads = []
    for s in range(grid):
        for c in range(cols):
            u = s * stripe + c // 2
            if u < min(units, (s + 1) * stripe) and 2 * (u % kb) + c % 2 < k // 64:
                heads.append((u // kb, 2 * (u % kb) + c % 2))
    return heads


CASES = [  # tokens, SMs, this call's blocks, next N, next K, group, zero points, budget
    (8, 132, 264, 1536, 1024, 128, False, 1 << 20),
    (16, 132, 132, 640, 1088, 64, True, 8 << 20),    # a partial octet; K % 128 == 64
    (8, 4, 7, 1024, 512, -1, False, 1 << 30),        # the budget covers the whole weight
    (16, 3, 2, 576, 256, 128, True, 150_000),
]


@pytest.mark.parametrize("case", CASES)
def test_prefetch_reads_the_heads_of_the_next_calls_stripes_within_the_budget(case):
    tokens, sms, blocks, n, k, group, zeros, budget = case
    got = items(tokens, sms, blocks, n, k, group, zeros, budget)
    assert got, "a budget of at least one column per stripe prefetches something"
    g = k if group == -1 else group
    byte_of = prepacked_offsets(k, n) // 2  # [K, N]: byte of each code in the prepacked weight
    pairs = []
    for w_off, w_bytes, g_off, g_bytes in got:
        assert w_off % 16 == 0 and w_bytes % 16 == 0 and g_off % 16 == 0 and g_bytes % 16 == 0
        assert 0 <= w_off and w_off + w_bytes <= n * k // 2 and 0 <= g_off and g_off + g_bytes <= (k // g) * n * 2
        # Which codes those bytes hold: one octet's rows at one 64-deep K column, and nothing else.
        col = (byte_of >= w_off) & (byte_of < w_off + w_bytes)
        ks, ns = col.nonzero(as_tuple=True)
        ak, rgo = int(ks.min()) // 64, int(ns.min()) // OCTET_ROWS
        rows = min(OCTET_ROWS, n - OCTET_ROWS * rgo)
        assert int(col.sum()) == 2 * w_bytes == 64 * rows
        assert int(ks.max()) // 64 == ak and int(ns.max()) == OCTET_ROWS * rgo + rows - 1
        # ... and the scales (and zeros) of those rows at that column's group row.
        assert (g_off, g_bytes) == ((64 * ak // g * n + OCTET_ROWS * rgo) * 2, 2 * rows)
        pairs.append((rgo, ak))
    assert len(set(pairs)) == len(pairs), "each column once"
    assert sorted(pairs) == sorted(next_call_heads(tokens, sms, n, k, zeros, budget))
    spent = sum(wb + (2 if zeros else 1) * gb for _, wb, _, gb in got)
    assert spent <= budget
    # However this call's blocks split them, the same columns are prefetched.
    assert sorted(items(tokens, sms, max(1, blocks // 2), n, k, group, zeros, budget)) == sorted(got)


def test_a_large_budget_prefetches_every_byte_once_and_a_small_one_nothing():
    got = items(8, 4, 7, 1024, 512, -1, False, 1 << 30)
    assert sum(wb for _, wb, _, _ in got) == 1024 * 512 // 2
    assert items(16, 132, 132, 8192, 8192, 128, False, 1 << 20) == []  # less than a column per stripe
    assert items(16, 132, 132, 8192, 8192, 128, False, 0) == []


def test_bad_arguments_are_named():
    with pytest.raises(RuntimeError, match=r"machete_prefetch_items: needs tokens 8 or 16.*group_size=96"):
        torch.ops.vmp.machete_prefetch_items(8, 132, 132, 1024, 1152, 96, False, 1 << 20)
    with pytest.raises(RuntimeError, match=r"N=1000"):
        torch.ops.vmp.machete_prefetch_items(8, 132, 132, 1000, 1024, 128, False, 1 << 20)
