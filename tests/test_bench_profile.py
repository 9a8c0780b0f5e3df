"""bench profile --hotspots: the summary of `ncu --page source --csv` (no GPU, no ncu)."""
from __future__ import annotations

import pytest

from vllm_machete_plugin.bench import profile

SOURCE_CSV = '''void vmp::machete::mid_m_kernel<__half, 64, 2, 1, 0>(Params)
"Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)","stall_long_sb","stall_wait"
"0x7f00","SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR4+0x80], R3","600","590","0","12"
"0x7f10","HGMMA.64x64x16.F32 R24, R116, gdesc[UR8], RZ","300","10","0","290"
"0x7f20","LOP3.LUT R5, R4, 0xf000f, RZ, 0x6a, !PT","100","0","1,200","0"
void humming<MmaOpClass>(...)
"Address","Source","Warp Stall Sampling (All Samples)","stall_barrier"
"0x100","BAR.SYNC.DEFER_BLOCKING 0x0","50","50"
'''


def test_hotspots_per_kernel_sorted_with_shares():
    blocks = profile.source_hotspots(SOURCE_CSV.splitlines(), top=2)
    assert [b["kernel"][:20] for b in blocks] == ["void vmp::machete::m", "void humming<MmaOpCl"]
    ours = blocks[0]
    assert ours["column"] == "Warp Stall Sampling (All Samples)" and ours["total"] == 1000
    assert [r["address"] for r in ours["rows"]] == ["0x7f00", "0x7f10"]  # top 2 by samples
    assert ours["rows"][0]["others"][0] == ("Warp Stall Sampling (Not-issued Samples)", 590.0)
    md = profile.hotspots_markdown(blocks)
    assert "| 0x7f00 | `SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR4+0x80], R3` | 600 | 60.0% |" in md
    assert "| 0x100 | `BAR.SYNC.DEFER_BLOCKING 0x0` | 50 | 100.0% | stall_barrier 50 |" in md


def test_thousands_separators_and_missing_sampling_column():
    blocks = profile.source_hotspots(SOURCE_CSV.splitlines(), top=3)
    assert blocks[0]["rows"][2]["others"] == [("stall_long_sb", 1200.0)]
    with pytest.raises(SystemExit, match="no warp-stall sampling column"):
        profile.source_hotspots(['"Address","Source","Executed"', '"0x0","NOP","1"'])


def test_cli(tmp_path, capsys):
    f = tmp_path / "source.csv"
    f.write_text(SOURCE_CSV)
    assert profile.main(["--hotspots", str(f), "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("| 0x") == 2 and "### void humming" in out
