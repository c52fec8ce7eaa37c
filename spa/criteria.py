"""Importance criteria: a score for every channel (unit) of every group.

A per-weight criterion scores each parameter element (|w| for L1, w^2 for L2). A group criterion
follows from it: for each parameter member of the group, the element scores are averaged over the
slice that one channel owns (so a 3x3 conv filter and a bias entry weigh alike), and the members'
averages are summed over the group. Criteria that need data or gradients build on the same
aggregation (spa.criteria_grad).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import SpaError
from .groups import Analysis, Group, Member


def scored_members(group: Group, graph) -> list[Member]:
    """The parameter members whose values say something about importance: floating-point weights,
    not BatchNormalization's running statistics."""
    members = []
    for m in group.params:
        value = graph.value(m.tensor)
        if value is None or not np.issubdtype(value.dtype, np.floating) or _is_running_statistic(graph, m.tensor):
            continue
        members.append(m)
    return members


def _is_running_statistic(graph, tensor: str) -> bool:
    uses = [(graph.nodes[i], list(graph.nodes[i].input).index(tensor)) for i in graph.tensors[tensor].consumers]
    return bool(uses) and all(node.op_type == "BatchNormalization" and pos >= 3 for node, pos in uses)


def member_unit_scores(member: Member, element_scores: np.ndarray) -> np.ndarray:
    """Per unit: the mean element score over the slices the unit owns on this member."""
    other_axes = tuple(a for a in range(element_scores.ndim) if a != member.axis)
    per_index = element_scores.sum(axis=other_axes) if other_axes else element_scores
    slice_size = element_scores.size // max(element_scores.shape[member.axis], 1)
    per_index = per_index / max(slice_size, 1)
    counts = np.diff(member.offsets)
    return np.add.reduceat(per_index[member.indices], member.offsets[:-1]) / counts


def aggregate_scores(group: Group, graph, element_score: Callable[[str, np.ndarray], np.ndarray]) -> np.ndarray:
    members = scored_members(group, graph)
    if not members:
        return np.zeros(group.units)
    return np.sum([member_unit_scores(m, element_score(m.tensor, graph.value(m.tensor))) for m in members], axis=0)


def l1(analysis: Analysis, group: Group, context) -> np.ndarray:
    return aggregate_scores(group, analysis.graph, lambda _, w: np.abs(w, dtype=np.float32))


def l2(analysis: Analysis, group: Group, context) -> np.ndarray:
    """The root mean square of each channel's slices, summed over the group's members."""
    members = scored_members(group, analysis.graph)
    return np.sum([np.sqrt(member_unit_scores(m, np.square(analysis.graph.value(m.tensor), dtype=np.float32)))
                   for m in members], axis=0) if members else np.zeros(group.units)


def random_scores(analysis: Analysis, group: Group, context) -> np.ndarray:
    return context["rng"].random(group.units)


CRITERIA: dict[str, Callable] = {
    "l1": l1,
    "l2": l2,
    "random": random_scores,
}


def score_groups(analysis: Analysis, criterion: str, seed: int = 0, groups=None) -> dict[int, np.ndarray]:
    """Scores per unit for each prunable group (or the given groups): higher means more important."""
    if criterion not in CRITERIA:
        raise SpaError(f"unknown criterion '{criterion}' (choose from {', '.join(sorted(CRITERIA))})")
    score = CRITERIA[criterion]
    context = {"rng": np.random.default_rng(seed)}
    return {g.id: np.asarray(score(analysis, g, context), dtype=np.float64)
            for g in (groups if groups is not None else analysis.prunable)}
