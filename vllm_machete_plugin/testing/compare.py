"""Comparing greedy generations (the JSON of testing/generate.py) token by token, and
saying where and how two runs diverge: whether each divergence is a near-tie (each run's
token is the other's second choice, both within a small logprob margin) or a real
disagreement."""
from __future__ import annotations


def first_divergence(a: list[int], b: list[int]) -> int:
    """Index of the first differing token; the common length when none differs."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def is_near_tie(a: dict, b: dict, step: int, atol: float) -> bool:
    """At `step`, each run's token is its first choice and the other run's token its second,
    by at most `atol` in logprob in both runs: a flip that rounding noise of that size
    explains (greedy decoding is not defined finer than the noise). Needs "top2"."""
    if "top2" not in a or "top2" not in b:
        return False
    ta, tb = a["token_ids"][step], b["token_ids"][step]
    for o, first, second in ((a, ta, tb), (b, tb, ta)):
        top = o["top2"][step]
        if len(top) < 2 or top[0][0] != first or top[1][0] != second or top[0][1] - top[1][1] > atol:
            return False
    return True


def agreeing_prompts(ours: list[dict], theirs: list[dict], tokens: int, tie_atol: float) -> tuple[int, int]:
    """(identical over `tokens`, diverging only at a near-tie): prompts counted as agreeing."""
    same = ties = 0
    for a, b in zip(ours, theirs, strict=True):
        n = first_divergence(a["token_ids"], b["token_ids"])
        diverged = n < min(len(a["token_ids"]), len(b["token_ids"]))
        same += n >= tokens
        ties += n < tokens and diverged and is_near_tie(a, b, n, tie_atol)
    return same, ties


def divergence_report(ours: list[dict], theirs: list[dict]) -> str:
    """One line per prompt whose tokens differ: the step, both tokens, and each run's
    top-2 at that step (token: logprob) when recorded ("top2")."""
    lines = []
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        n = first_divergence(a["token_ids"], b["token_ids"])
        if n == min(len(a["token_ids"]), len(b["token_ids"])):
            continue
        line = f"prompt {i}: step {n}: ours {a['token_ids'][n]}, theirs {b['token_ids'][n]}"
        for who, o in (("ours", a), ("theirs", b)):
            if "top2" in o:
                (t1, l1), *rest = o["top2"][n]
                second = f", {rest[0][0]}: {rest[0][1]:.4f}" if rest else ""
                line += f"; {who} top-2 {t1}: {l1:.4f}{second}"
        lines.append(line)
    return "\n".join(lines)
