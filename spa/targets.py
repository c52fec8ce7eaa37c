"""Which channels go: a ratio of channels, a FLOPs budget or a parameter budget.

Units are ranked by their (normalized) scores within *classes* of groups:
- local scope: each group is its own class: every group loses the ratio of its channels;
- global scope: all groups form one class: the lowest-scored channels of the whole model go;
- isomorphic (global scope): groups of the same structure form a class (Fang et al., "Isomorphic
  Pruning for Vision Models", ECCV 2024): channels only compete with channels of structurally
  identical groups, and every class loses the same share of its channels.

Everything is driven by one number, the ratio r of the original channels removed: each class
loses its lowest-scored channels until floor(r * its original channel count) are gone. No group
loses more than `max_ratio` of its original channels (global scope and targets), every group keeps
at least one, and with round-to N a group keeps a multiple of N channels, rounded up (it is never
pruned past the ratio; a group of fewer than N channels is left whole).

A FLOPs or parameter target (a fraction of the original model's) is met by bisection on r: the
cost of each candidate choice is counted exactly on the model's shapes with the chosen channels
taken out (spa.metrics on shrunk shapes, no rewrite), and the smallest r that meets the target wins.
With steps, step s of n aims at the fraction s/n of the way (ratio * s / n of the channels, or
1 - (1 - F) * s / n of the FLOPs), counted against the original model.
"""
from __future__ import annotations

import dataclasses
import heapq
import math

import numpy as np

from .errors import SpaError
from .groups import Analysis, Group
from .metrics import count_flops, count_params

SCOPES = ("local", "global")
FILL_TOLERANCE = 0.01  # a target is met from below, within this fraction where units allow
TARGET_KINDS = ("ratio", "flops", "params")


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


def units_per_multiple(group: Group, round_to: int) -> int:
    """The number of units whose channels make a multiple of `round_to`: round_to for units of
    one channel; fewer for units that are blocks (an attention head is head_dim channels of every
    projection, already a multiple of 8)."""
    widths = [int(np.diff(m.offsets).min()) for m in group.params if len(m.offsets) > 1]
    return round_to // math.gcd(round_to, min(widths, default=1))


@dataclasses.dataclass(frozen=True)
class Target:
    """What to reach: a ratio of channels removed, or the fraction of FLOPs or parameters left."""

    kind: str  # "ratio", "flops" or "params"
    value: float

    @classmethod
    def from_options(cls, ratio: float | None = None, flops: float | None = None, params: float | None = None) -> "Target":
        given = [(kind, v) for kind, v in zip(TARGET_KINDS, (ratio, flops, params)) if v is not None]
        if len(given) > 1:
            raise SpaError("give only one of --ratio, --target-flops and --target-params")
        kind, value = given[0] if given else ("ratio", 0.0)
        if kind == "ratio":
            check_ratio(value)
        elif not (0.0 < value <= 1.0):
            raise SpaError(f"--target-{kind} is the fraction of the original to keep and must be in (0, 1], got {value}")
        return cls(kind, float(value))

    def at_step(self, step: int, steps: int) -> float:
        if self.kind == "ratio":
            return self.value * step / steps
        return 1.0 - (1.0 - self.value) * step / steps


@dataclasses.dataclass(frozen=True)
class Selection:
    """How units are chosen: the target, scope, round-to, per-group cap, steps, isomorphic classes."""

    target: Target
    scope: str = "local"
    round_to: int = 1
    max_ratio: float = 0.9
    steps: int = 1
    isomorphic: bool = False

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise SpaError(f"unknown scope '{self.scope}' (choose from {', '.join(SCOPES)})")
        if self.round_to < 1:
            raise SpaError(f"--round-to must be at least 1, got {self.round_to}")
        if not (0.0 < self.max_ratio < 1.0):
            raise SpaError(f"--max-ratio must be in (0, 1), got {self.max_ratio}")
        if self.steps < 1:
            raise SpaError(f"--steps must be at least 1, got {self.steps}")
        if self.isomorphic and self.scope != "global":
            raise SpaError("--isomorphic ranks channels across groups of the same structure: use it with --scope global")

    @property
    def cap_ratio(self) -> float:
        # A ratio in local scope is exactly that ratio of every group: no cap but keeping one channel.
        return 1.0 if self.scope == "local" and self.target.kind == "ratio" else self.max_ratio


