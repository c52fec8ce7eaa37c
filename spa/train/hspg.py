"""HSPG, half-space projected gradient (OTOv1), for f(x) + lmbda * sum_g ||x_g||.

For `start_step` steps a subgradient step (d_g + lmbda * x_g / ||x_g||), then half-space steps:
the same trial point, and x_g is set to zero when <x~_g, x_g> < epsilon * ||x_g||^2; zero groups
stay zero. OTO's defaults: epsilon 0, lmbda 1e-3 for SGD and 1e-2 for Adam and AdamW.

With a target (target_sparsity, or target_flops translated by SPA's FLOPs model into how many
channels each layer loses, planned at the first half-space step from the groups' norms per
element; from then on the lasso pulls only the planned groups, so the layers reach their counts
before the learning rate has decayed) the group-lasso term stops where the target is reached: a lasso that keeps pulling
every remaining group towards zero after that only shrinks the channels the model keeps (with
spa train's lambda 1.0 it collapsed a digits ResNet to 8.6% accuracy).
"""
from __future__ import annotations

import math

import torch

from .optimizer import GroupSparseOptimizer, in_half_space, register_optimizer


@register_optimizer()
class HSPG(GroupSparseOptimizer):
    """Half-space projected gradient (OTOv1) for f(x) + lmbda * sum_g ||x_g||.

    groups: the zero-invariant groups, each a list of (parameter, axis, indices along the axis).
    start_step: steps of subgradient descent before the half-space steps begin.
    epsilon: the half-space threshold (0 <= epsilon < 1; larger zeroes more eagerly).
    target_sparsity (or max_sparsity, its older name): the half-space steps never zero more than
    this fraction of the groups (None: no cap); target_flops with flops (SparseTraining.flops):
    the FLOPs to keep instead. Where the target is reached the lasso term stops.
    base, lr, momentum, betas, eps, weight_decay: the base optimizer (sgd, adam, adamw) that
    gives the direction d of the smooth part.
    """

    name = "hspg"
    # spa train's lambda: the lasso pulls every group, so DHSPG's 1.0 (for its redundant groups
    # alone) crushes all weights in the first steps (digits MLP: stuck at chance from epoch 1).
    train_lmbda = {"sgd": 0.3, "adam": 30.0, "adamw": 30.0}

    def __init__(self, params, groups, lr: float, base: str = "sgd", lmbda: float | None = None, epsilon: float = 0.0,
                 start_step: int = 0, max_sparsity: float | None = None, momentum: float = 0.9, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, target_sparsity: float | None = None,
                 target_flops: float | None = None, flops=None):
        super().__init__(params, groups, lr, base, target_sparsity=target_sparsity, target_flops=target_flops,
                         start_step=start_step, lmbda=lmbda, epsilon=epsilon, momentum=momentum, betas=betas, eps=eps,
                         weight_decay=weight_decay, flops=flops)
        cap = target_sparsity if target_sparsity is not None else max_sparsity
        self.max_sparsity = 1.0 if cap is None else cap
        self.planned = None  # with target_flops: per bundle, the rows the FLOPs plan zeroes

    def update_rows(self, xs, norms, ds, trials, lrs):
        projecting = self.steps > self.start_step
        if projecting and self.target_flops is not None and self.planned is None:
            self.planned = self.plan_flops([norm / math.sqrt(x.shape[1]) for x, norm in zip(xs, norms)])
        if self.planned is not None:  # the lasso pulls the planned rows of the layers short of their count
            budget = self.budgets(self.planned, norms)
            pulled = [planned & (b > 0) for planned, b in zip(self.planned, budget)]
        else:
            budget = self.budget(self.max_sparsity, norms)
            pulled = [torch.full((len(x),), self.target_flops is not None or budget > 0) for x in xs]
        candidates = []
        for x, norm, trial, lr, pull in zip(xs, norms, trials, lrs, pulled):
            trial[pull] -= lr * self.lmbda * x[pull] / norm[pull].clamp_min(1e-30)[:, None]  # the subgradient: 0 at 0
            candidates.append(in_half_space(trial, x, self.epsilon))
        if projecting:
            self.project(xs, norms, trials, candidates, budget)
        return trials
