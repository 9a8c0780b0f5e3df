"""The L2 prefetch of the next layer's weight (VMP_L2_PREFETCH_MB) by the small-M Machete kernel
(machete_small_m.cu) and the Marlin kernel (marlin_gemm.cu), through their host-only ops
vmp::machete_prefetch_items and vmp::marlin_prefetch_items: which bytes of the next layer's
weight and group rows a call asks L2 for. Checked against the layout references
(machete_layout_ref.py, marlin_layout_ref.py) and the next call's own reading order (for
Marlin, its planner's tile and stripe map). Host code: no GPU needed."""
from __future__ import annotations

import pytest
import torch

from vllm_machete_plugin import ops
from vllm_machete_plugin.machete_layout_ref import prepacked_offsets
from vllm_machete_plugin.marlin_layout_ref import _source_index

needs_machete = pytest.mark.skipif(not (ops.kernels_available() and ops.has_op("machete_prefetch_items")),
                                   reason="the Machete extension was not built (needs nvcc and VMP_CUDA_ARCHS with 90)")
needs_marlin = pytest.mark.skipif(not (ops.kernels_available() and ops.has_op("marlin_prefetch_items")),
                                  reason="the Marlin extension was not built (needs nvcc)")

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


@needs_machete
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


@needs_machete
def test_a_large_budget_prefetches_every_byte_once_and_a_small_one_nothing():
    got = items(8, 4, 7, 1024, 512, -1, False, 1 << 30)
    assert sum(wb for _, wb, _, _ in got) == 1024 * 512 // 2
    assert items(16, 132, 132, 8192, 8192, 128, False, 1 << 20) == []  # less than a column per stripe
    assert items(16, 132, 132, 8192, 8192, 128, False, 0) == []


@needs_machete
def test_bad_arguments_are_named():
    with pytest.raises(RuntimeError, match=r"machete_prefetch_items: needs tokens 8 or 16.*group_size=96"):
        torch.ops.vmp.machete_prefetch_items(8, 132, 132, 1024, 1152, 96, False, 1 << 20)
    with pytest.raises(RuntimeError, match=r"N=1000"):
        torch.ops.vmp.machete_prefetch_items(8, 132, 132, 1000, 1024, 128, False, 1 << 20)


# ---- Marlin ------------------------------------------------------------------------------

GPUS = {"H200": (132, 233472, 232448, 1024), "A100": (108, 167936, 166912, 1024)}


def marlin_items(m, n_pad, k_pad, group, zeros, gpu, blocks, budget, plan=None):
    flat = torch.ops.vmp.marlin_prefetch_items(m, n_pad, k_pad, group, zeros, *GPUS[gpu], blocks, budget, plan)
    return [tuple(flat[i:i + 4]) for i in range(0, len(flat) - 2, 4)], flat[-2], flat[-1]


def marlin_code_bytes(k_pad, n_pad):
    """int64 [K_pad, N_pad]: byte of each code in the packed weight (memory order of the
    [K_pad/16, 2 N_pad] int32 tensor: sub-tile, lane, word, nibble; two nibbles a byte)."""
    rows, cols = _source_index(k_pad, n_pad, "cpu")
    out = torch.empty(k_pad, n_pad, dtype=torch.int64)
    out[rows.flatten(), cols.flatten()] = torch.arange(rows.numel()) // 2
    return out


