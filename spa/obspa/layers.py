"""OBSPA's layers: the weights that multiply a group's channels on their input side (see spa.obspa)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from ..graph import Graph
from ..groups import Analysis, Group


@dataclass
class Layer:
    """A weight whose input axis runs over pruned channels, and the operators that read it."""

    weight: str
    nodes: list[int]
    in_axis: int
    out_axis: int
    kernel: int  # features per input index: kh*kw for a Conv, 1 otherwise
    alpha: float = 1.0  # the operator multiplies by alpha * W (Gemm)
    bias: tuple[str, float] | None = None  # parameter p that absorbs a shift d of the outputs: p += factor * d
    units: dict[int, list[np.ndarray]] = field(default_factory=dict)  # group id -> per unit, its features

    def matrix(self, value: np.ndarray) -> np.ndarray:
        """The weight as the operator applies it: outputs x features."""
        moved = np.moveaxis(value, (self.out_axis, self.in_axis), (0, 1))
        return moved.reshape(moved.shape[0], -1).astype(np.float64) * self.alpha

    def from_matrix(self, matrix: np.ndarray, original: np.ndarray) -> np.ndarray:
        moved_shape = np.moveaxis(original, (self.out_axis, self.in_axis), (0, 1)).shape
        moved = (matrix / self.alpha).reshape(moved_shape)
        return np.moveaxis(moved, (0, 1), (self.out_axis, self.in_axis)).astype(original.dtype)

    def augmented(self, graph: Graph) -> np.ndarray:
        """The matrix, with one more column where the outputs can take a shift: the bias
        parameter over its factor (the weight of a constant input of 1)."""
        matrix = self.matrix(graph.value(self.weight))
        if self.bias is None:
            return matrix
        name, factor = self.bias
        bias = graph.value(name).astype(np.float64).reshape(-1) / factor
        return np.concatenate([matrix, bias[:, None]], axis=1)

    def values(self, graph: Graph, augmented: np.ndarray) -> dict[str, np.ndarray]:
        """The weight (and bias) an augmented matrix stands for, in their shapes and dtypes."""
        features = augmented.shape[1] - (self.bias is not None)
        values = {self.weight: self.from_matrix(augmented[:, :features], graph.value(self.weight))}
        if self.bias is not None:
            name, factor = self.bias
            old = graph.value(name)
            values[name] = (factor * augmented[:, -1]).reshape(old.shape).astype(old.dtype)
        return values

    def features(self, indices: np.ndarray) -> np.ndarray:
        """The matrix columns of the given indices along the weight's input axis."""
        return (np.asarray(indices)[:, None] * self.kernel + np.arange(self.kernel)).ravel()

    def size(self, graph: Graph) -> int:
        """Rows (and columns) of the layer's Hessian."""
        return graph.value(self.weight).shape[self.in_axis] * self.kernel + (self.bias is not None)


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _uses(graph: Graph, weight: str) -> list[tuple[int, int, int, float]] | None:
    """(node, in_axis, out_axis, alpha) for every operator that multiplies its run-time input by
    `weight`; None if some use is of another kind (the weight cannot be compensated alone)."""
    uses = []
    rank = len(graph.value(weight).shape)
    for i in graph.tensors[weight].consumers:
        node = graph.nodes[i]
        runtime_input = not graph.is_constant_derived(node.input[0])
        if node.op_type == "Transpose" and rank == 2 and list(attr(node, "perm", [1, 0])) == [1, 0]:
            readers = graph.tensors[node.output[0]].consumers
            if not all(graph.nodes[j].op_type == "MatMul" and list(graph.nodes[j].input).index(node.output[0]) == 1
                       and not graph.is_constant_derived(graph.nodes[j].input[0]) for j in readers):
                return None
            uses += [(j, 1, 0, 1.0) for j in readers]
        elif list(node.input).index(weight) != 1 or not runtime_input:
            return None
        elif node.op_type == "Conv" and attr(node, "group", 1) == 1 and 3 <= rank <= 4:
            uses.append((i, 1, 0, 1.0))
        elif node.op_type == "Gemm" and not attr(node, "transA", 0):
            transposed = attr(node, "transB", 0)
            uses.append((i, 1 if transposed else 0, 0 if transposed else 1, float(attr(node, "alpha", 1.0))))
        elif node.op_type == "MatMul" and rank == 2:
            uses.append((i, 0, 1, 1.0))
        else:
            return None
    return uses or None


