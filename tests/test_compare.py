"""The greedy-run comparison used by the GPU end-to-end tests (testing/compare.py)."""
from vllm_machete_plugin.testing.compare import agreeing_prompts, divergence_report, first_divergence, is_near_tie


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


def _run(tokens, top2):
    return {"token_ids": tokens, "top2": top2}


def test_near_tie_needs_both_runs_within_the_margin_and_swapped_top2():
    # the H200 case: built-in tied exactly, ours one fp16 ulp apart
    ours = _run([5, 321], [[[5, -0.1], [6, -3.0]], [[321, -2.9136], [230, -2.9175]]])
    theirs = _run([5, 230], [[[5, -0.1], [6, -3.0]], [[230, -2.9174], [321, -2.9174]]])
    assert is_near_tie(ours, theirs, 1, 0.02)
    assert not is_near_tie(ours, theirs, 1, 0.001)  # ours' margin 0.0039 exceeds it
    wide = _run([5, 230], [[[5, -0.1], [6, -3.0]], [[230, -2.0], [321, -2.9]]])
    assert not is_near_tie(ours, wide, 1, 0.02)  # theirs was sure: a real disagreement
    other = _run([5, 230], [[[5, -0.1], [6, -3.0]], [[230, -2.9174], [999, -2.9174]]])
    assert not is_near_tie(ours, other, 1, 0.02)  # ours' token is not theirs' runner-up
    assert not is_near_tie({"token_ids": [5, 321]}, theirs, 1, 0.02)  # no top-2 recorded


def test_agreeing_prompts_counts_identical_and_near_tie_divergences():
    same = _run([1, 2], [[[1, -0.1], [9, -2.0]], [[2, -0.1], [9, -2.0]]])
    tie_a = _run([1, 3], [[[1, -0.1], [9, -2.0]], [[3, -1.000], [4, -1.001]]])
    tie_b = _run([1, 4], [[[1, -0.1], [9, -2.0]], [[4, -1.000], [3, -1.000]]])
    real = _run([7, 2], [[[7, -0.1], [1, -2.0]], [[2, -0.1], [9, -2.0]]])
    assert agreeing_prompts([same, tie_a, real], [same, tie_b, same], 2, 0.02) == (1, 1)
    assert agreeing_prompts([same], [same], 3, 0.02) == (0, 0)  # fewer tokens than asked for
