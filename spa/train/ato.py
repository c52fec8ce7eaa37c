"""ATO (Auto-Train-Once): a controller network generates the channel masks of every group while
the model trains, to a FLOPs target.

The controller: one fixed, untrained embedding per layer (SPA group, in graph order), a
bidirectional GRU over the layers, and a linear head per layer to its channels' logits. Masks are
Gumbel-sigmoid samples made hard (0 or 1) in the forward pass with straight-through gradients. A
mask multiplies the producer-side slices of its zero-invariant group (torch parametrizations on
the module's parameters), so a masked channel is exactly zero wherever the model reads it.

Every `controller_every` steps the controller takes one step on a batch of held-out training
data: cross-entropy of the masked model, plus `flops_weight` times |log(F(m) / target)|, F(m)
the masked model's FLOPs from SPA's polynomial FLOPs model (GroupFlops), which is zero at the
target and grows on either side. Between its steps the weights train under the controller's
deterministic masks (logit > 0). From `start_step` on, a proximal group step drives the weights
of the masked channels to zero (x_g -> x_g * max(0, 1 - lr * lmbda / ||x_g||)). At `freeze_step`
the masks are fixed: the controller's logits rank the channels and SPA's FLOPs plan
(GroupFlops.choose) says how many each layer keeps, so the pruned model lands on the target.
`finish()` zeroes the masked channels exactly and removes the parametrizations: the weights are
then the trained, masked model's, and pruning the zero channels is exact.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import SpaError
from .optimizer import GroupSparseOptimizer, register_optimizer


def gumbel_sigmoid(logits: torch.Tensor, tau: float = 0.5, noise: bool = True,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Binary masks in the forward pass (1 where the noisy logit is positive), with the
    gradient of sigmoid((logits + logistic noise) / tau) in the backward pass (straight-through).
    The logistic noise is the difference of two Gumbel samples; noise=False: none."""
    if noise:
        u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype).clamp(1e-6, 1 - 1e-6)
        logits = logits + torch.log(u) - torch.log1p(-u)
    soft = torch.sigmoid(logits / tau)
    hard = (soft > 0.5).to(soft.dtype)
    return hard - soft.detach() + soft


def flops_penalty(ratio: torch.Tensor, target: float) -> torch.Tensor:
    """|log(ratio / target)|: zero at the target, growing on either side of it."""
    return torch.log(ratio / target).abs()


