"""SPA's FLOPs model seen from the optimizer groups: a FLOPs target as the groups to zero, and
the FLOPs of a masked model as a differentiable function of its channel masks.

The optimizer groups are the units of SPA's groups (SparseTraining.units, in the same order as
SparseTraining.groups). The FLOPs of the pruned model depend only on how many units each SPA
group loses, and they are a polynomial of degree at most two in those counts: every counted
operator (Conv, Gemm, MatMul) multiplies at most an output-channel and an input-channel size,
each shrunk linearly by the groups that prune it. `GroupFlops` measures that polynomial with
SPA's own counter (spa.targets.cost_after on shrunk shapes): the constant, one linear and one
square term per group, and a cross term for each pair of groups that meet in an operator.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch

from ..errors import SpaError
from ..groups import Analysis
from ..targets import Selection, Target, choose, cost_after
from .groups import Unit


class GroupFlops:
    """FLOPs (multiply-accumulates, spa.metrics) of the model with some optimizer groups zeroed.

    units: the SPA unit of each optimizer group (SparseTraining.units). `choose` translates a
    FLOPs target into the groups to zero; `relative(keep)` is the FLOPs left, as a fraction of
    the full model's, for per-group keep masks in [0, 1] (differentiable in them)."""

    def __init__(self, analysis: Analysis, units: Sequence[Unit]):
        self.analysis = analysis
        self.units = list(units)
        self.group_ids = sorted({u.group for u in self.units})
        column = {g: k for k, g in enumerate(self.group_ids)}
        self.column = np.array([column[u.group] for u in self.units])  # each optimizer group's SPA group
        self.full = cost_after(analysis, {}, "flops")
        self._fit_polynomial()

    def _removed(self, counts: dict[int, int]) -> dict[int, np.ndarray]:
        return {g: np.arange(k) for g, k in counts.items() if k}

    def _fit_polynomial(self) -> None:
        """F(n) = F0 + linear . n + n^T quadratic n, with n the units removed per SPA group."""
        flops = lambda counts: cost_after(self.analysis, self._removed(counts), "flops")  # noqa: E731
        size = len(self.group_ids)
        linear, quadratic = np.zeros(size), np.zeros((size, size))
        one = {}
        sizes = {g: self.analysis.groups[g].units for g in self.group_ids}
        for k, g in enumerate(self.group_ids):
            one[g] = flops({g: 1}) - self.full
            two = flops({g: 2}) - self.full if sizes[g] > 2 else 2 * one[g]
            quadratic[k, k] = (two - 2 * one[g]) / 2
            linear[k] = one[g] - quadratic[k, k]
        for (a, g), (b, h) in itertools.combinations(enumerate(self.group_ids), 2):
            if self._meet(g, h):
                cross = flops({g: 1, h: 1}) - self.full - one[g] - one[h]
                quadratic[a, b] = quadratic[b, a] = cross / 2
        self.linear = torch.tensor(linear, dtype=torch.float64)
        self.quadratic = torch.tensor(quadratic, dtype=torch.float64)
        self.sizes = torch.tensor([sizes[g] for g in self.group_ids], dtype=torch.float64)

    def _meet(self, g: int, h: int) -> bool:
        """Whether some operator reads or writes tensors of both groups (only then can they multiply)."""
        graph = self.analysis.graph
        touched = []
        for group in (g, h):
            nodes = set()
            for m in self.analysis.groups[group].members:
                tensor = graph.tensors[m.tensor]
                nodes.update(tensor.consumers)
                if tensor.producer is not None:
                    nodes.add(tensor.producer)
            touched.append(nodes)
        return bool(touched[0] & touched[1])

    def flops(self, removed_counts: torch.Tensor) -> torch.Tensor:
        """The polynomial at per-SPA-group removal counts (a tensor over group_ids)."""
        n = removed_counts.to(torch.float64)
        return self.full + self.linear @ n + n @ self.quadratic @ n

    def relative(self, keep: Sequence[torch.Tensor]) -> torch.Tensor:
        """FLOPs left / full FLOPs when optimizer group i is kept to the degree keep[...][i]:
        `keep` holds one tensor of masks per SPA group (in group_ids order, units in order)."""
        removed = torch.stack([(1 - k.to(torch.float64)).sum() for k in keep])
        return self.flops(removed) / self.full

    def counted(self, zero: np.ndarray) -> int:
        """FLOPs of the model with the optimizer groups where `zero` is True removed (SPA's count)."""
        return cost_after(self.analysis, self.removed(zero), "flops")

    def removed(self, zero: np.ndarray) -> dict[int, np.ndarray]:
        """SPA group id -> unit positions, for a boolean mask over the optimizer groups."""
        chosen: dict[int, list[int]] = {}
        for unit in np.asarray(self.units, dtype=object)[np.asarray(zero, dtype=bool)]:
            chosen.setdefault(unit.group, []).append(unit.unit)
        return {g: np.array(sorted(u), dtype=np.int64) for g, u in chosen.items()}

    def choose(self, target: float, scores: np.ndarray, max_ratio: float = 0.9) -> np.ndarray:
        """The optimizer groups to zero (a boolean mask) so that the FLOPs left land at `target` of
        the full model's, lowest score first across all groups (spa.targets, global scope, no
        rounding: the same translation as `spa prune --target-flops`); no SPA group loses more
        than max_ratio of its units. SpaError when the target is out of reach."""
        if not 0 < target <= 1:
            raise SpaError(f"the FLOPs target is the fraction of the model's FLOPs to keep, in (0, 1]; got {target}")
        scores = np.asarray(scores, dtype=np.float64)
        by_group = {g: np.zeros(self.analysis.groups[g].units) for g in self.group_ids}
        for unit, score in zip(self.units, scores):
            by_group[unit.group][unit.unit] = score
        selection = Selection(Target("flops", target), scope="global", round_to=1, max_ratio=max_ratio)
        chosen = choose(self.analysis, by_group, selection)
        position = {(u.group, u.unit): i for i, u in enumerate(self.units)}
        zero = np.zeros(len(self.units), dtype=bool)
        for g, units in chosen.items():
            zero[[position[(g, int(u))] for u in units]] = True
        return zero
