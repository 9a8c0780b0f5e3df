"""CPU checks of the kernels' layout references (the GPU tests compare the GPU repack
against these bit for bit; here the references themselves are checked against the
contracts they state)."""
import pytest
import torch

from vllm_machete_plugin import machete_layout_ref as mach
from vllm_machete_plugin import marlin_layout_ref as marl


@pytest.mark.parametrize("k,n", [(128, 256), (200, 300), (512, 1024)])
def test_marlin_repack_is_lossless_with_zero_padding(k, n):
    codes = torch.randint(0, 16, (k, n), dtype=torch.uint8)
    k_pad, n_pad = marl.padded_kn(k, n)
    packed = marl.repack_ref(codes, k_pad, n_pad)
    assert packed.shape == (k_pad // 16, 2 * n_pad) and packed.dtype == torch.int32
    back = marl.unpack_ref(packed)
    assert torch.equal(back[:k, :n], codes)
    assert not back[k:].any() and not back[:, n:].any()


def test_marlin_lane_reads_its_mma_b_fragments_in_one_16_byte_load():
    """m16n8k16 B fragment of lane l for an n8 sub-tile: rows 2(l%4)+{0,1,8,9}, column l//4.
    The 4 consecutive words of lane l (one 128-bit load) must hold exactly its fragments
    for the 8 n8 sub-tiles of a 16x64 tile, each element once."""
    rows, cols = marl._source_index(16, 256, "cpu")  # [1, 4, 32, 4, 8]
    for lane in range(32):
        got = {(int(r), int(c)) for r, c in zip(rows[0, 0, lane].flatten(), cols[0, 0, lane].flatten())}
        want = {(2 * (lane % 4) + dr, 8 * sub + lane // 4) for dr in (0, 1, 8, 9) for sub in range(8)}
        assert got == want


def test_marlin_group_perm_is_a_permutation():
    p = marl.group_perm(512)
    assert torch.equal(torch.sort(p).values, torch.arange(512))


@pytest.mark.parametrize("k,n", [(64, 16), (128, 256), (256, 384)])
@pytest.mark.parametrize("has_zeros", [False, True])
def test_machete_prepack_is_a_bijection(k, n, has_zeros):
    off = mach.prepacked_offsets(k, n)
    assert torch.equal(torch.sort(off.flatten()).values, torch.arange(k * n))
    codes = torch.randint(0, 16, (k, n), dtype=torch.uint8)
    words = mach.prepack_ref(codes, has_zeros).to(torch.int64).flatten() & 0xFFFFFFFF
    nib = (words[off // 8] >> (4 * (off % 8))) & 0xF
    expected = codes.to(torch.int64) if has_zeros else codes.to(torch.int64) ^ 8  # u4b8: q - 8
    assert torch.equal(nib, expected)


def test_machete_refuses_untiled_shapes():
    with pytest.raises(ValueError, match="K % 64 == 0 and N % 16 == 0"):
        mach.prepacked_offsets(96, 16)


@pytest.mark.parametrize("zeros", [False, True])
def test_machete_fp16_rows_plus_8_in_16q_form_are_exactly_16x(zeros):
    """machete_mid_m.cu (fp16) dequantizes the fragment rows row + 8 from where their
    nibbles sit, as 1024 + 16 q, and scales those accumulator rows by 1/16 after the
    mainloop. That is only bit-identical if every such A register is exactly 16x the
    plain one: every nibble value, scales over fp16's normal range (and zero points)."""
    g = torch.Generator().manual_seed(0)
    n = 4096
    words = torch.randint(0, 2**32, (n,), generator=g, dtype=torch.int64)
    s = torch.exp(torch.empty(n, 2).uniform_(-9.0, 3.0, generator=g)).to(torch.float16)  # 1.2e-4 .. 20
    z = (-(s.float() * torch.randint(0, 16, (n, 2), generator=g)).to(torch.float16)) if zeros else None
    plain = mach.dequant_fp16_ref(words, s, z, hi16=False)
    hi = mach.dequant_fp16_ref(words, s, z, hi16=True)
    assert torch.equal(hi[:, 0::2], plain[:, 0::2])  # rows `row`: the same form
    assert torch.equal(hi[:, 1::2], 16 * plain[:, 1::2])  # rows row + 8: exactly 16x
    # and the plain form is the weight itself: (q - 8) s, or q s + z'
    nib = torch.stack([(words >> (4 * (r + 4 * h))) & 0xF for r in range(4) for h in range(2)], -1).view(n, 4, 2)
    q = nib if zeros else nib ^ 8
    sr = s.to(torch.float64)[:, [0, 1, 0, 1], None]
    want = q * sr + z.to(torch.float64)[:, [0, 1, 0, 1], None] if zeros else (q - 8) * sr
    assert torch.equal(plain, want.to(torch.float16).to(torch.float64))
