"""Prune while training: HSPG and DHSPG (the Only-Train-Once optimizers) on SPA's groups.

A user who can train gets a model that is trained and pruned in one run. The ONNX model is
converted with `to_torch`, trained with a group-sparsity optimizer that drives whole channels to
exactly zero, written back to ONNX, and the zero channels are removed by SPA's rewriter: since
they are zero, removing them changes nothing (checked to 1e-5 before anything is returned).

Zero-invariant groups. Each unit of a prunable, exact SPA group (one channel and every parameter
slice that goes with it) gives one optimizer group: the unit's *producer-side* slices, those
read by an operator whose output carries the channel (a conv's output filter and bias, the
BatchNorm scale and shift after it, a depthwise filter, a per-channel Mul or Add). When they are
all zero the channel is zero wherever the model reads it (SPA's per-operator `zero_output`
rules check this through ReLU, Clip, pooling, residual adds ...), so the *consumer-side* slices
(the next layer's input columns) multiply zeros: the output does not depend on them, and removing
the whole SPA unit, both sides, is exact. BatchNorm statistics are not trained and need not be
zero: with scale and shift zero its output is zero in train mode (batch statistics) and in eval
mode (running statistics) alike. Where a channel would not be zero (it passes a sigmoid before
the next layer, say) the consumer-side slices join the group, so zero still means removable.
This is OTO's zero-invariant group, derived from SPA's analysis rather than from layer patterns.

Preparing the model (`prepare_for_training`). SPA treats an Identity copy of a parameter (how
the TorchScript exporter shares equal constants) as a parameter of its own; here each becomes
an initializer, so it trains on its own too. Exporters also merge equal initializers: in a fresh
model every BatchNorm of one width reads the same ones and zeros, which would tie their scales in
training and couple their channels in SPA's groups. With `untie_shared=True` (the default) each
use of a float initializer by a node gets its own copy; pass False for weights tied on purpose.

Optimizers (`torch.optim.Optimizer`s, for any training loop). Each step first takes the base
optimizer's step on every parameter (SGD with momentum, Adam or AdamW: `base`), giving the trial
point x~ = x - lr * d, then treats each zero-invariant group g as one row x_g:
- HSPG (OTOv1) minimizes f(x) + lmbda * sum_g ||x_g||: for `start_step` steps a subgradient step
  (d_g + lmbda * x_g / ||x_g||), then half-space steps: the same trial point, and x_g is set to
  zero when <x~_g, x_g> < epsilon * ||x_g||^2; zero groups stay zero.
- DHSPG (OTOv2) aims at `target_sparsity`: at step `start_step` the groups are split by a saliency
  score (the cosine of x_g with d_g, and the inverse of ||x_g|| per element, each normalized over
  all groups) into redundant ones (the top (target + tolerance) of them) and important ones.
  Important groups take the base step. Redundant groups are pulled to zero by lmbda_g * x_g /
  ||x_g||, with lmbda_g adapted so that the step still descends along d_g (`adapted_lambdas`),
  then projected onto zero in the half-space. Zero groups stay zero; once the target is reached
  the projection stops and redundant groups take the base step again.
Projections never zero more groups than `target_sparsity` (DHSPG) or `max_sparsity` (HSPG) allow,
the deepest in the half-space first, and never the last nonzero group of a layer (the groups made
of the same parameters): a layer keeps at least one channel. Both subclass GroupSparseOptimizer,
which fixes the arguments every optimizer takes (target_sparsity, target_flops, ...); OPTIMIZERS
names them for `spa train --optimizer NAME`, and `train(optimizer=...)` also takes a user's
subclass (see the README, *Extending SPA*).

Defaults of the optimizer classes (those of the OTO reference implementation): epsilon 0; lmbda
1e-3, lmbda_amplify 2, hat_lmbda_coeff 10 for SGD, and 1e-2, 20, 1e3 for Adam and AdamW;
tolerance 0.05; momentum 0.9, betas (0.9, 0.999). They are made for runs of hundreds of epochs.
`train` (and `spa train`) uses settings that reach the target in tens of epochs on the digits
models: SGD with momentum, lr 0.1 with cosine decay, lmbda 1.0, epsilon 0.95 (as OTO's
tutorials), pruning from 10% of the run; lr 3e-3 and lmbda 100 over Adam and AdamW, which reach
the target more slowly: Adam's per-element scaling keeps pushing shrinking groups back out, and
the descent bound on lambda then holds them (on the digits MLP, 45% of 50% after 20 epochs).
"""
from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from os import PathLike
from typing import Callable, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import defs, numpy_helper

from .api import Report, apply
from .errors import SpaError
from .graph import Graph, load_model
from .groups import Analysis, Group, Member, analyze
from .rules import NodeView, rule_for
from .torch_bridge import TorchModel, to_torch, write_back

