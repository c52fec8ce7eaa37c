"""Zero-invariant groups: the channels of SPA's groups as parameter slices that, all zero, make
the channel zero wherever the model reads it, and the model made ready to train them.

Each unit of a prunable, exact SPA group (one channel and every parameter slice that goes with
it) gives one optimizer group: the unit's *producer-side* slices, those read by an operator whose
output carries the channel (a conv's output filter and bias, the BatchNorm scale and shift after
it, a depthwise filter, a per-channel Mul or Add). When they are all zero the channel is zero
wherever the model reads it (SPA's per-operator `zero_output` rules check this through ReLU, Clip,
pooling, residual adds ...), so the *consumer-side* slices (the next layer's input columns)
multiply zeros: the output does not depend on them, and removing the whole SPA unit, both sides,
is exact. BatchNorm statistics are not trained and need not be zero: with scale and shift zero its
output is zero in train mode (batch statistics) and in eval mode (running statistics) alike.
Where a channel would not be zero (it passes a sigmoid before the next layer, say) the
consumer-side slices join the group, so zero still means removable. This is OTO's zero-invariant
group, derived from SPA's analysis rather than from layer patterns.

Preparing the model (`prepare_for_training`). SPA treats an Identity copy of a parameter (how
the TorchScript exporter shares equal constants) as a parameter of its own; here each becomes
an initializer, so it trains on its own too. Exporters also merge equal initializers: in a fresh
model every BatchNorm of one width reads the same ones and zeros, which would tie their scales in
training and couple their channels in SPA's groups. With `untie_shared=True` (the default) each
use of a float initializer by a node gets its own copy; pass False for weights tied on purpose.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Sequence

import numpy as np
import onnx
import torch
from onnx import defs, numpy_helper

from ..api import Report, apply
from ..errors import SpaError
from ..graph import Graph
from ..groups import Analysis, Group, Member, analyze
from ..oracle import output_error
from ..rules import NodeView, rule_for
from ..torch_bridge import TorchModel, to_torch, write_back

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

    def summary(self) -> str:
        return (f"{len(self.units)} zero-invariant groups from {len(self.analysis.groups) - len(self.skipped)} SPA "
                f"groups ({len(self.skipped)} left whole)")

    @cached_property
    def flops(self):
        """SPA's FLOPs model over the groups (spa.train.GroupFlops), for target_flops."""
        from .flops import GroupFlops

        return GroupFlops(self.analysis, self.units)

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
        from ..runtime import random_inputs, run

        trained = self.trained_model()
        values = {t.name: numpy_helper.to_array(t) for t in trained.graph.initializer if t.name in self.torch_model.param_map}
        chosen = zero_units(self.units, values.__getitem__)
        pruned, report = apply(self.analysis, chosen, new_values=values, criterion="zero groups")
        feeds = feeds if feeds is not None else random_inputs(trained, batch=2)
        error = output_error(run(pruned, feeds), run(trained, feeds))
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
