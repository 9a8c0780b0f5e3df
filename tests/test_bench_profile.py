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


RANGE = "thread Domain:Push/Pop_Range:PL_Type:PL_Value:CLR_Type:Color:Msg_Type:Msg"
RAW_CSV = (
    f'"ID","{RANGE}","Kernel Name","gpu__time_duration.sum","sm__cycles_elapsed.avg.per_second",'
    '"launch__grid_size","sm__cycles_elapsed.max","sm__cycles_active.avg","sm__cycles_active.max",'
    '"dram__bytes_read.sum","smsp__average_warps_issue_stalled_membar_per_issue_active.ratio",'
    '"l1tex__data_pipe_lsu_wavefronts_mem_shared.sum"\n'
    '"","","","usecond","Mhz","","cycle","cycle","cycle","Kbyte","inst",""\n'
    '"0","580  ""<default domain>:marlin/qkv/M64:none:none:none:none:none:none"" ","void vmp::gemm_kernel<__half, 4>(P)",'
    '"47.5","1,800","128","80,000","60,000","75,000","44,500","0.2","2,500,000"\n'
    '"1","","void Marlin<1, 2>(const int4 *)","42.5","1,790","132","76,000","61,000","","","0.01",""\n'
)


def test_raw_summary_names_scales_and_derives():
    a, b = profile.raw_summary(RAW_CSV.splitlines(keepends=True))
    assert a["call"] == "marlin/qkv/M64" and b["call"] == "Marlin"  # NVTX range, else the kernel
    assert a["µs"] == pytest.approx(47.5) and b["µs"] == pytest.approx(42.5)
    assert a["SM GHz"] == pytest.approx(1.8) and a["DRAM read MB"] == pytest.approx(44.5)
    assert a["active/elapsed"] == pytest.approx(0.75) and a["max/mean active"] == pytest.approx(1.25)
    assert b["SM-active max"] is None and b["max/mean active"] is None and b["inst (M)"] is None
    assert a["shared wavefronts (M)"] == pytest.approx(2.5) and b["shared wavefronts (M)"] is None
    md = profile.summary_markdown([a, b])
    assert "| marlin/qkv/M64 | 47.5 | 1.8 | 128 | 80,000 | 60,000 | 75,000 | 0.75 | 1.25 |" in md
    assert md.splitlines()[3].startswith("| Marlin | 42.5 | 1.79 | 132 | 76,000 | 61,000 | - |")


def test_raw_summary_refuses_other_exports(tmp_path, capsys):
    with pytest.raises(SystemExit, match="not an `ncu --page raw --csv` export"):
        profile.raw_summary(SOURCE_CSV.splitlines())
    with pytest.raises(SystemExit, match="unit 'furlong'"):
        profile.raw_summary(RAW_CSV.replace("usecond", "furlong").splitlines())
    f = tmp_path / "raw.csv"
    f.write_text(RAW_CSV)
    assert profile.main(["--summary", str(f)]) == 0
    assert capsys.readouterr().out.count("\n| ") == 2  # a row per call under the header
