"""The zeroing oracle: the proof that a structural prune is right.

For a criterion that leaves kept weights unchanged, a correctly pruned model computes exactly what
the original computes once every removed parameter slice is set to zero. `zeroed` builds that
model from the report's `removed` list. Erasing has its own: an erased model computes what the
original computes with each erased structure's output (at its join) multiplied by zero,
`outputs_zeroed`. `max_relative_error` compares a result with the original under both.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import Graph
from .protos import model_like
from .inputs import choose_shapes
from .runtime import random_inputs, run


def zeroed(model, removed: list[dict]) -> onnx.ModelProto:
    """A copy of `model` with every removed (tensor, axis, indices) slice set to zero."""
    graph = Graph.load(model)
    values: dict[str, np.ndarray] = {}
    for entry in removed:
        name = entry["tensor"]
        value = values.setdefault(name, graph.value(name).copy())
        index = [slice(None)] * value.ndim
        index[entry["axis"]] = np.asarray(entry["indices"], dtype=np.int64)
        value[tuple(index)] = 0
    replaced_producers = {graph.tensors[n].producer for n in values if not n in graph.initializers}
    nodes = [n for i, n in enumerate(graph.nodes) if i not in replaced_producers]
    initializers = [_inline(graph, t) for t in graph.model.graph.initializer if t.name not in values]
    return model_like(graph.model, nodes, initializers, values)


def outputs_zeroed(model, tensors: list[str]) -> onnx.ModelProto:
    """A copy of `model` in which each of `tensors` is multiplied by zero before anything reads it."""
    graph = Graph.load(model)
    zero = numpy_helper.from_array(np.zeros((), np.float32), "spa_oracle_zero")
    nodes = []
    for name in tensors:  # graph inputs first
        if graph.tensors[name].producer is None:
            nodes.append(helper.make_node("Mul", [name, zero.name], [f"{name}_zeroed"]))
    for original in graph.model.graph.node:
        node = onnx.NodeProto.FromString(original.SerializeToString())
        node.input[:] = [f"{n}_zeroed" if n in tensors else n for n in node.input]
        nodes.append(node)
        nodes += [helper.make_node("Mul", [n, zero.name], [f"{n}_zeroed"]) for n in node.output if n in tensors]
    return model_like(graph.model, nodes, [_inline(graph, t) for t in graph.model.graph.initializer] + [zero])


def _inline(graph: Graph, tensor: onnx.TensorProto) -> onnx.TensorProto:
    """The initializer with its data in the proto (external data is read in)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return numpy_helper.from_array(graph.value(tensor.name), tensor.name)
    return tensor


def max_relative_error(original, pruned, removed: list[dict], feeds=None, batch: int = 2, erased=()) -> float:
    """max |pruned - zeroed original| / max |zeroed original| over every output; `erased` (the
    tensors erased structures output at their joins) are zeroed in the original too."""
    reference = zeroed(outputs_zeroed(original, list(erased)) if erased else original, removed)
    feeds = feeds or random_inputs(reference, batch=batch, shapes=choose_shapes(reference)[0])
    return output_error(run(pruned, feeds), run(reference, feeds))


def output_error(got: list, want: list) -> float:
    """max |got - want| / max |want|, the worst over the outputs."""
    worst = 0.0
    for a, b in zip(got, want):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        scale = max(np.abs(b).max(initial=0.0), 1e-12)
        worst = max(worst, float(np.abs(a - b).max(initial=0.0) / scale))
    return worst
