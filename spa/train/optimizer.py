"""The base of the prune-while-training optimizers, and their registry.

Each step first takes the base optimizer's step on every parameter (SGD with momentum, Adam or
AdamW: `base`), giving the trial point x~ = x - lr * d, then treats each zero-invariant group g
as one row x_g and lets the subclass (HSPG, DHSPG, HESSO, a user's own) decide the new rows.
Projections never zero more groups than the subclass's budget allows, the deepest in the
half-space first, and never the last nonzero group of a layer (the groups made of the same
parameters): a layer keeps at least one channel. OPTIMIZERS names them for
`spa train --optimizer NAME`, and `train(optimizer=...)` also takes a user's subclass (see the
README, *Extending SPA*).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..errors import SpaError

BASES = ("sgd", "adam", "adamw")

# OTO's defaults per base optimizer: the group-lasso weight and DHSPG's lambda adaptation.
LAMBDA_DEFAULTS = {
    "sgd": {"lmbda": 1e-3, "lmbda_amplify": 2.0, "hat_lmbda_coeff": 10.0},
    "adam": {"lmbda": 1e-2, "lmbda_amplify": 20.0, "hat_lmbda_coeff": 1e3},
    "adamw": {"lmbda": 1e-2, "lmbda_amplify": 20.0, "hat_lmbda_coeff": 1e3},
}


def in_half_space(trial: torch.Tensor, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Rows (nonzero in x) that the half-space projection sets to zero: <trial, x> < eps ||x||^2."""
    squared = (x * x).sum(dim=1)
    return ((trial * x).sum(dim=1) < epsilon * squared) & (squared > 0)