class Controller(nn.Module):
    """Channel logits for every layer: fixed embeddings, a bidirectional GRU, a head per layer.

    sizes: the channel count of each layer, in graph order. The heads' biases start at
    `initial_logit` (> 0: every channel kept at first)."""

    def __init__(self, sizes: list[int], embedding: int = 64, hidden: int = 64, initial_logit: float = 1.0,
                 seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("embeddings", torch.randn(len(sizes), embedding, generator=generator))
        self.gru = nn.GRU(embedding, hidden, batch_first=True, bidirectional=True)
        self.heads = nn.ModuleList(nn.Linear(2 * hidden, size) for size in sizes)
        for head in self.heads:
            nn.init.constant_(head.bias, initial_logit)

    def forward(self) -> list[torch.Tensor]:
        states, _ = self.gru(self.embeddings[None])
        return [head(state) for head, state in zip(self.heads, states[0])]


class _Mask(nn.Module):
    """A parametrization: the parameter times the masks of the groups it belongs to, one mask
    vector per axis (ones outside the groups)."""

    def __init__(self, owner: "ATO", shape: torch.Size, slices: list[tuple[int, torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.owner, self.shape = [owner], shape  # a list: the optimizer is not a submodule
        self.slices = slices  # (axis, positions along it, the group of each position)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks = self.owner[0].group_masks
        for axis, positions, numbers in self.slices:
            vector = torch.ones(self.shape[axis], dtype=x.dtype).index_put((positions,), masks[numbers].to(x.dtype))
            x = x * vector.reshape([-1 if a == axis else 1 for a in range(x.dim())])
        return x


@register_optimizer()
class ATO(GroupSparseOptimizer):
    """Auto-Train-Once to `target_flops` (the fraction of FLOPs kept) with `flops`
    (SparseTraining.flops). Bind it to the module and a held-out dataset before training
    (`bind`), and call `finish()` before pruning (spa.train.train does both).

    start_step: the step from which the proximal step drives masked channels to zero.
    freeze_step: the step at which the masks are fixed on the FLOPs target (None: 4 * start_step,
    at least start_step + 1). controller_every, controller_lr, controller_batch: how often, how
    fast (Adam) and on how many held-out samples the controller trains. flops_weight: the FLOPs
    penalty's weight; tau: the Gumbel-sigmoid temperature. lmbda: the proximal step's weight
    (None: 1). base, lr, momentum, betas, eps, weight_decay: the base optimizer of the weights.
    """

    name = "ato"
    holdout = 0.1  # the controller trains on this fraction of the training data, held out

    @classmethod
    def check_targets(cls, target_sparsity, target_flops) -> None:
        super().check_targets(target_sparsity, target_flops)
        if target_flops is None:
            raise SpaError("ato trains to a FLOPs target: give target_flops (--target-flops F, the fraction to keep)")

    def __init__(self, params, groups, lr: float, base: str = "sgd", target_flops: float | None = None, flops=None,
                 start_step: int = 0, freeze_step: int | None = None, lmbda: float | None = None,
                 controller_every: int = 2, controller_lr: float = 1e-2, controller_batch: int = 64,
                 flops_weight: float = 2.0, tau: float = 0.5, seed: int = 0, epsilon: float = 0.0,
                 momentum: float = 0.9, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 target_sparsity: float | None = None):
        super().__init__(params, groups, lr, base, target_flops=target_flops, start_step=start_step,
                         lmbda=1.0 if lmbda is None else lmbda, epsilon=epsilon, momentum=momentum, betas=betas,
                         eps=eps, weight_decay=weight_decay, flops=flops)
        if len(flops.units) != len(groups):
            raise ValueError(f"flops describes {len(flops.units)} groups, the optimizer has {len(groups)}")
        self.slices_of = [[(p, a % p.dim(), torch.as_tensor(i, dtype=torch.long).reshape(-1)) for p, a, i in g]
                            for g in groups]
        self.freeze_step = max(4 * start_step, start_step + 1) if freeze_step is None else freeze_step
        self.controller_every, self.controller_batch = controller_every, controller_batch
        self.flops_weight, self.tau = flops_weight, tau
        order = _graph_order(flops.analysis, flops.group_ids)
        self.layers = [flops.group_ids.index(g) for g in order]  # controller position -> GroupFlops column
        self.layer_of = np.array([self.layers.index(c) for c in flops.column])  # optimizer group -> layer
        self.position = np.array([u.unit for u in flops.units])  # optimizer group -> channel in its layer
        sizes = [flops.analysis.groups[g].units for g in order]
        self.controller = Controller(sizes, seed=seed)
        self.controller_optimizer = torch.optim.Adam(self.controller.parameters(), lr=controller_lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.group_masks = torch.ones(len(groups))
        self.frozen = False
        self.module = self.held_out = self.loss = None

    # -- the loop's hooks ---------------------------------------------------------------------
    def bind(self, module: nn.Module, held_out, loss: Callable) -> None:
        """Mask the module's grouped parameters, and train the controller on `held_out` (a
        spa.train.Dataset) with `loss(output, labels)`."""
        if held_out is None or len(held_out) < 2:
            raise SpaError("ato trains its controller on held-out data: it needs at least 2 held-out samples")
        self.module, self.held_out, self.loss = module, held_out, loss
        owners = {p: name for name, p in module.named_parameters()}
        per_param: dict[torch.Tensor, dict[int, tuple[list, list]]] = {}
        for number, group in enumerate(self.slices_of):
            for p, axis, indices in group:
                positions, numbers = per_param.setdefault(p, {}).setdefault(axis, ([], []))
                positions.append(indices)
                numbers.append(torch.full((len(indices),), number))
        for p, axes in per_param.items():
            if p not in owners:
                raise SpaError("ato: a grouped parameter is not a parameter of the bound module")
            path, _, attribute = owners[p].rpartition(".")
            slices = [(axis, torch.cat(pos), torch.cat(num)) for axis, (pos, num) in axes.items()]
            parametrize.register_parametrization(module.get_submodule(path), attribute, _Mask(self, p.shape, slices))
        self._refresh_masks()

    def finish(self) -> None:
        """Fix the masks (if not yet), zero the masked channels' weights exactly and remove the
        masks from the module: it is then the trained, masked model."""
        if not self.frozen:
            self._freeze()
        with torch.no_grad():
            for number in torch.nonzero(self.group_masks == 0).reshape(-1).tolist():
                for p, axis, indices in self.slices_of[number]:
                    p.index_fill_(axis, indices, 0.0)
        if self.module is not None:
            for submodule in list(self.module.modules()):
                if parametrize.is_parametrized(submodule):
                    for attribute in list(submodule.parametrizations):
                        parametrize.remove_parametrizations(submodule, attribute, leave_parametrized=False)
            self.module = None

    # -- the steps ----------------------------------------------------------------------------
    def step(self, closure=None):
        loss = super().step(closure)
        if not self.frozen:
            if self.steps >= self.freeze_step:
                self._freeze()
            elif self.steps % self.controller_every == 0 and self.held_out is not None:
                self._controller_step()
                self._refresh_masks()
        return loss

    def update_rows(self, xs, norms, ds, trials, lrs):
        if self.steps <= self.start_step:
            return trials
        for bundle, trial, lr in zip(self.bundles, trials, lrs):
            masked = self.group_masks[bundle.numbers] == 0
            if not masked.any():
                continue
            norm = trial[masked].norm(dim=1, keepdim=True)
            trial[masked] = trial[masked] * (1 - lr * self.lmbda / norm.clamp_min(1e-30)).clamp_min(0)
        return trials

    def layer_logits(self) -> list[torch.Tensor]:
        """The controller's logits, one tensor per layer (graph order)."""
        return self.controller()

    def flops_left(self) -> float:
        """FLOPs of the model under the current masks, as a fraction of the full model's."""
        keep = [self.group_masks[torch.from_numpy(self.flops.column == c)] for c in range(len(self.flops.group_ids))]
        return float(self.flops.relative(keep))

    def _layer_masks_to_groups(self, layer_masks: list[torch.Tensor]) -> torch.Tensor:
        flat = torch.cat(layer_masks)
        starts = np.cumsum([0] + [len(m) for m in layer_masks])[:-1]
        return flat[torch.from_numpy(starts[self.layer_of] + self.position)]

    def _refresh_masks(self) -> None:
        with torch.no_grad():
            logits = self.layer_logits()
            self.group_masks = self._layer_masks_to_groups([(l > 0).float() for l in logits])  # noqa: E741

    def _controller_step(self) -> None:
        index = torch.randperm(len(self.held_out), generator=self.generator)[:self.controller_batch].numpy()
        inputs = [torch.from_numpy(a[index]) for a in self.held_out.inputs]
        labels = torch.from_numpy(self.held_out.labels[index])
        layer_masks = [gumbel_sigmoid(l, self.tau, generator=self.generator) for l in self.layer_logits()]  # noqa: E741
        self.group_masks = self._layer_masks_to_groups(layer_masks)
        output = self.module(*inputs)
        output = output[0] if isinstance(output, (tuple, list)) else output
        keep = [layer_masks[self.layers.index(c)] for c in range(len(self.flops.group_ids))]
        ratio = self.flops.relative(keep)
        objective = self.loss(output, labels) + self.flops_weight * flops_penalty(ratio, self.target_flops)
        grads = torch.autograd.grad(objective, list(self.controller.parameters()), allow_unused=True)
        self.controller_optimizer.zero_grad()
        for p, g in zip(self.controller.parameters(), grads):
            p.grad = g
        self.controller_optimizer.step()

    def _freeze(self) -> None:
        """Fix the masks: the channels ranked by the controller's logits, counts from SPA's FLOPs plan."""
        with torch.no_grad():
            logits = self._layer_masks_to_groups(self.layer_logits()).double().numpy()
        self.group_masks = torch.from_numpy(~self.flops.choose(self.target_flops, logits)).float()
        self.frozen = True


def _graph_order(analysis, group_ids) -> list[int]:
    """The groups sorted by where they start in the graph: the first node that writes or reads
    one of their tensors, in topological order."""
    graph = analysis.graph
    order = {index: position for position, index in enumerate(graph.topological_order())}

    def start(group_id: int) -> int:
        nodes = []
        for m in analysis.groups[group_id].members:
            tensor = graph.tensors[m.tensor]
            nodes += ([tensor.producer] if tensor.producer is not None else []) + tensor.consumers
        return min((order[n] for n in nodes), default=0)

    return sorted(group_ids, key=start)


__all__ = ["ATO", "Controller", "flops_penalty", "gumbel_sigmoid"]
