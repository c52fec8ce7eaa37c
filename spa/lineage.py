"""Pruning in steps: where each channel of a pruned model came from in the original model.

Each step re-analyzes and re-scores the model the step before left, whose tensors keep their
names but have fewer indices. For every dimension (tensor, axis) the lineage keeps the original
index of each position still there, so that
- a group of a later step is known as the original group it is what remains of (its budget and
  cap count against the original channel count), and
- the whole run ends as one choice of original units, which the original model is pruned by in
  one go: the report names every removed slice in the original model's names and shapes, and the
  zeroing oracle holds across steps.
"""
from __future__ import annotations

import numpy as np

from .groups import Analysis, Group


class Lineage:
    def __init__(self, original: Analysis):
        self.original = original
        self.alive: dict[tuple[str, int], np.ndarray] = {}  # original index of each current position
        # For each parameter dimension of an original prunable group: group id and unit of each index.
        self.owner: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        for g in original.prunable:
            for m in g.params:
                groups, units = self.owner.setdefault((m.tensor, m.axis), (np.full(m.size, -1), np.full(m.size, -1)))
                groups[m.indices] = g.id
                units[m.indices] = np.repeat(np.arange(g.units), np.diff(m.offsets))

    def original_indices(self, tensor: str, axis: int, indices: np.ndarray) -> np.ndarray:
        alive = self.alive.get((tensor, axis))
        return np.asarray(indices) if alive is None else alive[indices]

    def origin(self, group: Group) -> int | None:
        """The original group that `group` (of the current model) is what remains of, if one."""
        for m in group.params:
            if (m.tensor, m.axis) in self.owner:
                ids = np.unique(self.owner[(m.tensor, m.axis)][0][self.original_indices(m.tensor, m.axis, m.indices)])
                return int(ids[0]) if len(ids) == 1 and ids[0] >= 0 else None
        return None

    def whole_units(self, group: Group) -> bool:
        """Whether every unit of `group` (of the current model) is what remains of whole units of
        one original group. Not so after a channel shuffle cut down to one slice: re-analyzed, its
        other digit becomes the units, and removing one would split the original units."""
        m = group.params[0]
        if (m.tensor, m.axis) not in self.owner:
            return False
        owners, units = self.owner[(m.tensor, m.axis)]
        alive = self.alive.get((m.tensor, m.axis), np.arange(len(owners)))
        origin = owners[alive[m.indices]]
        if np.any(origin != origin[0]) or origin[0] < 0:
            return False
        original_unit = units[alive[m.indices]]
        current_unit = np.repeat(np.arange(group.units), np.diff(m.offsets))
        # each original unit: in one current unit, with all of its indices still alive
        one_home = len(np.unique(original_unit)) == len(np.unique(np.stack([original_unit, current_unit]), axis=1)[0])
        alive_count = np.bincount(units[alive][owners[alive] == origin[0]], minlength=units.max() + 1)
        present = np.unique(original_unit)
        return one_home and np.array_equal(np.bincount(original_unit, minlength=len(alive_count))[present],
                                           alive_count[present])

    def original_units(self, analysis: Analysis) -> dict[int, int]:
        """Current group id -> channel count of the original group it comes from."""
        result = {}
        for g in analysis.prunable:
            origin = self.origin(g)
            if origin is not None:
                result[g.id] = self.original.groups[origin].units
        return result

    def record(self, removed: dict[tuple[str, int], np.ndarray], graph):
        """Take the removed positions ((tensor, axis) -> indices in `graph`, the current model) out."""
        for (tensor, axis), indices in removed.items():
            if (tensor, axis) not in self.alive:
                # First cut: the dimension is as in the original (or new, made by a rewrite).
                source = self.original.graph if tensor in self.original.graph.tensors else graph
                size = source.shape(tensor)[axis]
                if not isinstance(size, int):  # a symbolic axis pruned by its digit (see Analysis.digits)
                    size = self.original.digits[(tensor, axis)][1]
                self.alive[(tensor, axis)] = np.arange(size)
            self.alive[(tensor, axis)] = np.delete(self.alive[(tensor, axis)], indices)

    def removed_units(self) -> dict[int, np.ndarray]:
        """Original group id -> its units removed by all steps so far."""
        removed = {}
        for g in self.original.prunable:
            m = g.params[0]
            alive = self.alive.get((m.tensor, m.axis))
            if alive is None:
                continue
            gone = ~np.isin(m.indices, alive)
            gone_per_unit = np.add.reduceat(gone.astype(np.int64), m.offsets[:-1])
            if np.any((gone_per_unit > 0) & (gone_per_unit < np.diff(m.offsets))):
                raise AssertionError(f"group {g.id}: a unit was partly removed across steps")
            units = np.flatnonzero(gone_per_unit)
            if len(units):
                removed[g.id] = units
        return removed