LOSSES = ("ce", "mse")
BASES = ("sgd", "adam", "adamw")

# OTO's defaults per base optimizer: the group-lasso weight and DHSPG's lambda adaptation.
LAMBDA_DEFAULTS = {
    "sgd": {"lmbda": 1e-3, "lmbda_amplify": 2.0, "hat_lmbda_coeff": 10.0},
    "adam": {"lmbda": 1e-2, "lmbda_amplify": 20.0, "hat_lmbda_coeff": 1e3},
    "adamw": {"lmbda": 1e-2, "lmbda_amplify": 20.0, "hat_lmbda_coeff": 1e3},
}

# What `train` uses unless told otherwise: tuned on the digits models for runs of tens of epochs,
# where OTO's lambdas (made for hundreds) leave the target unreached (see the README).
TRAIN_LR = {"sgd": 0.1, "adam": 3e-3, "adamw": 3e-3}
TRAIN_LMBDA = {"sgd": 1.0, "adam": 100.0, "adamw": 100.0}

# ---------------------------------------------------------------------------------------------
# Preparing the ONNX model: every parameter use its own tensor
# ---------------------------------------------------------------------------------------------


def prepare_for_training(model, untie_shared: bool = True) -> onnx.ModelProto:
    """A copy of the model (path or ModelProto) in which Identity copies of initializers are
    initializers, and (untie_shared) each node input reads a float initializer of its own."""
    graph = Graph.load(model)
    prepared = onnx.ModelProto()
    prepared.CopyFrom(graph.model)
    _materialize_identity_copies(prepared, graph)
    if untie_shared:
        _untie_shared_initializers(prepared)
    return prepared