def structure(group: Group, graph) -> tuple:
    """What makes two groups isomorphic: the same channel count, and parameters of the same shapes
    read by the same operators (at the same input positions), cut along the same axes."""
    parts = []
    for m in group.params:
        uses = tuple(sorted((graph.nodes[i].op_type, list(graph.nodes[i].input).index(m.tensor))
                            for i in graph.tensors[m.tensor].consumers))
        parts.append((uses, m.axis, tuple(map(str, graph.shape(m.tensor) or ())), len(m.indices)))
    return group.units, tuple(sorted(parts))


class Plan:
    """The units to remove for each ratio r of original channels (see the module doc).

    `scores`: group id -> normalized unit scores; `original_units`: group id -> its channel count
    in the original model (after earlier steps a group has fewer; absent: the current count)."""

    def __init__(self, analysis: Analysis, scores: dict[int, np.ndarray], selection: Selection,
                 original_units: dict[int, int] | None = None):
        self.analysis = analysis
        self.selection = selection
        self.scores = scores
        self.order = {g: np.argsort(s, kind="stable") for g, s in scores.items()}
        self.caps: dict[int, int] = {}  # how many more units each group may lose
        classes: dict[object, list[int]] = {}
        for g in scores:
            classes.setdefault(self._class_of(g), []).append(g)
        original_units = original_units or {}
        self.classes = [self._ranked(members, scores, original_units) for members in classes.values()]

    def _class_of(self, g: int):
        if self.selection.scope == "local":
            return ("group", g)
        if self.selection.isomorphic:
            return structure(self.analysis.groups[g], self.analysis.graph)
        return "all"

    def _ranked(self, members: list[int], scores, original_units) -> dict:
        """A class: its channels that may go (within each group's cap), lowest score first."""
        owners, values, original, done = [], [], 0, 0
        for g in members:
            n = len(scores[g])
            n0 = original_units.get(g, n)
            cap = self.caps[g] = max(0, min(math.floor(self.selection.cap_ratio * n0 + 1e-9) - (n0 - n), n - 1))
            allowed = self.order[g][:cap]
            owners.append(np.full(len(allowed), g))
            values.append(scores[g][allowed])
            original, done = original + n0, done + (n0 - n)
        owners, values = np.concatenate(owners), np.concatenate(values)
        return {"owners": owners[np.argsort(values, kind="stable")], "original": original, "done": done}

    def chosen(self, r: float) -> dict[int, np.ndarray]:
        """Group id -> sorted unit positions to remove, for ratio r."""
        counts: dict[int, int] = {}
        for c in self.classes:
            budget = min(max(math.floor(r * c["original"] + 1e-9) - c["done"], 0), len(c["owners"]))
            for g, k in zip(*np.unique(c["owners"][:budget], return_counts=True)):
                counts[int(g)] = int(k)
        chosen = {}
        for g, k in counts.items():
            n = len(self.order[g])
            k = n - kept_count(n, k, units_per_multiple(self.analysis.groups[g], self.selection.round_to))
            if k > 0:
                chosen[g] = np.sort(self.order[g][:k])
        return chosen

    def ratios(self) -> list[float]:
        """Every r at which the choice changes (and 0), ascending."""
        values = {0.0}
        for c in self.classes:
            values.update((c["done"] + j) / c["original"] for j in range(1, len(c["owners"]) + 1))
        return sorted(values)

    def search(self, cost, goal: float) -> tuple[dict[int, np.ndarray], float]:
        """The choice whose cost lands closest at or under `goal`, and that cost: the smallest r
        that meets it (bisection), refined unit by unit when that r's last step overshoots
        (see _fill). When no r gets there, the choice that removes the most."""
        ratios = self.ratios()
        lo, hi = 0, len(ratios) - 1
        costs = {hi: cost(self.chosen(ratios[hi]))}
        if costs[hi] > goal:
            return self.chosen(ratios[hi]), costs[hi]
        while lo < hi:
            mid = (lo + hi) // 2
            costs[mid] = cost(self.chosen(ratios[mid]))
            if costs[mid] <= goal:
                hi = mid
            else:
                lo = mid + 1
        chosen, reached = self.chosen(ratios[lo]), costs[lo]
        if lo == 0 or reached >= goal * (1 - FILL_TOLERANCE) or self.selection.round_to > 1:
            return chosen, reached
        before = self.chosen(ratios[lo - 1])
        filled, filled_cost = self._fill(before, costs.get(lo - 1) or cost(before), cost, goal)
        return min([(chosen, reached), (filled, filled_cost)], key=lambda pair: abs(pair[1] - goal))

    def _fill(self, chosen: dict[int, np.ndarray], reached: float, cost, goal: float):
        """When one more step of r removes a costly unit (an attention head, say) and overshoots,
        start from the step before and add single units instead, each group's next lowest-scored
        unit by score, passing over groups whose next unit would go below the goal by more than
        FILL_TOLERANCE (a group's units all cost alike), until the cost is at most the goal."""
        counts = {g: len(chosen.get(g, ())) for g in self.order}
        heap = [(self.scores[g][self.order[g][k]], g) for g, k in counts.items() if k < self.caps[g]]
        heapq.heapify(heap)
        while heap and reached > goal:
            _, g = heapq.heappop(heap)
            trial = {**chosen, g: np.sort(self.order[g][:counts[g] + 1])}
            trial_cost = cost(trial)
            if trial_cost < goal * (1 - FILL_TOLERANCE):
                continue
            chosen, reached, counts[g] = trial, trial_cost, counts[g] + 1
            if counts[g] < self.caps[g]:
                heapq.heappush(heap, (self.scores[g][self.order[g][counts[g]]], g))
        return chosen, reached


