"""Which channels go: a ratio of channels, a FLOPs budget or a parameter budget.

Units are ranked by their (normalized) scores within *classes* of groups:
- local scope: each group is its own class: every group loses the ratio of its channels;
- global scope: all groups form one class: the lowest-scored channels of the whole model go;
- isomorphic (global scope): groups of the same structure form a class (Fang et al., "Isomorphic
  Pruning for Vision Models", ECCV 2024): channels only compete with channels of structurally
  identical groups, and every class loses the same share of its channels.

Everything is driven by one number, the ratio r of the original channels removed: each class
loses its lowest-scored channels until floor(r * its original channel count) are gone. No group
loses more than `max_ratio` of its original channels (global scope and targets) and every group
keeps at least one.

Round-to: a group keeps a multiple of N channels. With "auto" (the default), N is the multiple
onnxruntime's kernels work in for the layers the group runs through (spa.hardware: 16 for
convolutions, 4 for depthwise ones, 1 for Gemm and MatMul; attention heads go whole, so groups of
heads round to single heads), and where rounding and the target conflict, the target wins by
dropping whole multiples: the count a group would keep is rounded to the NEAREST multiple (ties:
the smaller), never to zero, and a group that is its own class (local scope) never keeps all its
channels when its ratio asks for some to go and a multiple below is possible. A group with no
multiple below its count (16 channels, a multiple of 16) is left whole: below the block the
kernels run slower (MobileNetV3's 16-channel layers cut to 8 made the whole model slower than
leaving them whole). Only where that would leave the whole model as it was although its ratio
asks for channels to go (a small model of 8 to 16-channel layers), the groups take half their
multiple, or a quarter, and so on, until one below their count exists. A given N (--round-to N)
is kept whatever the target: counts are rounded up to multiples of N (a group is never pruned past
the ratio; a group of at most N channels is left whole).

A FLOPs or parameter target (a fraction of the original model's) is met by bisection on r: the
cost of each candidate choice is counted exactly on the model's shapes with the chosen channels
taken out (spa.metrics on shrunk shapes, no rewrite), and the smallest r that meets the target wins.
When that r's last step overshoots, whole multiples are added one by one from the step before
(Plan._fill). With auto, where that cannot land within FILL_TOLERANCE, or the most that may go in
whole multiples does not reach the target, halves of multiples, and so on down to single
channels: the target wins over rounding there too. A latency target is met the same way, each
choice costed by the per-layer latency model (spa.latency) instead of counted.
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
from .hardware import group_multiple
from .metrics import count_flops, count_params

SCOPES = ("local", "global")
FILL_TOLERANCE = 0.01  # a target is met from below, within this fraction where units allow
TARGET_KINDS = ("ratio", "flops", "params", "latency")


def check_ratio(ratio: float, name: str = "--ratio"):
    if not (0.0 <= ratio < 1.0) or math.isnan(ratio):
        raise SpaError(f"{name} must be in [0, 1), got {ratio}")


def check_round_to(round_to) -> int | str:
    """"auto", or a whole number of at least 1 (1: no rounding)."""
    if round_to == "auto":
        return round_to
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer, float)) or not float(round_to).is_integer():
        raise SpaError(f"--round-to must be auto or a whole number of at least 1, got {round_to!r}")
    if round_to < 1:
        raise SpaError(f"--round-to must be at least 1 (1: no rounding) or auto, got {round_to}")
    return int(round_to)


def kept_count(n: int, remove: int, multiple: int = 1, least: int = 1, whole: bool = False, halve: bool = False,
               nearest: bool = True) -> int:
    """How many of a group's n units stay when `remove` of them were asked to go, in multiples of
    `multiple` units (see the module doc). At least `least` stay (the group's cap); `whole`:
    keeping all n is a choice too (a group among others in its class, or one that lost channels
    at an earlier step); `halve`: a group with no multiple below n takes half the multiple, and so
    on. `nearest` (round-to auto): the nearest multiple; otherwise (a given N) the next multiple up,
    never past the ratio."""
    if remove <= 0:
        return n
    least = max(least, 1)
    want = max(n - remove, least)
    if not nearest:
        return n if multiple > 1 and n <= multiple else min(n, math.ceil(want / multiple) * multiple)
    grid = _grid(n, multiple, least, halve)
    if grid is None:  # no multiple below n: the group is left whole
        return n
    first, step = grid
    below = first + max(0, min((want - first) // step, (n - 1 - first) // step)) * step  # at or under want
    choices = [below] + ([below + step] if below + step < n else []) + ([n] if whole else [])
    return min(choices, key=lambda kept: (abs(kept - want), kept))


def _grid(n: int, multiple: int, least: int = 1, halve: bool = False) -> tuple[int, int] | None:
    """(first, step): the counts below n a group may keep are first, first + step, ... (< n):
    the multiples of `multiple` from `least` on (every count for multiple 1; with `halve`, those
    of the largest halving of the multiple that has one below n). None: there is none."""
    least = max(least, 1)
    while True:
        if multiple <= 1:
            return (least, 1) if least < n else None
        first = multiple * math.ceil(least / multiple)
        if first < n:
            return first, multiple
        if not halve:
            return None
        multiple //= 2


def next_kept(n: int, kept: int, multiple: int = 1, least: int = 1, halve: bool = False) -> int | None:
    """The largest count below `kept` that a group of n units may keep (see _grid), or None."""
    grid = _grid(n, multiple, least, halve)
    if grid is None or kept - 1 < grid[0]:
        return None
    first, step = grid
    return first + min((kept - 1 - first) // step, (n - 1 - first) // step) * step


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
    def from_options(cls, ratio: float | None = None, flops: float | None = None, params: float | None = None,
                     latency: float | None = None) -> "Target":
        given = [(kind, v) for kind, v in zip(TARGET_KINDS, (ratio, flops, params, latency)) if v is not None]
        if len(given) > 1:
            raise SpaError("give only one of --ratio, --target-flops, --target-params and --target-latency")
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
    round_to: int | str = "auto"
    max_ratio: float = 0.9
    steps: int = 1
    isomorphic: bool = False

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise SpaError(f"unknown scope '{self.scope}' (choose from {', '.join(SCOPES)})")
        object.__setattr__(self, "round_to", check_round_to(self.round_to))
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
        self.auto = selection.round_to == "auto"  # nearest multiples, and the target wins; else N is kept
        self.halve = False  # groups with no multiple below their count are left whole (see choose)
        self.level = 0  # multiples are halved this many times (see search)
        self.multiples = {g: self._multiple(analysis.groups[g]) for g in scores}  # in units
        classes: dict[object, list[int]] = {}
        for g in scores:
            classes.setdefault(self._class_of(g), []).append(g)
        original_units = original_units or {}
        self.original_units = {g: original_units.get(g, len(s)) for g, s in scores.items()}
        self.shared = {g for members in classes.values() if len(members) > 1 for g in members}  # not their own class
        self.classes = [self._ranked(members, scores, original_units) for members in classes.values()]

    def _multiple(self, group: Group) -> int:
        round_to = self.selection.round_to
        channels = group_multiple(group, self.analysis.graph) if round_to == "auto" else round_to
        return units_per_multiple(group, channels)

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

    def kept(self, g: int, remove: int) -> int:
        """How many units group g keeps when `remove` of its units were asked to go (round-to)."""
        n = len(self.order[g])
        whole = g in self.shared or n < self.original_units[g]
        return kept_count(n, remove, max(self.multiples[g] >> self.level, 1), n - self.caps[g], whole, self.halve,
                          self.auto)

    def chosen(self, r: float) -> dict[int, np.ndarray]:
        """Group id -> sorted unit positions to remove, for ratio r."""
        counts: dict[int, int] = {}
        for c in self.classes:
            budget = min(max(math.floor(r * c["original"] + 1e-9) - c["done"], 0), len(c["owners"]))
            for g, k in zip(*np.unique(c["owners"][:budget], return_counts=True)):
                counts[int(g)] = int(k)
        chosen = {}
        for g, k in counts.items():
            k = len(self.order[g]) - self.kept(g, k)
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
        that meets it (bisection), refined multiple by multiple when that r's last step overshoots
        (see _fill), and by halves of multiples down to single units while that does not land
        within FILL_TOLERANCE. When even the most that may go does not get there in whole
        multiples, halves of multiples, and so on down to single units (the target wins). When no
        r gets there, the choice that removes the most."""
        coarsest = max(self.multiples.values(), default=1)
        levels = max(coarsest.bit_length(), 1) if self.auto else 1  # multiple, its halves, ..., 1 (auto)
        ratios = self.ratios()
        lo, hi = 0, len(ratios) - 1
        for self.level in range(levels):
            costs = {hi: cost(self.chosen(ratios[hi]))}
            if costs[hi] <= goal:
                break
        else:
            return self.chosen(ratios[hi]), costs[hi]
        while lo < hi:
            mid = (lo + hi) // 2
            costs[mid] = cost(self.chosen(ratios[mid]))
            if costs[mid] <= goal:
                hi = mid
            else:
                lo = mid + 1
        best = self.chosen(ratios[lo]), costs[lo]
        if lo == 0 or best[1] >= goal * (1 - FILL_TOLERANCE):
            return best
        before = self.chosen(ratios[lo - 1])
        before_cost = costs.get(lo - 1) or cost(before)
        for level in range(self.level, levels):
            filled = self._fill(before, before_cost, cost, goal, level)
            best = min([best, filled], key=lambda pair: abs(pair[1] - goal))
            if goal * (1 - FILL_TOLERANCE) <= best[1] <= goal:
                break
        return best

    def _fill(self, chosen: dict[int, np.ndarray], reached: float, cost, goal: float, level: int = 0):
        """When one more step of r removes a costly unit (an attention head, a multiple of 16
        channels) and overshoots, start from the step before and remove one group's next units
        at a time instead (its multiple, halved `level` times), lowest mean score first, passing
        over groups whose next step would go below the goal by more than FILL_TOLERANCE (a group's
        units all cost alike), until the cost is at most the goal."""
        counts = {g: len(chosen.get(g, ())) for g in self.order}

        def entry(g):
            n = len(self.order[g])
            kept = next_kept(n, n - counts[g], max(self.multiples[g] >> level, 1), n - self.caps[g], self.halve)
            if kept is None:
                return None
            return float(self.scores[g][self.order[g][counts[g]:n - kept]].mean()), g, n - kept

        heap = [e for e in map(entry, counts) if e is not None]
        heapq.heapify(heap)
        while heap and reached > goal:
            _, g, removed = heapq.heappop(heap)
            trial = {**chosen, g: np.sort(self.order[g][:removed])}
            trial_cost = cost(trial)
            if trial_cost < goal * (1 - FILL_TOLERANCE):
                continue
            chosen, reached, counts[g] = trial, trial_cost, removed
            if (e := entry(g)) is not None:
                heapq.heappush(heap, e)
        return chosen, reached


def choose(analysis: Analysis, scores: dict[int, np.ndarray], selection: Selection, step: int = 1,
           original_units: dict[int, int] | None = None, original_cost: dict[str, int] | None = None,
           already: dict[int, np.ndarray] | None = None, latency_model=None) -> dict[int, np.ndarray]:
    """Units to remove (group id -> positions) at `step` of selection.steps. For FLOPs and
    parameter targets, `original_cost` holds the original model's {"flops", "params"} (default:
    this model's), and `already` the units other groups lose anyway (counted in the cost). A
    latency target is costed by `latency_model` (spa.latency.LatencyModel)."""
    plan = Plan(analysis, scores, selection, original_units)
    target = selection.target
    fraction = target.at_step(step, selection.steps)
    if target.kind == "ratio":
        chosen = plan.chosen(fraction)
        if not chosen and plan.auto:  # every group too small for its multiple
            plan.halve = True
            chosen = plan.chosen(fraction)
        return chosen
    already = already or {}
    if target.kind == "latency":
        original = latency_model.original
        chosen, reached = plan.search(lambda c: latency_model.predict(removed_counts(analysis, {**already, **c})),
                                      fraction * original)
    else:
        original = (original_cost or {}).get(target.kind) or cost_after(analysis, {}, target.kind)
        chosen, reached = plan.search(lambda c: cost_after(analysis, {**already, **c}, target.kind), fraction * original)
    if reached > fraction * original * 1.03:
        label = {"flops": "FLOPs", "params": "parameters", "latency": "predicted latency"}[target.kind]
        raise SpaError(f"--target-{target.kind} {target.value:g} is out of reach: pruning every prunable group as far as "
                       f"--max-ratio {selection.max_ratio:g} allows leaves {reached / original:.3f} of the {label}")
    return chosen


def removed_counts(analysis: Analysis, chosen: dict[int, np.ndarray]) -> dict[tuple[str, int], int]:
    """(tensor, axis) -> how many of its elements on that axis the chosen units take out."""
    removed: dict[tuple[str, int], int] = {}
    for g, units in chosen.items():
        for m in analysis.groups[g].members:
            key = (m.tensor, m.axis)
            removed[key] = removed.get(key, 0) + int(np.diff(m.offsets)[units].sum())
    return removed


def cost_after(analysis: Analysis, chosen: dict[int, np.ndarray], kind: str) -> int:
    """FLOPs or parameters of the model once the chosen units are gone, counted on shrunk shapes."""
    shrunk = _Shrunk(analysis.graph, removed_counts(analysis, chosen))
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
