"""The surgery: costs of removing features, the greedy order, and the closed-form compensation
(float64 numpy and LAPACK through scipy)."""
from __future__ import annotations

import math

import numpy as np
from scipy import linalg

from ..errors import SpaError


def damped_inverse(hessian: np.ndarray, damp: float, features: int) -> np.ndarray:
    """(H + lambda I)^-1 over the channel features (not the bias), lambda = damp x mean of diag H;
    more dampening if H is still not positive definite (dead or duplicated inputs)."""
    mean = float(hessian.diagonal()[:features].mean()) if features else 0.0
    lam = damp * mean if mean > 0 else 1e-8
    damped = np.array(hessian, dtype=np.float64)
    diagonal = np.einsum("ii->i", damped)[:features]  # a writable view of the diagonal
    for _ in range(8):
        diagonal += lam
        factor, info = linalg.lapack.dpotrf(damped, lower=1, clean=0)
        if info == 0:
            inverse, info = linalg.lapack.dpotri(factor, lower=1)
            if info == 0:
                return np.tril(inverse) + np.tril(inverse, -1).T  # dpotri fills the lower triangle only
        lam *= 10
    raise SpaError("OBSPA: a layer's Hessian is not positive definite even with strong dampening")


def _solve(block: np.ndarray, right: np.ndarray) -> np.ndarray:
    """block^-1 right for a symmetric block, by Cholesky when it is positive definite."""
    try:
        return linalg.cho_solve(linalg.cho_factor(block, lower=True, check_finite=False), right, check_finite=False)
    except linalg.LinAlgError:
        return linalg.solve(block, right, check_finite=False)


class Surgeon:
    """One layer's weight matrix and inverse Hessian while one group's channels leave it (OBS
    removal with compensation). Columns that are gone are cut out now and then."""

    def __init__(self, weight: np.ndarray, inverse: np.ndarray, energy: float, units: list[np.ndarray]):
        self.energy = energy
        self.inverse = np.array(inverse, dtype=np.float64)
        self.weight = np.array(weight, dtype=np.float64)
        self.position = np.arange(inverse.shape[0])  # original feature -> current column
        self.alive = np.ones(inverse.shape[0], dtype=bool)
        self.units = [np.asarray(u) for u in units]
        self.classes = []  # units with the same number of features, scored together
        for size in sorted({len(u) for u in units}):
            ids = np.array([i for i, u in enumerate(units) if len(u) == size])
            self.classes.append((ids, np.stack([units[i] for i in ids])))

    def costs(self, remaining: np.ndarray) -> np.ndarray:
        """Per unit: the relative output error its removal adds now (inf for removed units)."""
        costs = np.full(len(self.units), math.inf)
        for ids, features in self.classes:
            keep = remaining[ids]
            ids, columns = ids[keep], self.position[features[keep]]
            if len(ids) == 0:
                continue
            if columns.shape[1] == 1:
                column = columns[:, 0]
                costs[ids] = (self.weight[:, column] ** 2).sum(0) / self.inverse[column, column]
            else:
                # tr(((H^-1)[B,B])^-1 W[:,B]^T W[:,B]); batched small inverses are far faster than solves
                block_inverse = np.linalg.inv(self.inverse[columns[:, :, None], columns[:, None, :]])
                w = self.weight[:, columns].transpose(1, 0, 2)  # unit, output, feature
                costs[ids] = (block_inverse * (w.transpose(0, 2, 1) @ w)).sum((1, 2))
        return costs / self.energy

    def remove(self, units: list[int]):
        """Take the units out together: W -= W[:,M] ((H^-1)[M,M])^-1 (H^-1)[M,:], and the same
        downdate of H^-1, which leaves the inverse Hessian of the remaining features."""
        columns = self.position[np.concatenate([self.units[u] for u in units])]
        step = np.linalg.solve(self.inverse[np.ix_(columns, columns)], self.inverse[columns, :])
        self.weight -= self.weight[:, columns] @ step
        self.inverse -= self.inverse[:, columns] @ step
        self.weight[:, columns] = 0
        self.inverse[columns, :] = 0
        self.inverse[:, columns] = 0
        self.alive[columns] = False
        if (~self.alive).sum() * 4 > len(self.alive):
            self._compact()

    def _compact(self):
        kept = np.flatnonzero(self.alive)
        new_column = np.full(len(self.alive), -1)
        new_column[kept] = np.arange(len(kept))
        self.weight = np.ascontiguousarray(self.weight[:, kept])
        self.inverse = np.ascontiguousarray(self.inverse[np.ix_(kept, kept)])
        self.position = np.where(self.position >= 0, new_column[np.maximum(self.position, 0)], self.position)
        self.alive = np.ones(len(kept), dtype=bool)


def greedy_scores(surgeons: list[Surgeon], units: int, max_steps: int) -> np.ndarray:
    """Remove the group's units cheapest first, `ceil(units / max_steps)` per step (one by one
    in groups of up to max_steps units); each unit's marginal cost is taken when it goes, and its
    score is the running maximum of those costs (so the lowest scores are the greedy prefix)."""
    remaining = np.ones(units, dtype=bool)
    per_step = -(-units // max_steps)
    order, marginal = [], []
    while len(order) < units:
        costs = sum(s.costs(remaining) for s in surgeons)
        count = min(per_step, units - len(order))
        cheapest = np.argsort(costs, kind="stable")[:count].tolist()
        order += cheapest
        marginal += costs[cheapest].tolist()
        remaining[cheapest] = False
        if len(order) < units:
            for s in surgeons:
                s.remove(cheapest)
    ranked = np.maximum.accumulate(np.maximum(marginal, 0.0))
    ranked = ranked + np.arange(units) * 1e-12 * max(ranked[-1], 1e-30)  # strictly increasing: ties keep the order
    scores = np.empty(units)
    scores[order] = ranked
    return scores


def compensated(weight: np.ndarray, inverse: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """W - W[:,M] ((H^-1)[M,M])^-1 (H^-1)[M,:], the removed columns exactly zero."""
    step = _solve(inverse[np.ix_(removed, removed)], inverse[removed, :])
    new = weight - weight[:, removed] @ step
    new[:, removed] = 0
    return new
