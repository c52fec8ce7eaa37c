"""H2SPG, the hierarchical half-space projected gradient (OTOv3's erasing mode) on SPA's removal
structures: the structures trained to zero are erased after training.

The groups are whole structures (spa.train.structures.StructureTraining: every parameter of an
innermost residual branch, attention or MLP sub-layer), one group each. Until `start_step` the
model trains as usual. There the redundant structures are chosen once: the lowest saliency
first, saliency being a structure's parameter norm per element (how much it still carries), as
many as the target asks (target_sparsity: that fraction of the structures, which is how
`spa train --erase N` aims at N; target_flops: until erasing them leaves that fraction of the
FLOPs, SPA's count). From then on only the chosen ones take the group-lasso pull, proportional to
their weights (a fraction `lmbda` of them a step: a structure holds thousands of weights, and a
pull of fixed length would take it no nearer zero than a channel's), and each is projected to
zero where its trial point enters the half-space <x~_g, x_g> < epsilon ||x_g||^2, as HSPG does
for channels, or has shrunk to ZERO_FRACTION of its norm; those still short of it when training
ends go to zero then (`finish`). The others train freely, taking over what the erased ones did. The
structures never overlap and none disconnects the graph (see StructureTraining), which is what
the hierarchy of OTOv3's search guarantees there.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .optimizer import GroupSparseOptimizer, in_half_space, register_optimizer
from .structures import StructureTraining


ZERO_FRACTION = 1e-2  # a chosen structure at this fraction of its norm when chosen is set to zero


@register_optimizer()
class H2SPG(GroupSparseOptimizer):
    """Half-space projected gradient over whole structures; the arguments are GroupSparseOptimizer's,
    `lmbda` the fraction of a chosen structure's weights taken off per step. With target_flops,
    `flops` is the job's StructureFlops (StructureTraining.flops)."""

    name = "h2spg"
    job = StructureTraining  # its groups are structures, and its prune erases them
    train_lmbda = {"sgd": 0.05, "adam": 0.05, "adamw": 0.05}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.chosen: dict[int, float] | None = None  # bundle (one per structure) -> its norm when chosen

    def update_rows(self, xs, norms, ds, trials, lrs):
        if self.steps > self.start_step and self.chosen is None:
            self.chosen = {k: float(norms[k][0]) for k in self._choose(xs, norms)}
        for k, start in (self.chosen or {}).items():
            trial = trials[k]
            trial -= self.lmbda * xs[k]  # the group-lasso pull, proportional to the structure's weights
            if bool(in_half_space(trial, xs[k], self.epsilon)[0]) or float(trial.norm()) < ZERO_FRACTION * start:
                trial.zero_()
        for norm, trial in zip(norms, trials):
            trial[norm == 0] = 0  # an erased structure stays erased
        return trials

    @torch.no_grad()
    def finish(self) -> None:
        """The chosen structures still short of zero at the end go to zero now: the target is met
        exactly, and what is erased is what was trained away."""
        for k in self.chosen or {}:
            bundle = self.bundles[k]
            bundle.scatter(torch.zeros_like(bundle.gather(lambda p: p)))

    def _choose(self, xs, norms) -> list[int]:
        saliency = np.array([float(norm[0]) / math.sqrt(x.shape[1]) for x, norm in zip(xs, norms)])
        if self.target_flops is not None:
            flat = np.zeros(self.total_groups)
            for bundle, value in zip(self.bundles, saliency):
                flat[int(bundle.numbers[0])] = value
            zero = self.flops.choose(self.target_flops, flat)
            return [k for k, bundle in enumerate(self.bundles) if zero[int(bundle.numbers[0])]]
        count = math.ceil((self.target_sparsity or 0.0) * self.total_groups - 1e-9)
        return [int(k) for k in np.argsort(saliency, kind="stable")[:count]]
