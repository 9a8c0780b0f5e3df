"""bench chain (vllm_machete_plugin/bench/chain.py): its model order, arguments and table, without a GPU."""
import pytest

from vllm_machete_plugin.bench import chain
from vllm_machete_plugin.bench.__main__ import main as bench_main


def test_links_follow_the_decoder_layers_order_and_end_with_none():
    links = chain.chain_links(2)
    assert [(i, name) for i, name, _ in links] == [(0, "qkv"), (0, "o"), (0, "gate_up"), (0, "down"),
                                                   (1, "qkv"), (1, "o"), (1, "gate_up"), (1, "down")]
    assert [nxt for _, _, nxt in links] == [(i, name) for i, name, _ in links[1:]] + [None]


def test_bad_arguments_are_named():
    assert chain.parse_list("0, 8,16", "budgets") == [0.0, 8.0, 16.0]
    for bad in ("", "-1", "8,x"):
        with pytest.raises(SystemExit, match="--budgets must be comma-separated numbers >= 0"):
            chain.parse_list(bad, "budgets")
    with pytest.raises(SystemExit, match="1..16 tokens"):
        bench_main(["chain", "--m", "32"])
    with pytest.raises(SystemExit, match="--layers must be >= 2"):
        bench_main(["chain", "--layers", "1"])


def test_table_gives_each_budget_and_the_best_against_none():
    rows = [{"m": 1, "gap_us": 3.0, "gaps_only_us": 14.2, "floor_us": 99.0, "pf0_us": 130.0, "pf16_us": 117.0}]
    table = chain.markdown(rows, [0.0, 16.0])
    assert table.splitlines()[0].endswith("| 0 MB | 16 MB | best / 0 MB |")
    assert table.splitlines()[2] == "| 1 | 3 | 14.2 | 99.0 | 130.0 | 117.0 | 0.900 |"