def marlin_heads(m, n_pad, k_pad, gpu, head, plan=None):
    """(n-tile, k-tile) of the first `head` units of every stripe of the next call at M = m:
    its planner's tile (chunks, blocks per SM) and stripe map."""
    _, chunks, _, blocks_per_sm, _, _ = torch.ops.vmp.marlin_tile_plan(m, n_pad, k_pad, *GPUS[gpu], plan)
    n_tiles, k_tiles = n_pad // 256, k_pad // 128
    flat = torch.ops.vmp.marlin_stripe_map(chunks, n_tiles, k_tiles, GPUS[gpu][0] * blocks_per_sm, -1)
    chunk_major, stripes = bool(flat[0]), flat[1:len(flat) - 2 * chunks * n_tiles]
    heads = []
    for b, e in zip(stripes[::2], stripes[1::2]):
        for u in range(b, min(e, b + head)):
            s = u // k_tiles
            heads.append((s % n_tiles if chunk_major else s // chunks, u % k_tiles))
    return heads, len(stripes) // 2


# M, next N_pad, next K_pad, group, zero points, GPU, this call's blocks, budget, plan. Only 16-row
# tiles prefetch: above 16 tokens that takes VMP_MARLIN_PLAN's mb=1 (chunks of 16 rows).
MARLIN_CASES = [
    (1, 1536, 2048, 128, False, "H200", 132, 2 << 20, None),
    (16, 1024, 1152, 32, True, "A100", 108, 4 << 20, None),    # four group rows per unit
    (64, 1536, 1024, -1, False, "H200", 132, 1 << 30, "mb=1"),  # every unit, once per M chunk
    (128, 768, 1024, 64, False, "H200", 100, 3 << 20, "mb=1"),  # 8 M chunks, chunk-major: all read each unit
]


@needs_marlin
@pytest.mark.parametrize("case", MARLIN_CASES)
def test_marlin_prefetch_reads_the_heads_of_the_next_calls_stripes_within_the_budget(case):
    m, n_pad, k_pad, group, zeros, gpu, blocks, budget, plan = case
    got, grid, head = marlin_items(m, n_pad, k_pad, group, zeros, gpu, blocks, budget, plan)
    assert got and head >= 1
    group_rows = 1 if group == -1 else 128 // group
    byte_of = marlin_code_bytes(k_pad, n_pad)
    bands = {}
    for w_off, w_bytes, g_off, g_bytes in got:
        assert w_bytes == 2048 and w_off % 16 == 0 and 0 <= w_off and w_off + w_bytes <= k_pad * n_pad // 2
        # The run holds the codes of 16 k rows x 256 columns: one band of one unit, nothing else.
        ks, ns = ((byte_of >= w_off) & (byte_of < w_off + w_bytes)).nonzero(as_tuple=True)
        kt, nt, band = int(ks.min()) // 128, int(ns.min()) // 256, int(ks.min()) % 128 // 16
        assert len(ks) == 4096 and int(ks.max()) == 128 * kt + 16 * band + 15
        assert int(ns.min()) == 256 * nt and int(ns.max()) == 256 * nt + 255
        # ... with group row `band` of the unit's k range (512 bytes of the n-tile), if it has one.
        if band < group_rows:
            g_row = (128 * kt // group if group != -1 else 0) + band
            assert (g_off, g_bytes) == ((g_row * n_pad + 256 * nt) * 2, 512)
        else:
            assert g_bytes == 0
        bands.setdefault((nt, kt), []).append(band)
    units = [unit for unit, b in bands.items() for _ in range(len(b) // 8)]
    assert all(sorted(b) == sorted(list(range(8)) * (len(b) // 8)) for b in bands.values()), "whole units"
    heads, stripes = marlin_heads(m, n_pad, k_pad, gpu, head, plan)
    assert grid == stripes and sorted(units) == sorted(heads)
    unit_bytes = 16384 + (2 if zeros else 1) * group_rows * 512
    assert len(units) * unit_bytes <= budget
    assert sorted(marlin_items(m, n_pad, k_pad, group, zeros, gpu, max(1, blocks // 3), budget, plan)[0]) == sorted(got)
    if plan:  # the default plan's tile at this M has more rows: no prefetch
        assert marlin_items(m, n_pad, k_pad, group, zeros, gpu, blocks, budget) == ([], 0, 0)


@needs_marlin
def test_marlin_prefetch_of_a_70b_layer_spends_the_budget_and_bad_arguments_are_named():
    """gate_up (N = 57344) after qkv at one token on an H200, 16 MB: two blocks per SM on a layer
    this large, 261 stripes, and one unit (17 KB) of each stripe's head is 4.5 MB: 3 units each."""
    got, grid, head = marlin_items(1, 57344, 8192, 128, False, "H200", 132, 16 << 20)
    assert grid == 261 and head == 3
    assert len(got) == 8 * head * grid and sum(w + g for _, w, _, g in got) <= 16 << 20
    assert marlin_items(1, 57344, 8192, 128, False, "H200", 132, 0)[0] == []
    with pytest.raises(RuntimeError, match=r"marlin_prefetch_items: needs .* group_size -1, 32, 64 or 128.*group_size=96"):
        torch.ops.vmp.marlin_prefetch_items(1, 1024, 1024, 96, False, *GPUS["H200"], 132, 1 << 20)
