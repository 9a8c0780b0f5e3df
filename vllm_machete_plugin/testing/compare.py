"""Comparing greedy generations (the JSON of testing/generate.py) token by token, and
saying where and how two runs diverge: whether each divergence is a near-tie (the other
run's token was this run's second choice, by a small logprob margin) or a real
disagreement."""
from __future__ import annotations


def first_divergence(a: list[int], b: list[int]) -> int:
    """Index of the first differing token; the common length when none differs."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


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
