"""The surgery: costs of removing features, the greedy order, and the closed-form compensation."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import SpaError


def damped_inverse(hessian: torch.Tensor, damp: float, features: int) -> torch.Tensor:
    """(H + lambda I)^-1 over the channel features (not the bias), lambda = damp x mean of diag H;
    more dampening if H is still not positive definite (dead or duplicated inputs)."""
    diagonal = hessian.diagonal()[:features]
    lam = damp * float(diagonal.mean()) if features and float(diagonal.mean()) > 0 else 1e-8
    damped = hessian.clone()
    for _ in range(8):
        damped.diagonal()[:features] += lam
        factor, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            return torch.cholesky_inverse(factor)
        lam *= 10
    raise SpaError("OBSPA: a layer's Hessian is not positive definite even with strong dampening")


class Surgeon:
    """One layer's weight matrix and inverse Hessian while one group's channels leave it (OBS
    removal with compensation). Columns that are gone are cut out now and then."""

    def __init__(self, weight: torch.Tensor, inverse: torch.Tensor, energy: float, units: list[np.ndarray]):
        self.energy = energy
        self.inverse = inverse.clone()
        self.weight = weight.clone()
        device = weight.device
        self.position = torch.arange(inverse.shape[0], device=device)  # original feature -> current column
        self.alive = torch.ones(inverse.shape[0], dtype=torch.bool, device=device)
        self.units = [torch.as_tensor(u, device=device) for u in units]
        self.classes = []  # units with the same number of features, scored together
        for size in sorted({len(u) for u in units}):
            ids = [i for i, u in enumerate(units) if len(u) == size]
            self.classes.append((torch.as_tensor(ids, device=device),
                                 torch.as_tensor(np.stack([units[i] for i in ids]), device=device)))

    def costs(self, remaining: torch.Tensor) -> torch.Tensor:
        """Per unit: the relative output error its removal adds now (inf for removed units)."""
        costs = torch.full((len(self.units),), math.inf, dtype=torch.float64, device=remaining.device)
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
                block_inverse, _ = torch.linalg.inv_ex(self.inverse[columns[:, :, None], columns[:, None, :]])
                w = self.weight[:, columns]  # output, unit, feature
                costs[ids] = (block_inverse * torch.einsum("oub,ouc->ubc", w, w)).sum((1, 2))
        return costs / self.energy

    def remove(self, units: list[int]):
        """Take the units out together: W -= W[:,M] ((H^-1)[M,M])^-1 (H^-1)[M,:], and the same
        downdate of H^-1, which leaves the inverse Hessian of the remaining features."""
        columns = self.position[torch.cat([self.units[u] for u in units])]
        step = torch.linalg.solve(self.inverse[columns][:, columns], self.inverse[columns, :])
        self.weight.addmm_(self.weight[:, columns], step, alpha=-1)
        self.inverse.addmm_(self.inverse[:, columns], step, alpha=-1)
        self.weight[:, columns] = 0
        self.inverse[columns, :] = 0
        self.inverse[:, columns] = 0
        self.alive[columns] = False
        if (~self.alive).sum() * 4 > len(self.alive):
            self._compact()

    def _compact(self):
        kept = self.alive.nonzero().squeeze(1)
        new_column = torch.full_like(self.alive, -1, dtype=torch.long)
        new_column[kept] = torch.arange(len(kept), device=kept.device)
        self.weight = self.weight[:, kept].contiguous()
        self.inverse = self.inverse[kept][:, kept].contiguous()
        self.position = torch.where(self.position >= 0, new_column[self.position.clamp(min=0)], self.position)
        self.alive = torch.ones(len(kept), dtype=torch.bool, device=kept.device)


def greedy_scores(surgeons: list[Surgeon], units: int, max_steps: int) -> np.ndarray:
    """Remove the group's units cheapest first, `ceil(units / max_steps)` per step (one by one
    in groups of up to max_steps units); each unit's marginal cost is taken when it goes, and its
    score is the running maximum of those costs (so the lowest scores are the greedy prefix)."""
    device = surgeons[0].weight.device
    remaining = torch.ones(units, dtype=torch.bool, device=device)
    per_step = -(-units // max_steps)
    order, marginal = [], []
    while len(order) < units:
        costs = sum(s.costs(remaining) for s in surgeons)
        count = min(per_step, units - len(order))
        cheapest = torch.topk(costs, count, largest=False).indices.tolist() if count > 1 else [int(torch.argmin(costs))]
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


def compensated(weight: torch.Tensor, inverse: torch.Tensor, removed: np.ndarray) -> torch.Tensor:
    """W - W[:,M] ((H^-1)[M,M])^-1 (H^-1)[M,:], the removed columns exactly zero."""
    m = torch.as_tensor(removed, device=weight.device)
    block = inverse[m][:, m]
    factor, info = torch.linalg.cholesky_ex(block)
    step = torch.cholesky_solve(inverse[m, :], factor) if int(info) == 0 else torch.linalg.solve(block, inverse[m, :])
    new = weight - weight[:, m] @ step
    new[:, m] = 0
    return new


