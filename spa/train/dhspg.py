"""DHSPG, dual half-space projected gradient (OTOv2): trains to a target group sparsity.

At step `start_step` the groups are split by a saliency score (the cosine of x_g with d_g, and
the inverse of ||x_g|| per element, each normalized over all groups) into redundant ones (the top
(target + tolerance) of them) and important ones. Important groups take the base step. Redundant
groups are pulled to zero by lmbda_g * x_g / ||x_g||, with lmbda_g adapted so that the step still
descends along d_g (`adapted_lambdas`), then projected onto zero in the half-space. Zero groups
stay zero; once the target is reached the projection stops and redundant groups take the base
step again. OTO's defaults: lmbda 1e-3, lmbda_amplify 2, hat_lmbda_coeff 10 for SGD, and 1e-2,
20, 1e3 for Adam and AdamW; tolerance 0.05; epsilon 0.

With target_flops the partition is SPA's FLOPs plan over the saliency scores (how many channels
each layer loses so that the pruned model lands at the target, and which: GroupFlops.choose),
plus the tolerance's share of each layer's next most redundant channels for the projection to
choose from; each layer is projected until it has lost its planned count.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .optimizer import LAMBDA_DEFAULTS, GroupSparseOptimizer, in_half_space, register_optimizer


def adapted_lambdas(x: torch.Tensor, d: torch.Tensor, lmbda: float, amplify: float, hat_coeff: float) -> torch.Tensor:
    """DHSPG's per-group lambda (rows of x and of the base direction d; the step is
    -(d + lambda * x / ||x||)). Where d points away from the origin (<x, d> < 0) lambda must
    exceed -<x, d> / ||x|| for the step to shrink x, and stay below ||d||^2 ||x|| / -<x, d> for it
    to descend along d: amplify * the lower bound, clipped to [lmbda, lmbda * hat_coeff], or the
    middle of the bounds when that is not below the upper one. Elsewhere lambda = lmbda, which
    always descends."""
    norm, inner = x.norm(dim=1), (x * d).sum(dim=1)
    lambdas = torch.full_like(norm, lmbda)
    grows = (inner < 0) & (norm > 0)
    lower = -inner[grows] / norm[grows]
    upper = d[grows].norm(dim=1) ** 2 * norm[grows] / -inner[grows]
    adjusted = torch.clamp(amplify * lower, min=lmbda, max=lmbda * hat_coeff)
    over = adjusted >= upper
    adjusted[over] = (lower[over] + upper[over]) / 2
    lambdas[grows] = adjusted
    return lambdas



@register_optimizer()
class DHSPG(GroupSparseOptimizer):
    """Dual half-space projected gradient (OTOv2): trains to a target group sparsity.

    groups: the zero-invariant groups, each a list of (parameter, axis, indices along the axis).
    target_sparsity: the fraction of groups to zero; or target_flops with flops
    (SparseTraining.flops): the fraction of FLOPs to keep. tolerance: redundant groups are the top
    (target_sparsity + tolerance) by saliency, so the projection has some to choose from.
    start_step: base-optimizer steps before the partition into redundant and important groups.
    lmbda, lmbda_amplify, hat_lmbda_coeff: the adaptive lambda (see `adapted_lambdas`); None
    takes OTO's defaults for the base optimizer. epsilon: the half-space threshold.
    base, lr, momentum, betas, eps, weight_decay: the base optimizer (sgd, adam, adamw).
    """

    name = "dhspg"

    def __init__(self, params, groups, lr: float, base: str = "sgd", target_sparsity: float = 0.5,
                 tolerance: float = 0.05, start_step: int = 0, lmbda: float | None = None,
                 lmbda_amplify: float | None = None, hat_lmbda_coeff: float | None = None, epsilon: float = 0.0,
                 momentum: float = 0.9, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 target_flops: float | None = None, flops=None):
        if target_sparsity is None and target_flops is None:
            raise ValueError("DHSPG trains to a target: give target_sparsity in [0, 1) or target_flops in (0, 1]")
        super().__init__(params, groups, lr, base, target_sparsity=target_sparsity, target_flops=target_flops,
                         start_step=start_step, lmbda=lmbda, epsilon=epsilon, momentum=momentum, betas=betas, eps=eps,
                         weight_decay=weight_decay, flops=flops)
        defaults = LAMBDA_DEFAULTS[base]
        self.lmbda_amplify = defaults["lmbda_amplify"] if lmbda_amplify is None else lmbda_amplify
        self.hat_lmbda_coeff = defaults["hat_lmbda_coeff"] if hat_lmbda_coeff is None else hat_lmbda_coeff
        self.tolerance = tolerance
        self.redundant: list[torch.Tensor] | None = None  # per bundle, after the partition
        self.planned: list[torch.Tensor] | None = None  # with target_flops: per bundle, the FLOPs plan's rows

    def update_rows(self, xs, norms, ds, trials, lrs):
        if self.steps <= self.start_step or (self.target_flops is None and self.target_sparsity == 0):
            return trials
        if self.redundant is None:
            self.redundant = self._partition(xs, ds)
        if self.planned is not None:
            budget = self.budgets(self.planned, norms)
            reached = all(b <= 0 for b in budget)
        else:
            budget = self.budget(self.target_sparsity, norms)
            reached = budget <= 0
        if reached:  # target reached: zero groups stay zero, the rest take the base step
            self.project(xs, norms, trials, [torch.zeros(len(x), dtype=torch.bool) for x in xs], 0)
            return trials
        candidates = []
        open_bundles = [b > 0 for b in budget] if self.planned is not None else [True] * len(xs)
        for x, norm, d, trial, lr, redundant, pull in zip(xs, norms, ds, trials, lrs, self.redundant, open_bundles):
            pulled = redundant & (norm > 0) & pull
            lambdas = adapted_lambdas(x[pulled], d[pulled], self.lmbda, self.lmbda_amplify, self.hat_lmbda_coeff)
            trial[pulled] -= lr * lambdas[:, None] * x[pulled] / norm[pulled][:, None]
            candidates.append(pulled & in_half_space(trial, x, self.epsilon))
        self.project(xs, norms, trials, candidates, budget)
        return trials

    def _partition(self, xs, ds) -> list[torch.Tensor]:
        """Mark the most redundant groups: high cosine of x with d (the base step shrinks them)
        and small magnitude per element, each score normalized over all groups; a bundle keeps
        at least one important group."""
        cosine = torch.cat([F.cosine_similarity(x, d, dim=1) for x, d in zip(xs, ds)])
        magnitude = torch.cat([x.norm(dim=1) / x.shape[1] for x in xs])
        scores = 0.5 * F.normalize(cosine, dim=0) + 0.5 * F.normalize(1.0 / (magnitude + 1e-6), dim=0)
        if self.target_flops is not None:
            return self._flops_partition(xs, scores)
        wanted = int(self.total_groups * min(self.target_sparsity + self.tolerance, 0.999))
        owner = torch.cat([torch.full((len(x),), number) for number, x in enumerate(xs)]).tolist()
        starts = np.cumsum([0] + [len(x) for x in xs]).tolist()
        redundant = [torch.zeros(len(x), dtype=torch.bool) for x in xs]
        room = [len(x) - 1 for x in xs]
        for position in torch.argsort(scores, descending=True).tolist():
            if wanted <= 0:
                break
            number = owner[position]
            if room[number] > 0:
                redundant[number][position - starts[number]] = True
                room[number] -= 1
                wanted -= 1
        return redundant

    def _flops_partition(self, xs, scores: torch.Tensor) -> list[torch.Tensor]:
        """The FLOPs plan's rows (most redundant first), and in each bundle the tolerance's share
        of its next most redundant rows, a bundle keeping at least one important row."""
        per_bundle = list(torch.split(scores, [len(x) for x in xs]))
        self.planned = self.plan_flops([-s for s in per_bundle])
        redundant = []
        for planned, s in zip(self.planned, per_bundle):
            extra = min(math.ceil(self.tolerance * len(s)), len(s) - 1 - int(planned.sum()))
            chosen = planned.clone()
            if extra > 0:
                order = torch.argsort(torch.where(planned, -math.inf, s), descending=True)
                chosen[order[:extra]] = True
            redundant.append(chosen)
        return redundant