def _materialize_identity_copies(model: onnx.ModelProto, graph: Graph) -> None:
    produced = {o for n in model.graph.node for o in n.output}
    copies = {name for name in graph.copies if name in produced}
    if not copies:
        return
    kept = [node for node in model.graph.node if not (node.op_type == "Identity" and node.output[0] in copies)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    for name in sorted(copies):
        model.graph.initializer.append(numpy_helper.from_array(graph.value(name), name))


def _untie_shared_initializers(model: onnx.ModelProto) -> None:
    g = model.graph
    floats = {t.name: t for t in g.initializer if t.data_type in _FLOAT_TYPES}
    in_subgraphs = {name for node in g.node for sub in _subgraphs(node) for n in _all_nodes(sub) for name in n.input}
    tied_to_outputs = {o.name for o in g.output}
    uses = Counter(name for node in g.node for name in node.input if name in floats)
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    seen = set()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    for node in g.node:
        for index, name in enumerate(node.input):
            if name not in floats or uses[name] < 2 or name in in_subgraphs or name in tied_to_outputs:
                continue
            if name not in seen:
                seen.add(name)  # the first use keeps the original
                continue
            copy_name = _unique(f"{node.output[0]}.{_input_role(node, index, opset)}", taken)
            copy = g.initializer.add()
            copy.CopyFrom(floats[name])
            copy.name = copy_name
            node.input[index] = copy_name


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The bodies of If, Loop, Scan: their nodes may read the outer graph's initializers."""
    return [sub for attr in node.attribute
            for sub in ([attr.g] if attr.type == attr.GRAPH else list(attr.graphs) if attr.type == attr.GRAPHS else [])]


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from _all_nodes(sub)


def _input_role(node: onnx.NodeProto, index: int, opset: int) -> str:
    """The schema's name of the node's input `index` (BatchNormalization's 'scale', 'input_mean')."""
    try:
        inputs = defs.get_schema(node.op_type, opset, node.domain).inputs
    except defs.SchemaError:
        return f"input{index}"
    return inputs[index].name if index < len(inputs) else f"input{index}"


def _unique(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


# ---------------------------------------------------------------------------------------------
# Zero-invariant groups
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One channel of one SPA group, as the ONNX parameter slices (tensor, axis, indices) that
    make it zero when they are all zero."""

    group: int
    unit: int
    slices: tuple[tuple[str, int, np.ndarray], ...]


def zero_invariant_members(analysis: Analysis, group: Group, trainable: set[str]) -> list[Member] | None:
    """The parameter members of `group` whose slices, all zero, make each unit's channel zero
    wherever the model reads it (see the module docstring); None when trainable parameters
    cannot do that (a group blocked, approximate, or whose producer is a fixed constant)."""
    if not group.prunable or group.approximate:
        return None
    graph = analysis.graph
    members = {(m.tensor, m.axis): m for m in group.members}
    activations = defaultdict(list)  # tensor -> its axes in the group
    for tensor, axis in members:
        if not graph.is_param(tensor):
            activations[tensor].append(axis)

    def carried(index: int, names) -> list[tuple[str, int]]:
        return [(name, axis) for name in names if name for axis in activations.get(name, ())]

    def readers(m: Member) -> list[int]:
        return graph.tensors[m.tensor].consumers

    chosen = [m for m in group.params if m.tensor in trainable
              and any(carried(i, graph.nodes[i].output) for i in readers(m))]
    producers = {(m.tensor, m.axis) for m in chosen}
    zero = _zero_dimensions(analysis, members, producers, activations)
    for m in group.params:
        if (m.tensor, m.axis) in producers:
            continue
        for index in readers(m):
            outputs, inputs = carried(index, graph.nodes[index].output), carried(index, graph.nodes[index].input)
            if (outputs and all(zero[o] for o in outputs)) or (not outputs and inputs and all(zero[i] for i in inputs)):
                continue  # a BatchNorm statistic of a zero channel, or the next layer's input slice
            if m.tensor not in trainable:
                return None
            chosen.append(m)
            break
    return chosen or None


def _zero_dimensions(analysis: Analysis, members: dict, zeroed: set, activations: dict) -> dict:
    """Which of the group's dimensions are zero at its channels when the `zeroed` parameter
    members are, followed forward with each operator's zero_output rule."""
    graph = analysis.graph
    zero = {key: key in zeroed for key in members if graph.is_param(key[0])}
    for index in graph.topological_order():
        node = graph.nodes[index]
        outputs = [(name, axis) for name in node.output for axis in activations.get(name, ())]
        if not outputs:
            continue
        tied = {key: zero.get(key, False) for key in members if key[0] in node.input}
        view = NodeView(graph, index, analysis.carrier)
        for name, axis in outputs:
            zero[(name, axis)] = bool(rule_for(node).zero_output(view, name, axis, tied))
    return zero


def zero_invariant_units(analysis: Analysis, trainable: set[str]) -> tuple[list[Unit], list[Group]]:
    """Every unit of every group that can be trained to zero, and the groups that cannot."""
    units, skipped = [], []
    for group in analysis.groups:
        members = zero_invariant_members(analysis, group, trainable)
        if members is None:
            skipped.append(group)
            continue
        for u in range(group.units):
            units.append(Unit(group.id, u, tuple((m.tensor, m.axis, m.unit(u)) for m in members)))
    return units, skipped


def zero_units(units: Sequence[Unit], values: Callable[[str], np.ndarray]) -> dict[int, np.ndarray]:
    """Group id -> the positions of its units whose slices are all exactly zero in `values`; a
    group keeps at least one unit."""
    zero: dict[int, list[int]] = defaultdict(list)
    sizes = Counter(unit.group for unit in units)
    for unit in units:
        if all(not np.any(np.take(values(t), idx, axis=a)) for t, a, idx in unit.slices):
            zero[unit.group].append(unit.unit)
    return {g: np.array(u[: sizes[g] - 1] if len(u) == sizes[g] else u, dtype=np.int64) for g, u in zero.items()}


class SparseTraining:
    """An ONNX model made ready for prune-while-training: the torch module to train, its
    zero-invariant groups for HSPG or DHSPG, and `prune()` to write it back and cut the zeros.

        job = SparseTraining("model.onnx")
        optimizer = DHSPG(job.module.parameters(), job.groups, lr=0.1, base="sgd", lmbda=1.0, epsilon=0.95)
        ...  # any training loop over job.module (forward takes the graph inputs in order)
        result = job.prune(feeds)  # result.model: the pruned ModelProto; result.report: SPA's Report
    """

    def __init__(self, model, untie_shared: bool = True):
        prepared = prepare_for_training(model, untie_shared)
        self.torch_model: TorchModel = to_torch(prepared)
        self._prepared = prepared
        # The model exactly as write_back will write it (same names), for SPA's analysis.
        self.onnx_model = write_back(prepared, self.torch_model)
        self.analysis = analyze(self.onnx_model)
        trainable = {name for name, ref in self.torch_model.param_map.items() if ref.trainable}
        self.units, self.skipped = zero_invariant_units(self.analysis, trainable)
        self.groups = [[self.torch_slice(t, a, idx) for t, a, idx in unit.slices] for unit in self.units]

    @property
    def module(self) -> torch.nn.Module:
        return self.torch_model.module

    def torch_slice(self, name: str, axis: int, indices: np.ndarray):
        """(parameter, axis, indices) in torch layout: a Gemm weight may be held transposed."""
        ref = self.torch_model.param_map[name]
        param = self.torch_model.torch_tensor(name)
        return param, (1 - axis if ref.layout.transposed else axis), torch.from_numpy(indices.astype(np.int64))

    def trained_model(self) -> onnx.ModelProto:
        """The ONNX model with the module's current weights."""
        return write_back(self._prepared, self.torch_model)

    def prune(self, feeds: dict[str, np.ndarray] | None = None, rtol: float = 1e-5) -> "Pruned":
        """Write the weights back, remove the units that are exactly zero, and check on `feeds`
        (random inputs if None) that the pruned model computes what the trained one computes."""
        from .runtime import random_inputs, run

        trained = self.trained_model()
        values = {t.name: numpy_helper.to_array(t) for t in trained.graph.initializer if t.name in self.torch_model.param_map}
        chosen = zero_units(self.units, values.__getitem__)
        pruned, report = apply(self.analysis, chosen, new_values=values, criterion="zero groups")
        feeds = feeds if feeds is not None else random_inputs(trained, batch=2)
        error = _relative_error(run(trained, feeds), run(pruned, feeds))
        if error > rtol:
            raise SpaError(f"internal error: removing the zero channels changed the outputs by {error:.2e} (relative)")
        return Pruned(pruned, report, trained, chosen, error)


@dataclass
class Pruned:
    """What SparseTraining.prune gives: the pruned model, SPA's report, the trained model it
    was cut from, the removed units (group id -> positions) and the pruned-vs-trained error."""

    model: onnx.ModelProto
    report: Report
    trained: onnx.ModelProto
    removed: dict[int, np.ndarray]
    max_relative_error: float


def _relative_error(want: list[np.ndarray], got: list[np.ndarray]) -> float:
    worst = 0.0
    for a, b in zip(got, want):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        worst = max(worst, float(np.abs(a - b).max(initial=0.0) / max(np.abs(b).max(initial=0.0), 1e-12)))
    return worst


# ---------------------------------------------------------------------------------------------
# The optimizers
# ---------------------------------------------------------------------------------------------


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


def in_half_space(trial: torch.Tensor, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Rows (nonzero in x) that the half-space projection sets to zero: <trial, x> < eps ||x||^2."""
    squared = (x * x).sum(dim=1)
    return ((trial * x).sum(dim=1) < epsilon * squared) & (squared > 0)


class _Bundle:
    """Groups with the same structure (same parameters, axes and slice sizes: the channels of one
    layer), handled together as a matrix whose row u is group u's slices, flattened."""

    def __init__(self, units: list[list[tuple[torch.Tensor, int, torch.Tensor]]]):
        self.params = [p for p, _, _ in units[0]]
        self.axes = [a for _, a, _ in units[0]]
        self.indices = [torch.stack([unit[k][2] for unit in units]) for k in range(len(units[0]))]
        self.size = len(units)

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
        by_structure.setdefault(key, []).append(slices)
    return [_Bundle(units) for units in by_structure.values()]


class GroupSparseOptimizer(torch.optim.Optimizer):
    """The base of every prune-while-training optimizer (HSPG, DHSPG, a user's own): the base
    optimizer's step on every parameter, then `update_rows` on the groups' rows.

    Every subclass takes the same arguments: params; groups (the zero-invariant groups, each a
    list of (parameter, axis, indices)); lr and base (sgd, adam, adamw) with momentum, betas, eps,
    weight_decay; the targets, `target_sparsity` (the fraction of groups to zero, None: no cap)
    and `target_flops` (not translated into a sparsity yet: refused with a SpaError rather than
    ignored); `start_step` (steps before pruning starts), `lmbda` (group-lasso weight, None: OTO's
    default for the base) and `epsilon` (the half-space threshold).

    A new optimizer implements `update_rows(xs, norms, ds, trials, lrs)`, which returns each
    bundle's new rows; `project` zeroes rows within a budget (never a layer's last channel) and
    `budget` says how many more may go. Register it with `register_optimizer` for
    `spa.train(optimizer=NAME)`, or pass the class: `spa.train.train(..., optimizer=MyOptimizer)`.
    """

    name = "group_sparse"  # what reports and logs call it (the registry's key for built-in ones)

    @classmethod
    def check_targets(cls, target_sparsity: float | None, target_flops: float | None) -> None:
        """Refuse targets the optimizer cannot aim at (checked before any training work)."""
        if target_flops is not None:
            raise SpaError("target_flops: translating a FLOPs target into a group sparsity is not implemented for "
                           "the prune-while-training optimizers; give target_sparsity instead")
        if target_sparsity is not None and not 0 <= target_sparsity < 1:
            raise ValueError(f"target_sparsity must be in [0, 1), got {target_sparsity}")

    def __init__(self, params, groups, lr: float, base: str = "sgd", target_sparsity: float | None = None,
                 target_flops: float | None = None, start_step: int = 0, lmbda: float | None = None,
                 epsilon: float = 0.0, momentum: float = 0.9, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.check_targets(target_sparsity, target_flops)
        if base not in BASES:
            raise ValueError(f"unknown base optimizer '{base}' (choose from {', '.join(BASES)})")
        if lr <= 0 or epsilon < 0:
            raise ValueError("lr must be positive and epsilon not negative")
        defaults = dict(lr=lr, momentum=momentum, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.base = base
        self.target_sparsity = target_sparsity
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

    def project(self, xs, norms, trials, candidates, budget: int) -> None:
        """Zero the candidate rows of the trials (rows in the half-space), the deepest first
        (smallest <trial, x> / ||x||^2), at most `budget` of them and never a bundle's last
        nonzero row; rows already zero stay zero."""
        depth, owner, rows = [], [], []
        for number, (x, norm, trial, candidate) in enumerate(zip(xs, norms, trials, candidates)):
            index = candidate.nonzero().reshape(-1)
            depth.append((trial[index] * x[index]).sum(dim=1) / norm[index] ** 2)
            owner += [number] * len(index)
            rows.append(index)
        rows = torch.cat(rows).tolist()
        nonzero = [int((norm > 0).sum()) for norm in norms]
        for position in torch.argsort(torch.cat(depth)).tolist():
            if budget <= 0:
                break
            number = owner[position]
            if nonzero[number] > 1:
                trials[number][rows[position]] = 0
                nonzero[number] -= 1
                budget -= 1
        for norm, trial in zip(norms, trials):
            trial[norm == 0] = 0

    def budget(self, fraction: float, norms) -> int:
        """How many more groups may be zeroed before `fraction` of all groups are zero."""
        target = math.ceil(fraction * self.total_groups - 1e-9)
        return target - sum(int((norm == 0).sum()) for norm in norms)


_GroupSparse = GroupSparseOptimizer  # the name it had


class HSPG(GroupSparseOptimizer):
    """Half-space projected gradient (OTOv1) for f(x) + lmbda * sum_g ||x_g||.

    groups: the zero-invariant groups, each a list of (parameter, axis, indices along the axis).
    start_step: steps of subgradient descent before the half-space steps begin.
    epsilon: the half-space threshold (0 <= epsilon < 1; larger zeroes more eagerly).
    target_sparsity (or max_sparsity, its older name): the half-space steps never zero more than
    this fraction of the groups (None: no cap).
    base, lr, momentum, betas, eps, weight_decay: the base optimizer (sgd, adam, adamw) that
    gives the direction d of the smooth part.
    """

    name = "hspg"

    def __init__(self, params, groups, lr: float, base: str = "sgd", lmbda: float | None = None, epsilon: float = 0.0,
                 start_step: int = 0, max_sparsity: float | None = None, momentum: float = 0.9, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, target_sparsity: float | None = None,
                 target_flops: float | None = None):
        super().__init__(params, groups, lr, base, target_sparsity=target_sparsity, target_flops=target_flops,
                         start_step=start_step, lmbda=lmbda, epsilon=epsilon, momentum=momentum, betas=betas, eps=eps,
                         weight_decay=weight_decay)
        cap = target_sparsity if target_sparsity is not None else max_sparsity
        self.max_sparsity = 1.0 if cap is None else cap

    def update_rows(self, xs, norms, ds, trials, lrs):
        candidates = []
        for x, norm, trial, lr in zip(xs, norms, trials, lrs):
            trial -= lr * self.lmbda * x / norm.clamp_min(1e-30)[:, None]  # the subgradient: 0 at 0
            candidates.append(in_half_space(trial, x, self.epsilon))
        if self.steps > self.start_step:
            self.project(xs, norms, trials, candidates, self.budget(self.max_sparsity, norms))
        return trials


class DHSPG(GroupSparseOptimizer):
    """Dual half-space projected gradient (OTOv2): trains to a target group sparsity.

    groups: the zero-invariant groups, each a list of (parameter, axis, indices along the axis).
    target_sparsity: the fraction of groups to zero. tolerance: redundant groups are the top
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
                 target_flops: float | None = None):
        if target_sparsity is None:
            raise ValueError("DHSPG trains to a target sparsity: give target_sparsity in [0, 1)")
        super().__init__(params, groups, lr, base, target_sparsity=target_sparsity, target_flops=target_flops,
                         start_step=start_step, lmbda=lmbda, epsilon=epsilon, momentum=momentum, betas=betas, eps=eps,
                         weight_decay=weight_decay)
        defaults = LAMBDA_DEFAULTS[base]
        self.lmbda_amplify = defaults["lmbda_amplify"] if lmbda_amplify is None else lmbda_amplify
        self.hat_lmbda_coeff = defaults["hat_lmbda_coeff"] if hat_lmbda_coeff is None else hat_lmbda_coeff
        self.tolerance = tolerance
        self.redundant: list[torch.Tensor] | None = None  # per bundle, after the partition

    def update_rows(self, xs, norms, ds, trials, lrs):
        if self.steps <= self.start_step or self.target_sparsity == 0:
            return trials
        if self.redundant is None:
            self.redundant = self._partition(xs, ds)
        budget = self.budget(self.target_sparsity, norms)
        if budget <= 0:  # target reached: zero groups stay zero, the rest take the base step
            self.project(xs, norms, trials, [torch.zeros(len(x), dtype=torch.bool) for x in xs], 0)
            return trials
        candidates = []
        for x, norm, d, trial, lr, redundant in zip(xs, norms, ds, trials, lrs, self.redundant):
            pulled = redundant & (norm > 0)
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


OPTIMIZERS: dict[str, type[GroupSparseOptimizer]] = {"dhspg": DHSPG, "hspg": HSPG}
"""The prune-while-training optimizers by name (`spa train --optimizer NAME`)."""


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


# ---------------------------------------------------------------------------------------------
# Data and the training loop
# ---------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    inputs: list[np.ndarray]  # one per graph input, in order
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def load_data(data, model: onnx.ModelProto, loss: str, what: str = "data") -> Dataset:
    """Arrays keyed by the graph's input names plus `labels`, from an .npz path or a mapping;
    SpaError with a one-line reason when they do not fit the model."""
    from .runtime import graph_inputs

    if isinstance(data, (str, PathLike)):
        try:
            with np.load(data, allow_pickle=False) as npz:
                data = {key: npz[key] for key in npz.files}
        except FileNotFoundError:
            raise SpaError(f"no such file: {data}") from None
        except Exception as e:  # numpy raises several kinds on garbage
            raise SpaError(f"{data} is not a readable .npz file ({type(e).__name__})") from None
    inputs = graph_inputs(model)
    missing = [name for name in [vi.name for vi in inputs] + ["labels"] if name not in data]
    if missing:
        raise SpaError(f"the {what} has no array '{missing[0]}' (it needs the model's inputs "
                       f"{', '.join(vi.name for vi in inputs)} and 'labels'; it has {', '.join(sorted(data)) or 'nothing'})")
    arrays = []
    for vi in inputs:
        array = np.asarray(data[vi.name])
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        if array.ndim != len(dims) or any(d is not None and d != s for d, s in zip(dims[1:], array.shape[1:])):
            shown = "x".join("?" if d is None else str(d) for d in dims)
            raise SpaError(f"the {what}'s '{vi.name}' has shape {array.shape}, the model takes {shown}")
        arrays.append(array.astype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type), copy=False))
    labels = np.asarray(data["labels"])
    if labels.ndim == 0 or len(labels) == 0 or any(len(a) != len(labels) for a in arrays):
        raise SpaError(f"the {what}'s arrays must have the same, nonzero number of samples "
                       f"(labels: {len(labels) if labels.ndim else 'a scalar'}, inputs: {', '.join(str(len(a)) for a in arrays)})")
    if loss == "ce" and not np.issubdtype(labels.dtype, np.integer):
        raise SpaError(f"cross-entropy needs integer class labels; the {what}'s labels are {labels.dtype}")
    return Dataset(arrays, labels.astype(np.int64) if loss == "ce" else labels.astype(np.float32))


def _loss_and_hits(output: torch.Tensor, labels: torch.Tensor, loss: str) -> tuple[torch.Tensor, int | None]:
    if loss == "ce":
        if output.dim() < 2 or labels.shape != output.shape[:1] + output.shape[2:]:
            raise SpaError(f"cross-entropy needs labels of shape {tuple(output.shape[:1] + output.shape[2:])} "
                           f"for the model's output of shape {tuple(output.shape)}; they have {tuple(labels.shape)}")
        if int(labels.min()) < 0 or int(labels.max()) >= output.shape[1]:
            raise SpaError(f"class labels must be in [0, {output.shape[1]}) for the model's {output.shape[1]} outputs")
        return F.cross_entropy(output, labels), int((output.argmax(dim=1) == labels).sum())
    if labels.shape != output.shape:
        raise SpaError(f"mse needs labels of the output's shape {tuple(output.shape)}; they have {tuple(labels.shape)}")
    return F.mse_loss(output, labels), None


def _first_output(result) -> torch.Tensor:
    return result[0] if isinstance(result, (tuple, list)) else result


def evaluate(module: torch.nn.Module, data: Dataset, loss: str, batch: int = 512) -> dict:
    """Mean loss and (for cross-entropy) accuracy of the module in eval mode."""
    was_training = module.training
    module.eval()
    total, hits = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), batch):
            inputs = [torch.from_numpy(a[start:start + batch]) for a in data.inputs]
            labels = torch.from_numpy(data.labels[start:start + batch])
            value, batch_hits = _loss_and_hits(_first_output(module(*inputs)), labels, loss)
            total += float(value) * len(labels)
            hits += batch_hits or 0
    module.train(was_training)
    return {"loss": total / len(data), "accuracy": hits / len(data) if loss == "ce" else None}


def fit(module: torch.nn.Module, optimizer: torch.optim.Optimizer, data: Dataset, loss: str = "ce",
        epochs: int = 10, batch: int = 64, seed: int = 0, val: Dataset | None = None,
        log: Callable[[str], None] | None = print) -> list[dict]:
    """Train with cosine learning-rate decay; one progress line per epoch (loss, accuracy, group
    sparsity for HSPG/DHSPG). Returns the per-epoch history."""
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs * _batches_per_epoch(len(data), batch), 1))
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        start_time = time.perf_counter()
        module.train()
        total, hits, seen = 0.0, 0, 0
        for indices in torch.randperm(len(data), generator=generator).split(batch):
            if len(indices) < 2:  # BatchNorm cannot train on one sample
                continue
            inputs = [torch.from_numpy(a[indices.numpy()]) for a in data.inputs]
            labels = torch.from_numpy(data.labels[indices.numpy()])
            optimizer.zero_grad()
            value, batch_hits = _loss_and_hits(_first_output(module(*inputs)), labels, loss)
            value.backward()
            optimizer.step()
            schedule.step()
            total += float(value.detach()) * len(indices)
            hits += batch_hits or 0
            seen += len(indices)
        record = {"epoch": epoch, "loss": total / max(seen, 1), "accuracy": hits / max(seen, 1) if loss == "ce" else None,
                  "group_sparsity": getattr(optimizer, "group_sparsity", None), "seconds": time.perf_counter() - start_time}
        if val is not None:
            scores = evaluate(module, val, loss)
            record.update(val_loss=scores["loss"], val_accuracy=scores["accuracy"])
        history.append(record)
        if log:
            log(_progress_line(record, epochs))
    module.eval()
    return history


def _batches_per_epoch(samples: int, batch: int) -> int:
    """Batches fit trains on per epoch: a last batch of one sample is skipped."""
    return samples // batch + (samples % batch > 1)


def _progress_line(record: dict, epochs: int) -> str:
    parts = [f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}", f"loss {record['loss']:.4f}"]
    if record["accuracy"] is not None:
        parts.append(f"acc {record['accuracy'] * 100:.1f}%")
    if "val_loss" in record:
        parts.append(f"val loss {record['val_loss']:.4f}")
        if record["val_accuracy"] is not None:
            parts.append(f"val acc {record['val_accuracy'] * 100:.1f}%")
    if record["group_sparsity"] is not None:
        parts.append(f"group sparsity {record['group_sparsity']:.3f}")
    parts.append(f"{record['seconds']:.1f}s")
    return "  ".join(parts)


# ---------------------------------------------------------------------------------------------
# One call: train, write back, prune
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainReport:
    optimizer: str
    base: str
    target_sparsity: float
    group_sparsity: float  # reached: zero groups / all zero-invariant groups
    groups: int  # zero-invariant groups (channels the optimizer could zero)
    zero_groups: int
    groups_skipped: int  # SPA groups left to the base optimizer (blocked, approximate, single-channel)
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    max_relative_error: float  # pruned vs trained outputs
    train_accuracy: float | None
    val_accuracy: float | None  # of the pruned model in onnxruntime
    seconds: float
    history: list = field(default_factory=list)
    prune: dict = field(default_factory=dict)  # SPA's prune report (removed slices, channels)

    def to_dict(self) -> dict:
        return asdict(self)


def train(model, data, val=None, loss: str = "ce", optimizer: str | type = "dhspg", target_sparsity: float = 0.5,
          epochs: int = 10, lr: float | None = None, batch: int = 64, base: str = "sgd", weight_decay: float = 0.0,
          start_pruning: float = 0.1, lmbda: float | None = None, epsilon: float = 0.95, seed: int = 0,
          untie_shared: bool = True, log: Callable[[str], None] | None = print,
          target_flops: float | None = None) -> tuple[onnx.ModelProto, TrainReport]:
    """Train an ONNX model (path or ModelProto) with HSPG or DHSPG, write the weights back and
    remove the channels that trained to zero. Returns (pruned ModelProto, TrainReport).

    optimizer: a name in OPTIMIZERS, or a GroupSparseOptimizer subclass (a user's own), built
    with the same arguments as the built-in ones. target_flops is passed to it (the built-in
    optimizers refuse it: not implemented).

    data, val: .npz paths or mappings with one array per graph input (by name) and `labels`
    (class ids for loss='ce', arrays of the output's shape for 'mse'); the loss is taken on the
    first output. start_pruning: the fraction of the training run before the partition (DHSPG)
    or the half-space steps (HSPG). For HSPG, target_sparsity caps the sparsity and lmbda sets
    how hard groups are pushed to zero. Other settings: see DHSPG, HSPG and fit.
    """
    _check_settings(loss, base, target_sparsity, epochs, lr, batch, start_pruning)
    name, optimizer_class = get_optimizer(optimizer)
    optimizer_class.check_targets(target_sparsity, target_flops)
    begin = time.perf_counter()
    source = model if isinstance(model, onnx.ModelProto) else load_model(model)[0]
    train_data = load_data(data, source, loss)
    val_data = load_data(val, source, loss, what="validation data") if val is not None else None
    _check_batch(source, batch)
    job = SparseTraining(model, untie_shared)
    steps = epochs * _batches_per_epoch(len(train_data), batch)
    start_step = int(start_pruning * steps)
    settings = dict(lr=TRAIN_LR[base] if lr is None else lr, base=base, epsilon=epsilon, start_step=start_step,
                    lmbda=TRAIN_LMBDA[base] if lmbda is None else lmbda, weight_decay=weight_decay)
    opt = optimizer_class(job.module.parameters(), job.groups, target_sparsity=target_sparsity,
                          **({"target_flops": target_flops} if target_flops is not None else {}), **settings)
    if log:
        log(f"{name.upper()} ({base}) on {len(job.units)} zero-invariant groups from "
            f"{len(job.analysis.groups) - len(job.skipped)} SPA groups ({len(job.skipped)} left whole), "
            f"target group sparsity {target_sparsity}, pruning from step {start_step} of {steps}")
    torch.manual_seed(seed)
    history = fit(job.module, opt, train_data, loss, epochs, batch, seed, val_data, log)
    check = val_data if val_data is not None else train_data
    feeds = {name: array[:256] for name, array in zip(job.torch_model.input_names, check.inputs)}
    result = job.prune(feeds)
    prune_report = result.report
    report = TrainReport(
        optimizer=name, base=base, target_sparsity=target_sparsity, group_sparsity=opt.group_sparsity,
        groups=opt.total_groups, zero_groups=opt.zero_groups(), groups_skipped=len(job.skipped),
        params_before=prune_report.params_before, params_after=prune_report.params_after,
        flops_before=prune_report.flops_before, flops_after=prune_report.flops_after,
        max_relative_error=result.max_relative_error,
        train_accuracy=history[-1]["accuracy"] if history else None,
        val_accuracy=_onnx_accuracy(result.model, val_data) if val_data is not None and loss == "ce" else None,
        seconds=time.perf_counter() - begin, history=history, prune=prune_report.to_dict(),
    )
    return result.model, report


def _check_settings(loss, base, target_sparsity, epochs, lr, batch, start_pruning) -> None:
    if loss not in LOSSES:
        raise SpaError(f"unknown loss '{loss}' (choose from {', '.join(LOSSES)})")
    if base not in BASES:
        raise SpaError(f"unknown base optimizer '{base}' (choose from {', '.join(BASES)})")
    if not 0 <= target_sparsity < 1 or math.isnan(target_sparsity):
        raise SpaError(f"the target sparsity must be in [0, 1), got {target_sparsity}")
    if epochs < 1 or batch < 2:
        raise SpaError(f"epochs must be at least 1 and the batch at least 2 (got {epochs} and {batch})")
    if lr is not None and not lr > 0:
        raise SpaError(f"the learning rate must be positive, got {lr}")
    if not 0 <= start_pruning < 1:
        raise SpaError(f"start_pruning is a fraction of the run in [0, 1), got {start_pruning}")


def _check_batch(model: onnx.ModelProto, batch: int) -> None:
    from .runtime import graph_inputs

    for vi in graph_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value != batch:
            raise SpaError(f"the model's input '{vi.name}' has a fixed batch size of {dims[0].dim_value}: "
                           "export it with a dynamic batch axis, or train with that batch size")


def _onnx_accuracy(model: onnx.ModelProto, data: Dataset) -> float:
    from .runtime import run, session

    sess = session(model)
    names = [i.name for i in sess.get_inputs()]
    hits = 0
    for start in range(0, len(data), 512):
        logits = run(model, {n: a[start:start + 512] for n, a in zip(names, data.inputs)}, sess)[0]
        hits += int((logits.argmax(axis=1) == data.labels[start:start + 512]).sum())
    return hits / len(data)
