"""HESSO (OTOv3's hybrid efficient structured sparse optimizer): progressive selection and
gradual projection, with little to tune.

The groups train with the base optimizer for `start_step` steps (the warm-up). Then, over
`pruning_periods` periods of equal length (`pruning_steps` in all, by default as many as the
warm-up), each period selects more redundant groups, so that after the last one exactly the
target fraction is selected. Groups are ranked by the sum of four saliency scores, each
normalized over all groups: magnitude ||x_g||, average magnitude ||x_g|| / n_g, the first-order
Taylor term |<d_g, x_g>| (the loss change if the group went to zero), and minus the cosine of
x_g with the base direction d_g (a step along -d_g that already shrinks x_g means the loss wants
it smaller); the lowest are redundant. A group selected in a period is multiplied down linearly
over that period's steps, reaching zero at its end, and stays zero; the others take the base step.

With target_flops, SPA's FLOPs plan over the saliency at the first pruning step fixes how many
channels each layer loses (GroupFlops.choose); each period then selects, in every layer, its
share of that count, lowest saliency first.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .optimizer import GroupSparseOptimizer, register_optimizer


@register_optimizer()
class HESSO(GroupSparseOptimizer):
    """Trains to `target_sparsity` (the fraction of groups zeroed at the end of the pruning), or
    to `target_flops` with `flops` (SparseTraining.flops): the fraction of FLOPs kept.

    start_step: warm-up steps of the base optimizer. pruning_periods, pruning_steps: the pruning
    phase after it (pruning_steps None: as many steps as the warm-up, at least one per period).
    lmbda and epsilon are accepted for the common interface and not used.
    base, lr, momentum, betas, eps, weight_decay: the base optimizer (sgd, adam, adamw).
    """

    name = "hesso"

    def __init__(self, params, groups, lr: float, base: str = "sgd", target_sparsity: float = 0.5,
                 start_step: int = 0, pruning_periods: int = 10, pruning_steps: int | None = None,
                 lmbda: float | None = None, epsilon: float = 0.0, momentum: float = 0.9, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, target_flops: float | None = None, flops=None):
        if target_sparsity is None and target_flops is None:
            raise ValueError("HESSO trains to a target: give target_sparsity in [0, 1) or target_flops in (0, 1]")
        if pruning_periods < 1:
            raise ValueError(f"pruning_periods must be at least 1, got {pruning_periods}")
        super().__init__(params, groups, lr, base, target_sparsity=target_sparsity, target_flops=target_flops,
                         start_step=start_step, lmbda=lmbda, epsilon=epsilon, momentum=momentum, betas=betas, eps=eps,
                         weight_decay=weight_decay, flops=flops)
        self.periods = pruning_periods
        self.period_length = max((start_step if pruning_steps is None else pruning_steps) // pruning_periods, 1)
        self.target_groups = None if target_flops is not None else math.ceil(target_sparsity * self.total_groups - 1e-9)
        self.quotas: list[int] | None = None  # with target_flops: per bundle, the groups the FLOPs plan zeroes
        self.selected: list[torch.Tensor] | None = None  # per bundle: groups selected so far
        self.shrinking: list[torch.Tensor] | None = None  # per bundle: those of the current period

    def update_rows(self, xs, norms, ds, trials, lrs):
        step = self.steps - self.start_step - 1  # 0 at the first pruning step
        if step < 0 or self.target_groups == 0:
            return trials
        if self.selected is None:
            self.selected = [torch.zeros(len(x), dtype=torch.bool) for x in xs]
            if self.target_flops is not None:
                self.quotas = [int(p.sum()) for p in self.plan_flops(self._saliency(xs, norms, ds))]
        period, within = divmod(step, self.period_length)
        if period < self.periods and within == 0:
            share = lambda count: math.ceil(count * (period + 1) / self.periods)  # noqa: E731
            wanted = [share(q) for q in self.quotas] if self.quotas is not None else share(self.target_groups)
            self.shrinking = self._select(xs, norms, ds, wanted)
        for number, (x, trial) in enumerate(zip(xs, trials)):
            trial[self.selected[number]] = 0  # selected in an earlier period: zero, and kept so
            if period < self.periods:
                left = self.period_length - within  # steps of this period left, this one included
                shrinking = self.shrinking[number]
                trial[shrinking] = x[shrinking] * ((left - 1) / left)
        if period < self.periods and within == self.period_length - 1:
            self.selected = [s | n for s, n in zip(self.selected, self.shrinking)]
        return trials

    @staticmethod
    def _saliency(xs, norms, ds) -> list[torch.Tensor]:
        """Per bundle, each group's saliency: the four scores, each normalized over all groups."""
        cosine = torch.cat([F.cosine_similarity(x, d, dim=1) for x, d in zip(xs, ds)])
        magnitude = torch.cat(norms)
        average = torch.cat([norm / x.shape[1] for norm, x in zip(norms, xs)])
        taylor = torch.cat([(x * d).sum(dim=1).abs() for x, d in zip(xs, ds)])
        saliency = sum(F.normalize(s, dim=0) for s in (magnitude, average, taylor)) - F.normalize(cosine, dim=0)
        return list(torch.split(saliency, [len(x) for x in xs]))

    def _select(self, xs, norms, ds, wanted) -> list[torch.Tensor]:
        """The groups to add to the selection so that `wanted` are selected (a number over all
        groups, or a list of one per bundle), lowest saliency first; a bundle keeps at least one
        nonzero, unselected group."""
        saliency = self._saliency(xs, norms, ds)
        if isinstance(wanted, list):
            return [self._lowest(s, norm, selected, want)
                    for s, norm, selected, want in zip(saliency, norms, self.selected, wanted)]
        saliency = torch.cat(saliency)
        owner, row = [], []
        for number, x in enumerate(xs):
            owner += [number] * len(x)
            row += range(len(x))
        chosen = [torch.zeros(len(x), dtype=torch.bool) for x in xs]
        room = [int(((norm > 0) & ~s).sum()) - 1 for norm, s in zip(norms, self.selected)]
        wanted -= sum(int(s.sum()) for s in self.selected)
        for position in torch.argsort(saliency).tolist():
            if wanted <= 0:
                break
            number, r = owner[position], row[position]
            if room[number] > 0 and not self.selected[number][r] and norms[number][r] > 0:
                chosen[number][r] = True
                room[number] -= 1
                wanted -= 1
        return chosen

    @staticmethod
    def _lowest(saliency, norm, selected, wanted: int) -> torch.Tensor:
        """One bundle's groups to add so that `wanted` of its groups are selected, lowest
        saliency first, keeping one nonzero, unselected group."""
        free = (norm > 0) & ~selected
        count = max(0, min(wanted - int(selected.sum()), int(free.sum()) - 1))
        chosen = torch.zeros_like(selected)
        chosen[torch.argsort(torch.where(free, saliency, math.inf))[:count]] = True
        return chosen
