"""CanonicalW4, bit packing helpers, reference dequant, act-order sorting."""
import pytest
import torch

from vllm_machete_plugin.act_order import REGROUP_ROWS, sort_by_group
from vllm_machete_plugin.backends.reference import reference_mm
from vllm_machete_plugin.canonical import CanonicalW4, dequantize, pack_int4, unpack_int4


def _rand_w(k=64, n=16, g=16, zeros=False, seed=0, dtype=torch.float16):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (k, n), generator=gen, dtype=torch.uint8)
    scales = (torch.rand(k // g, n, generator=gen) * 0.1 + 0.01).to(dtype)
    z = torch.randint(0, 16, (k // g, n), generator=gen, dtype=torch.uint8) if zeros else None
    return CanonicalW4(codes, scales, z, g)


def test_pack_int4_matches_hand_arithmetic():
    vals = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 15]], dtype=torch.uint8)
    word = sum(int(v) << (4 * j) for j, v in enumerate(vals[0]))
    expected = word - 2**32 if word >= 2**31 else word
    assert pack_int4(vals, dim=1).tolist() == [[expected]]
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    word_o = sum(int(vals[0, order[j]]) << (4 * j) for j in range(8))
    expected_o = word_o - 2**32 if word_o >= 2**31 else word_o
    assert pack_int4(vals, dim=1, order=order).tolist() == [[expected_o]]


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("order", [None, [0, 2, 4, 6, 1, 3, 5, 7]])
def test_pack_unpack_roundtrip(dim, order):
    x = torch.randint(0, 16, (16, 24), dtype=torch.uint8)
    p = pack_int4(x, dim, order)
    assert p.dtype == torch.int32 and p.shape[dim] == x.shape[dim] // 8
    assert torch.equal(unpack_int4(p, dim, order), x)


def test_pack_rejects_non_multiple_of_8():
    with pytest.raises(ValueError, match="not a multiple of 8"):
        pack_int4(torch.zeros(3, 12, dtype=torch.uint8), dim=1)


def test_dequantize_formula():
    w = _rand_w(zeros=True)
    k = torch.arange(w.k)
    expected = (w.codes.float() - w.zeros.float()[k // w.group_size]) * w.scales.float()[k // w.group_size]
    assert torch.equal(dequantize(w), expected)
    sym = _rand_w(zeros=False)
    assert torch.equal(dequantize(sym), (sym.codes.float() - 8) * sym.scales.float()[k // sym.group_size])


def test_validate_names_the_problem():
    w = _rand_w()
    with pytest.raises(ValueError, match=r"layer.x: scales shape \(3, 16\), expected \(4, 16\)"):
        CanonicalW4(w.codes, w.scales[:3], None, 16).validate("layer.x")
    with pytest.raises(ValueError, match="group size 48 does not divide K=64"):
        CanonicalW4(w.codes, w.scales, None, 48).validate("layer.x")


def _act_order(w: CanonicalW4, seed=1) -> CanonicalW4:
    """GPTQ desc_act: group j holds rows perm[j*g:(j+1)*g]."""
    perm = torch.randperm(w.k, generator=torch.Generator().manual_seed(seed))
    g_idx = torch.empty(w.k, dtype=torch.int32)
    g_idx[perm] = (torch.arange(w.k) // w.group_size).to(torch.int32)
    return CanonicalW4(w.codes, w.scales, w.zeros, w.group_size, g_idx)


@pytest.mark.parametrize("zeros", [False, True])
def test_sort_by_group_preserves_product(zeros):
    w = _act_order(_rand_w(zeros=zeros))
    x = torch.randn(5, w.k, dtype=torch.float16)
    ws, perm = sort_by_group(w)
    assert ws.g_idx is None
    assert torch.equal(ws.group_of_rows(), torch.arange(w.k) // w.group_size)
    torch.testing.assert_close(reference_mm(x[:, perm], ws).float(), reference_mm(x, w).float(),
                               rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("tp", [2, 4])
def test_sort_by_group_regroups_straddling_groups(zeros, tp):
    """A row-parallel rank of an act-order weight holds parts of many groups: each run is
    padded to 32-row groups whose pad rows are exactly 0, and the product is unchanged."""
    w = _act_order(_rand_w(k=512, n=16, g=128, zeros=zeros))
    k = w.k // tp
    part = CanonicalW4(w.codes[:k], w.scales, w.zeros, 128, w.g_idx[:k])  # rank 0's K slice, full table
    ws, perm = sort_by_group(part, where="model.layers.0.mlp.down_proj")
    assert ws.g_idx is None and ws.group_size == REGROUP_ROWS and ws.k % REGROUP_ROWS == 0
    assert k < ws.k < k + REGROUP_ROWS * w.num_groups
    assert sorted(set(perm.tolist())) == list(range(k))
    x = torch.randn(3, k, dtype=torch.float64)
    got = x[:, perm] @ dequantize(ws, torch.float64)
    torch.testing.assert_close(got, x @ dequantize(part, torch.float64), rtol=0, atol=1e-12)
    assert int((dequantize(ws) == 0).all(dim=1).sum()) >= ws.k - k  # pad rows dequantize to exactly 0




def test_unpack_int4_against_bit_extraction_along_each_dim():
    """Word w's nibble `slot` is the value at position order[slot] of its 8 along `dim`,
    negative words included, whatever the input's strides (contiguous, transposed, a one-column
    slice of the transpose, whose size-1 last dim has stride 5); the result is contiguous for the repack."""
    from vllm_machete_plugin.canonical import unpack_int4
    g = torch.Generator().manual_seed(3)
    full = torch.randint(-2**31, 2**31 - 1, (5, 5), dtype=torch.int32, generator=g)
    cases = [(words, order, dim) for words in (full[:3], full.t()[:3], full.t()[:3, 2:3])
             for order in (None, [0, 2, 4, 6, 1, 3, 5, 7]) for dim in (0, 1)]
    for words, order, dim in cases:
        out = unpack_int4(words, dim, order)
        assert out.is_contiguous() and out.dtype == torch.uint8
        for i in range(words.shape[0]):
            for j in range(words.shape[1]):
                for slot, logical in enumerate(order or range(8)):
                    want = (int(words[i, j]) >> (4 * slot)) & 0xF
                    got = out[i * 8 + logical, j] if dim == 0 else out[i, j * 8 + logical]
                    assert int(got) == want