def choose(analysis: Analysis, scores: dict[int, np.ndarray], selection: Selection, step: int = 1,
           original_units: dict[int, int] | None = None, original_cost: dict[str, int] | None = None,
           already: dict[int, np.ndarray] | None = None) -> dict[int, np.ndarray]:
    """Units to remove (group id -> positions) at `step` of selection.steps. For FLOPs and
    parameter targets, `original_cost` holds the original model's {"flops", "params"} (default:
    this model's), and `already` the units other groups lose anyway (counted in the cost)."""
    plan = Plan(analysis, scores, selection, original_units)
    target = selection.target
    fraction = target.at_step(step, selection.steps)
    if target.kind == "ratio":
        return plan.chosen(fraction)
    already = already or {}
    original = (original_cost or {}).get(target.kind) or cost_after(analysis, {}, target.kind)
    chosen, reached = plan.search(lambda c: cost_after(analysis, {**already, **c}, target.kind), fraction * original)
    if reached > fraction * original * 1.03:
        label = "FLOPs" if target.kind == "flops" else "parameters"
        raise SpaError(f"--target-{target.kind} {target.value:g} is out of reach: pruning every prunable group as far as "
                       f"--max-ratio {selection.max_ratio:g} allows leaves {reached / original:.3f} of the {label}")
    return chosen


def cost_after(analysis: Analysis, chosen: dict[int, np.ndarray], kind: str) -> int:
    """FLOPs or parameters of the model once the chosen units are gone, counted on shrunk shapes."""
    removed: dict[tuple[str, int], int] = {}
    for g, units in chosen.items():
        for m in analysis.groups[g].members:
            key = (m.tensor, m.axis)
            removed[key] = removed.get(key, 0) + int(np.diff(m.offsets)[units].sum())
    shrunk = _Shrunk(analysis.graph, removed)
    return count_flops(shrunk) if kind == "flops" else count_params(shrunk)


class _Shrunk:
    """A Graph seen with some dimensions made smaller (all else delegated to the graph)."""

    def __init__(self, graph, removed: dict[tuple[str, int], int]):
        self._graph = graph
        self.tensors = dict(graph.tensors)
        for (name, axis), count in removed.items():
            shape = list(self.tensors[name].shape)
            if isinstance(shape[axis], int):  # a symbolic size (pruned by a digit of it) counts as 1 either way
                shape[axis] -= count
                self.tensors[name] = dataclasses.replace(self.tensors[name], shape=tuple(shape))

    def shape(self, name: str):
        return self.tensors[name].shape

    def __getattr__(self, name):
        return getattr(self._graph, name)