def _bias(graph: Graph, node_index: int, outputs: int) -> tuple[str, float] | None:
    """Where a constant shift of the operator's outputs can go: its own bias, the running mean of
    the BatchNormalization that reads it, or the constant of the Add that reads it."""
    node = graph.nodes[node_index]

    def private(name):  # a parameter only this operator reads
        return name and graph.is_param(name) and len(graph.tensors[name].consumers) == 1

    if node.op_type == "Conv" and len(node.input) > 2 and private(node.input[2]):
        return node.input[2], 1.0
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        c = node.input[2]
        shape = graph.value(c).shape if graph.is_param(c) else None
        if private(c) and shape is not None and int(np.prod(shape)) == outputs and shape[-1] == outputs:
            return c, 1.0 / float(attr(node, "beta", 1.0))
        return None
    readers = graph.tensors[node.output[0]].consumers
    if len(readers) != 1 or node.output[0] in graph.outputs:
        return None
    reader = graph.nodes[readers[0]]
    if reader.op_type == "BatchNormalization" and reader.input[0] == node.output[0] and private(reader.input[3]):
        return reader.input[3], -1.0  # BN(y + d) with running mean m equals BN(y) with mean m - d
    if reader.op_type == "Add":
        other = [n for n in reader.input if n != node.output[0]]
        if len(other) == 1 and private(other[0]):
            shape = graph.value(other[0]).shape
            out_rank = len(graph.shape(node.output[0]) or ())
            channel_axis = 1 if node.op_type == "Conv" else out_rank - 1
            padded = (1,) * (out_rank - len(shape)) + tuple(shape)
            expected = tuple(outputs if a == channel_axis else 1 for a in range(out_rank))
            if len(shape) <= out_rank and padded == expected:
                return other[0], 1.0
    return None


def find_layers(analysis: Analysis, groups: list[Group]) -> list[Layer]:
    """Every layer that multiplies the channels of the given groups, in topological order, with
    each group's units mapped to the layer's features."""
    graph = analysis.graph
    layers: dict[str, Layer | None] = {}
    for group in groups:
        for member in group.params:
            if member.tensor not in layers:
                layers[member.tensor] = weight_layer(graph, member.tensor)
            layer = layers[member.tensor]
            if layer is not None and member.axis == layer.in_axis:
                layer.units[group.id] = [layer.features(member.unit(u)) for u in range(group.units)]
    position = {node: i for i, node in enumerate(graph.topological_order())}
    found = [layer for layer in layers.values() if layer is not None and layer.units]
    return sorted(found, key=lambda layer: min(position[n] for n in layer.nodes))


def weight_layer(graph: Graph, weight: str) -> Layer | None:
    """The layer `weight` is, or None when it is no layer (see _uses)."""
    value = graph.value(weight)
    if value is None or not np.issubdtype(value.dtype, np.floating):
        return None
    uses = _uses(graph, weight)
    if uses is None or len({u[1:] for u in uses}) != 1:
        return None
    _, in_axis, out_axis, alpha = uses[0]
    kernel = int(np.prod(value.shape[2:])) if graph.nodes[uses[0][0]].op_type == "Conv" else 1
    nodes = [u[0] for u in uses]
    if any(not graph.shape(graph.nodes[n].input[0]) for n in nodes):
        return None
    bias = _bias(graph, nodes[0], value.shape[out_axis]) if len(nodes) == 1 else None
    return Layer(weight, nodes, in_axis, out_axis, kernel, alpha, bias)