class _Bundle:
    """Groups with the same structure (same parameters, axes and slice sizes: the channels of one
    layer), handled together as a matrix whose row u is group u's slices, flattened."""

    def __init__(self, units: list[list[tuple[torch.Tensor, int, torch.Tensor]]], numbers: list[int]):
        self.params = [p for p, _, _ in units[0]]
        self.axes = [a for _, a, _ in units[0]]
        self.indices = [torch.stack([unit[k][2] for unit in units]) for k in range(len(units[0]))]
        self.size = len(units)
        self.numbers = torch.tensor(numbers)  # row u is group numbers[u] of the optimizer's groups

    def gather(self, source: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The rows, read from source(parameter) (the parameter itself, its direction ...)."""
        parts = [source(p).movedim(axis, 0)[idx.reshape(-1)].reshape(self.size, -1)
                 for p, axis, idx in zip(self.params, self.axes, self.indices)]
        return torch.cat(parts, dim=1)

    def scatter(self, rows: torch.Tensor) -> None:
        """Write the rows into the parameters."""
        column = 0
        for p, axis, idx in zip(self.params, self.axes, self.indices):
            target = p.data.movedim(axis, 0)
            width = idx.shape[1] * target[0].numel()
            target[idx.reshape(-1)] = rows[:, column:column + width].reshape(-1, *target.shape[1:])
            column += width


def _bundles(groups, params: set[torch.Tensor]) -> list[_Bundle]:
    by_structure: dict[tuple, list] = {}
    for number, group in enumerate(groups):
        slices = []
        for param, axis, indices in group:
            if param not in params:
                raise ValueError(f"group {number}: a parameter that is not among the optimizer's parameters")
            if not -param.dim() <= axis < param.dim():
                raise ValueError(f"group {number}: axis {axis} of a parameter of rank {param.dim()}")
            axis %= param.dim()
            if isinstance(indices, slice):
                indices = range(*indices.indices(param.shape[axis]))
            indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
            if len(indices) == 0 or int(indices.min()) < 0 or int(indices.max()) >= param.shape[axis]:
                raise ValueError(f"group {number}: indices empty or out of range for axis {axis} of size {param.shape[axis]}")
            slices.append((param, axis, indices))
        if not slices:
            raise ValueError(f"group {number} is empty")
        key = tuple((id(p), a, len(i)) for p, a, i in slices)
        by_structure.setdefault(key, []).append((number, slices))
    return [_Bundle([slices for _, slices in members], [number for number, _ in members])
            for members in by_structure.values()]


class GroupSparseOptimizer(torch.optim.Optimizer):
    """The base of every prune-while-training optimizer (HSPG, DHSPG, a user's own): the base
    optimizer's step on every parameter, then `update_rows` on the groups' rows.

    Every subclass takes the same arguments: params; groups (the zero-invariant groups, each a
    list of (parameter, axis, indices)); lr and base (sgd, adam, adamw) with momentum, betas, eps,
    weight_decay; the targets, `target_sparsity` (the fraction of groups to zero, None: no cap)
    or `target_flops` (the fraction of FLOPs to keep) with `flops`, SPA's FLOPs model of the groups
    (SparseTraining.flops), which translates it into how many channels each layer loses
    (`plan_flops`, `budgets`); `start_step` (steps before pruning starts), `lmbda` (group-lasso weight, None: OTO's
    default for the base) and `epsilon` (the half-space threshold).

    A new optimizer implements `update_rows(xs, norms, ds, trials, lrs)`, which returns each
    bundle's new rows; `project` zeroes rows within a budget (never a layer's last channel) and
    `budget` says how many more may go. Register it with `register_optimizer` for
    `spa.train(optimizer=NAME)`, or pass the class: `spa.train.train(..., optimizer=MyOptimizer)`.
    """

    name = "group_sparse"  # what reports and logs call it (the registry's key for built-in ones)
    train_lmbda: dict | None = None  # lambda per base that `train` uses unless told (None: loop.TRAIN_LMBDA)
    holdout = 0.0  # the fraction of the training data `train` holds out for the optimizer's own use (bind)

    def bind(self, module: torch.nn.Module, held_out, loss: Callable) -> None:
        """Called by `train` before the first step: the module being trained, the held-out data
        (a spa.train.Dataset of `holdout` of the training data, None when holdout is 0) and the
        loss(output, labels). Nothing by default; ATO trains its controller on them."""

    def finish(self) -> None:
        """Called by `train` after the last step, before pruning. Nothing by default; ATO
        zeroes its masked channels and takes its masks off the module."""

    @classmethod
    def check_targets(cls, target_sparsity: float | None, target_flops: float | None) -> None:
        """Refuse targets the optimizer cannot aim at (checked before any training work)."""
        if target_flops is not None and not 0 < target_flops <= 1:
            raise SpaError(f"target_flops is the fraction of the model's FLOPs to keep, in (0, 1]; got {target_flops}")
        if target_sparsity is not None and not 0 <= target_sparsity < 1:
            raise ValueError(f"target_sparsity must be in [0, 1), got {target_sparsity}")

    def __init__(self, params, groups, lr: float, base: str = "sgd", target_sparsity: float | None = None,
                 target_flops: float | None = None, start_step: int = 0, lmbda: float | None = None,
                 epsilon: float = 0.0, momentum: float = 0.9, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, flops=None):
        self.check_targets(target_sparsity, target_flops)
        if target_flops is not None and flops is None:
            raise SpaError("target_flops needs the groups' FLOPs model: pass flops=job.flops (a spa.train.SparseTraining "
                           "job; spa.train.GroupFlops for groups of your own)")
        if base not in BASES:
            raise ValueError(f"unknown base optimizer '{base}' (choose from {', '.join(BASES)})")
        if lr <= 0 or epsilon < 0:
            raise ValueError("lr must be positive and epsilon not negative")
        defaults = dict(lr=lr, momentum=momentum, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.base = base
        self.target_sparsity = target_sparsity
        self.target_flops = target_flops
        self.flops = flops  # GroupFlops: translates target_flops into the groups to zero
        self.start_step = start_step
        self.lmbda = LAMBDA_DEFAULTS[base]["lmbda"] if lmbda is None else lmbda
        self.epsilon = epsilon
        self.steps = 0
        self._lr_of = {p: group for group in self.param_groups for p in group["params"]}
        self.bundles = _bundles(groups, set(self._lr_of))
        self._grouped = {p for bundle in self.bundles for p in bundle.params}
        self.total_groups = sum(b.size for b in self.bundles)

    @property
    def group_sparsity(self) -> float:
        """The fraction of groups that are exactly zero."""
        return self.zero_groups() / max(self.total_groups, 1)

    def flops_left(self) -> float | None:
        """The FLOPs of the model with the exactly-zero groups removed, over the full model's
        (SPA's count; None without a FLOPs model)."""
        if self.flops is None:
            return None
        zero = np.zeros(self.total_groups, dtype=bool)
        with torch.no_grad():
            for bundle in self.bundles:
                zero[bundle.numbers.numpy()] = (bundle.gather(lambda p: p).abs().sum(dim=1) == 0).numpy()
        return self.flops.counted(zero) / self.flops.full

    def zero_groups(self) -> int:
        with torch.no_grad():
            return sum(int((b.gather(lambda p: p).abs().sum(dim=1) == 0).sum()) for b in self.bundles)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.steps += 1
        if not self.bundles:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self._base_step(p, group)
            return loss
        xs = [b.gather(lambda p: p) for b in self.bundles]
        norms = [x.norm(dim=1) for x in xs]
        directions = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None and p not in self._grouped:
                    continue
                d = self._base_step(p, group)
                if p in self._grouped:
                    directions[p] = d
        ds = [b.gather(directions.__getitem__) for b in self.bundles]
        trials = [b.gather(lambda p: p) for b in self.bundles]
        lrs = [self._lr_of[b.params[0]]["lr"] for b in self.bundles]
        for bundle, row in zip(self.bundles, self.update_rows(xs, norms, ds, trials, lrs)):
            bundle.scatter(row)
        return loss

    def _base_step(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """Move p by -lr * d, the base optimizer's step, in place; return d (torch's SGD with
        momentum, Adam and AdamW, without their rarer options)."""
        lr, decay = group["lr"], group["weight_decay"]
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        if decay and self.base != "adamw":
            grad = grad + decay * p
        state = self.state[p]
        if self.base == "sgd":
            d = grad
            if group["momentum"]:
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                d = state["momentum_buffer"]
        else:
            beta1, beta2 = group["betas"]
            if not state:
                state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            state["step"] += 1
            state["exp_avg"].lerp_(grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            first, second = 1 - beta1 ** state["step"], 1 - beta2 ** state["step"]
            d = (state["exp_avg"] / first) / ((state["exp_avg_sq"] / second).sqrt() + group["eps"])
            if decay and self.base == "adamw":
                p.mul_(1 - lr * decay)
        p.add_(d, alpha=-lr)
        return d

    def update_rows(self, xs, norms, ds, trials, lrs) -> list[torch.Tensor]:
        """The new rows of every bundle, from the current rows `xs` (and their `norms`), the base
        directions `ds`, the base trial points `trials` (x - lr * d; may be updated in place) and
        each bundle's learning rate `lrs`. A bundle is the groups of one layer, row u group u."""
        raise NotImplementedError

    def project(self, xs, norms, trials, candidates, budget) -> None:
        """Zero the candidate rows of the trials (rows in the half-space), the deepest first
        (smallest <trial, x> / ||x||^2), at most `budget` of them (a number, or a list of one per
        bundle: see `budgets`) and never a bundle's last nonzero row; rows already zero stay zero."""
        depth, owner, rows = [], [], []
        for number, (x, norm, trial, candidate) in enumerate(zip(xs, norms, trials, candidates)):
            index = candidate.nonzero().reshape(-1)
            depth.append((trial[index] * x[index]).sum(dim=1) / norm[index] ** 2)
            owner += [number] * len(index)
            rows.append(index)
        rows = torch.cat(rows).tolist()
        nonzero = [int((norm > 0).sum()) for norm in norms]
        per_bundle = list(budget) if isinstance(budget, (list, tuple)) else None
        total = sum(max(b, 0) for b in per_bundle) if per_bundle is not None else budget
        for position in torch.argsort(torch.cat(depth)).tolist():
            if total <= 0:
                break
            number = owner[position]
            if nonzero[number] > 1 and (per_bundle is None or per_bundle[number] > 0):
                trials[number][rows[position]] = 0
                nonzero[number] -= 1
                total -= 1
                if per_bundle is not None:
                    per_bundle[number] -= 1
        for norm, trial in zip(norms, trials):
            trial[norm == 0] = 0

    def budget(self, fraction: float, norms) -> int:
        """How many more groups may be zeroed before `fraction` of all groups are zero."""
        target = math.ceil(fraction * self.total_groups - 1e-9)
        return target - sum(int((norm == 0).sum()) for norm in norms)

    def plan_flops(self, scores) -> list[torch.Tensor]:
        """target_flops as the rows to zero, one boolean mask per bundle: the lowest `scores`
        (one tensor per bundle, comparable across bundles) first, until the pruned model's FLOPs
        (SPA's count) land at the target (GroupFlops.choose)."""
        flat = np.zeros(self.total_groups)
        for bundle, score in zip(self.bundles, scores):
            flat[bundle.numbers.numpy()] = score.double().numpy()
        zero = torch.from_numpy(self.flops.choose(self.target_flops, flat))
        return [zero[bundle.numbers] for bundle in self.bundles]

    @staticmethod
    def budgets(planned, norms) -> list[int]:
        """Per bundle, how many more rows may be zeroed before it has as many zero rows as planned
        (the FLOPs depend only on how many channels each layer loses)."""
        return [int(p.sum()) - int((norm == 0).sum()) for p, norm in zip(planned, norms)]


OPTIMIZERS: dict[str, type[GroupSparseOptimizer]] = {}
"""The prune-while-training optimizers by name (`spa train --optimizer NAME`); each module of
spa.train registers its own."""


def register_optimizer(name: str | None = None, replace: bool = False):
    """Register a GroupSparseOptimizer subclass under `name` (default: its `name`), as a class
    decorator; `spa.train.train(optimizer=NAME)` then finds it. ValueError for a name taken,
    unless `replace`."""
    def add(cls):
        if not (isinstance(cls, type) and issubclass(cls, GroupSparseOptimizer)):
            raise TypeError("an optimizer must be a subclass of spa.train.GroupSparseOptimizer")
        key = name or cls.name
        if key in OPTIMIZERS and OPTIMIZERS[key] is not cls and not replace:
            raise ValueError(f"an optimizer named '{key}' is registered already (pass replace=True to replace it)")
        OPTIMIZERS[key] = cls
        return cls

    return add


def get_optimizer(optimizer) -> tuple[str, type[GroupSparseOptimizer]]:
    """(name, class) of an optimizer given by name (OPTIMIZERS) or as a GroupSparseOptimizer subclass."""
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise SpaError(f"unknown optimizer '{optimizer}' (choose from {', '.join(OPTIMIZERS)})")
        return optimizer, OPTIMIZERS[optimizer]
    if isinstance(optimizer, type) and issubclass(optimizer, GroupSparseOptimizer):
        return (optimizer.name if optimizer.name != GroupSparseOptimizer.name else optimizer.__name__.lower()), optimizer
    raise SpaError(f"an optimizer is a name ({', '.join(OPTIMIZERS)}) or a subclass of "
                   f"spa.train.GroupSparseOptimizer; got {optimizer!r}")
