"""Which channels go: a ratio per group (local) or over all groups (global), with round-to.

Local: each prunable group of n channels loses floor(ratio * n) of its lowest-scored channels.
Global: scores are made comparable across groups (each divided by its group's mean), the lowest
ratio of all channels go, no group loses more than `max_ratio` of its channels, and every group
keeps at least one.
Round-to: a group keeps a multiple of N channels, rounded up (it is never pruned past the ratio);
a group of fewer than N channels is left whole.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import SpaError

SCOPES = ("local", "global")


def check_ratio(ratio: float, name: str = "--ratio"):
    if not (0.0 <= ratio < 1.0) or math.isnan(ratio):
        raise SpaError(f"{name} must be in [0, 1), got {ratio}")


def kept_count(n: int, remove: int, round_to: int) -> int:
    """How many of n channels stay when `remove` were asked to go, honouring round-to."""
    kept = max(n - remove, 1)
    if round_to > 1:
        if n < round_to:
            return n
        kept = min(n, math.ceil(kept / round_to) * round_to)
    return kept


def select(scores: dict[int, np.ndarray], ratio: float, scope: str = "local", round_to: int = 1,
           max_ratio: float = 0.9) -> dict[int, np.ndarray]:
    """Units to remove per group id, the lowest-scored first."""
    check_ratio(ratio)
    if scope not in SCOPES:
        raise SpaError(f"unknown scope '{scope}' (choose from {', '.join(SCOPES)})")
    if round_to < 1:
        raise SpaError(f"--round-to must be at least 1, got {round_to}")
    if scope == "local":
        counts = {g: math.floor(ratio * len(s) + 1e-9) for g, s in scores.items()}
    else:
        counts = global_counts(scores, ratio, max_ratio)
    removed = {}
    for g, s in scores.items():
        n = len(s)
        k = n - kept_count(n, counts[g], round_to)
        if k > 0:
            removed[g] = np.sort(np.argsort(s, kind="stable")[:k])
    return removed


def global_counts(scores: dict[int, np.ndarray], ratio: float, max_ratio: float) -> dict[int, int]:
    """How many channels each group loses when the lowest `ratio` of all channels go."""
    if not scores:
        return {}
    groups = list(scores)
    normalized = [scores[g] / (np.mean(scores[g]) + 1e-12) for g in groups]
    owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(normalized)])
    order = np.argsort(np.concatenate(normalized), kind="stable")
    caps = [min(math.floor(max_ratio * len(scores[g])), len(scores[g]) - 1) for g in groups]
    budget = math.floor(ratio * len(owner) + 1e-9)
    counts = [0] * len(groups)
    for i in owner[order]:
        if budget == 0:
            break
        if counts[i] < caps[i]:
            counts[i] += 1
            budget -= 1
    return dict(zip(groups, counts))
