"""The greedy-run comparison used by the GPU end-to-end tests (testing/compare.py)."""
from vllm_machete_plugin.testing.compare import divergence_report, first_divergence


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) == 3
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([4, 2], [1, 2]) == 0
    assert first_divergence([1, 2, 3], [1, 2]) == 2


def test_divergence_report_names_the_step_and_both_top2():
    same = {"token_ids": [1, 2, 3], "top2": [[[1, -0.1], [8, -2.0]]] * 3}
    ours = {"token_ids": [1, 7, 3], "top2": [[[1, -0.1], [8, -2.0]], [[7, -0.70], [9, -0.71]], [[3, -0.2]]]}
    theirs = {"token_ids": [1, 9, 4], "top2": [[[1, -0.1], [8, -2.0]], [[9, -0.69], [7, -0.72]], [[4, -0.3]]]}
    report = divergence_report([same, ours], [same, theirs])
    assert report == ("prompt 1: step 1: ours 7, theirs 9; ours top-2 7: -0.7000, 9: -0.7100; "
                      "theirs top-2 9: -0.6900, 7: -0.7200")
    assert divergence_report([same], [same]) == ""
    # outputs without top-2 records still say where they diverge
    bare = divergence_report([{"token_ids": [1, 2]}], [{"token_ids": [1, 3]}])
    assert bare == "prompt 0: step 1: ours 2, theirs 3"
